"""What the convert and serve benchmarks share: the load on the machine over a phase, and an
object store with a fresh bucket. Imported by `bench/<name>/run.py` (run as scripts), which put
this folder on sys.path."""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil


class LoadSampler:
    """1-minute load average every few seconds, and the CPU seconds this process (with its
    waited-for children and the long-lived processes in `pids`) and everything else on the
    machine used over a phase."""

    def __init__(self, interval_s: float = 2.0, pids: tuple[int, ...] = ()) -> None:
        self.interval_s = interval_s
        # Long-lived processes of the benchmark that are not waited for (counted as ours).
        self.pids = pids
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="load-sampler")

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    def _ours(self) -> float:
        s = resource.getrusage(resource.RUSAGE_SELF)
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        extra = 0.0
        for pid in self.pids:
            try:
                t = psutil.Process(pid).cpu_times()
            except psutil.Error:  # exited: its time is in RUSAGE_CHILDREN once waited for
                continue
            extra += t.user + t.system
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime + extra

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self.samples = [os.getloadavg()[0]]
        self.t0, self.busy0, self.ours0 = time.perf_counter(), self._busy(), self._ours()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])
        self.seconds = time.perf_counter() - self.t0
        self.ours = self._ours() - self.ours0
        self.others = max(0.0, self._busy() - self.busy0 - self.ours)

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "load_mean": round(sum(self.samples) / len(self.samples), 2),
            "load_max": round(max(self.samples), 2),
            "cpu_ours_s": round(self.ours, 1),
            "cpu_others_s": round(self.others, 1),
            # Other processes took more than a tenth of the CPUs.
            "contended": self.others > 0.1 * (os.cpu_count() or 1) * self.seconds,
        }

    def line(self) -> str:
        s = self.summary()
        return (
            f"{s['seconds']} s, load {s['load_mean']}/{s['load_max']}, CPU s ours/others "
            f"{s['cpu_ours_s']:.0f}/{s['cpu_others_s']:.0f}"
            + (" CONTENDED" if s["contended"] else "")
        )


@contextlib.contextmanager
def object_store(tmp: Path, name: str) -> Iterator[Any]:
    """(StoreSettings, ArtifactStore) on a fresh bucket named after the benchmark: of the store
    in TUNEFORGE_S3_* when one is set (the bucket is removed afterwards), else of a SeaweedFS
    started in `tmp`."""
    from services.common.artifact_store import ArtifactStore
    from services.common.object_store_server import (
        free_port_set,
        start_object_store,
        stop_object_store,
    )
    from services.common.settings import StoreSettings

    bucket = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    proc = None
    if os.environ.get("TUNEFORGE_S3_ENDPOINT"):
        settings = StoreSettings(bucket=bucket)
    else:
        access, secret = "tuneforge-bench", "tuneforge-bench-secret"
        proc = start_object_store(
            tmp / "object-store",
            access,
            secret,
            ports=free_port_set(),
            bucket=bucket,
            die_with_parent=True,
        )
        settings = StoreSettings(
            endpoint=proc.endpoint,
            access_key=access,
            secret_key=secret,  # type: ignore[arg-type]
            bucket=bucket,
        )
    store = ArtifactStore(settings)
    store.ensure_bucket()
    try:
        yield settings, store
    finally:
        if proc is not None:
            stop_object_store(proc.pid)
        else:
            with contextlib.suppress(Exception):
                store.remove_bucket()
        store.close()
