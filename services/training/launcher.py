"""Runs one job's worker group: torchrun in its own process group, its stdout parsed into events.

The group is identified by its leader's pid and start time (kept in the job record), so a
restarted service can find and stop a group an earlier service left behind.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from services.common.settings import StoreSettings
from services.training.worker_config import WorkerConfig, parse_event

LOG_TAIL_LINES = 40
JOB_ENV = "TUNEFORGE_JOB"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WorkerGroup:
    """A torchrun process group training one job."""

    def __init__(
        self,
        config: WorkerConfig,
        work_dir: Path,
        store: StoreSettings,
        extensions_dir: Path,
        on_event: Callable[[dict[str, Any]], None],
        on_log: Callable[[str], None],
    ) -> None:
        self.config = config
        self.work_dir = work_dir
        self.store = store
        self.extensions_dir = extensions_dir
        self.on_event = on_event
        self.on_log = on_log
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.extensions_dir.mkdir(parents=True, exist_ok=True)
        self.config.to_file(self.work_dir / "job.json")
        procs = self.config.distribution.processes_per_node
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc_per_node",
            str(procs),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "-m",
            "services.training.worker",
            "job.json",
        ]
        env = {
            **os.environ,
            JOB_ENV: self.config.job,
            "TUNEFORGE_S3_ENDPOINT": self.store.endpoint,
            "TUNEFORGE_S3_ACCESS_KEY": self.store.access_key,
            "TUNEFORGE_S3_SECRET_KEY": self.store.secret_key.get_secret_value(),
            "TUNEFORGE_S3_BUCKET": self.store.bucket,
            "TUNEFORGE_S3_SECURE": "true" if self.store.secure else "false",
            # The deepspeed launcher leaves this unset; ZeRO-3 ran 10x slower without it.
            "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // procs)),
            "TORCH_EXTENSIONS_DIR": str(self.extensions_dir),
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
        }
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.work_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started_at = psutil.Process(self.proc.pid).create_time()
        self._reader = threading.Thread(target=self._read, daemon=True, name="worker-stdout")
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        log = (self.work_dir / "worker.log").open("ab")
        with log:
            for raw in self.proc.stdout:
                log.write(raw)
                line = raw.decode(errors="replace").rstrip("\n")
                event = parse_event(line)
                if event is not None:
                    self.on_event(event)
                    continue
                if line.strip():
                    self.tail.append(line)
                    self.on_log(line)

    def wait(self) -> int:
        assert self.proc is not None
        code = self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=30)
        return code

    def terminate(self, grace_s: float = 5.0) -> None:
        """SIGTERM to the whole group, SIGKILL after `grace_s`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_group(self.proc.pid, self.started_at, grace_s)


def stop_group(pid: int, started_at: float, grace_s: float = 5.0) -> bool:
    """Stops the worker group led by `pid` if that process is still the one started at
    `started_at` (pids are reused). torchrun starts each rank in a session of its own, so the
    signal goes to every descendant, not only to the leader's process group. Returns whether
    anything was stopped."""
    try:
        leader = psutil.Process(pid)
        if abs(leader.create_time() - started_at) > 1.0:
            return False
        members = [leader, *leader.children(recursive=True)]
    except psutil.Error:
        return False
    return _stop(members, grace_s)


def stop_job_processes(job: str, grace_s: float = 5.0) -> bool:
    """Stops every process that runs for `job` (marked with TUNEFORGE_JOB in its environment),
    e.g. ranks whose torchrun died with the service that started it."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(JOB_ENV) == job:
                members.append(proc)
    return _stop(members, grace_s) if members else False


def _stop(members: list[psutil.Process], grace_s: float) -> bool:
    """SIGTERM to each process, SIGKILL to what is left after `grace_s`."""
    for proc in members:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _gone, alive = psutil.wait_procs(members, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    return True
