"""The baseline, run as its own process by run.py so its memory is sampled the same way as ours:
`datasets.load_dataset("json")` of the file, then a batched tokenizing `map` through the same
tokenizer and chat template (`AutoTokenizer.apply_chat_template(..., tokenize=True)`).

Writes a JSON result (rows, seconds for load and map, RSS before the work) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

# Nothing from the network, no telemetry, no progress bars on stderr.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--num-proc", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import datasets
    import psutil
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(str(args.tokenizer))

    def tokenize(batch: dict) -> dict:
        out = tok.apply_chat_template(batch["messages"], tokenize=True)
        # transformers 5 returns a BatchEncoding (a dict) here; 4.x returned the id lists.
        ids = out["input_ids"] if isinstance(out, Mapping) else out
        return {"input_ids": ids}

    rss_before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    ds = datasets.load_dataset(
        "json", data_files=str(args.data), split="train", cache_dir=str(args.cache_dir)
    )
    t1 = time.perf_counter()
    ds = ds.map(
        tokenize,
        batched=True,
        batch_size=args.batch_size,
        num_proc=None if args.num_proc <= 1 else args.num_proc,
        remove_columns=ds.column_names,
    )
    rows = len(ds)
    t2 = time.perf_counter()
    # A sanity check outside the timing: the token count of the first row.
    first_tokens = len(ds[0]["input_ids"])
    args.out.write_text(
        json.dumps(
            {
                "rows": rows,
                "load_s": t1 - t0,
                "map_s": t2 - t1,
                "total_s": t2 - t0,
                "rss_before": rss_before,
                "first_row_tokens": first_tokens,
            }
        )
    )


if __name__ == "__main__":
    main()
