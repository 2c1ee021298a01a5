"""A job's worker: a subprocess tree in a session of its own, whose stdout is parsed into events.

Workers report progress as lines `@@tuneforge ` + one JSON object with a "type"; everything else
they print is kept as log lines (and in `worker.log` in the work directory). A worker is
identified by its leader's pid and start time (kept in the job record), so a restarted service
can find and stop a worker an earlier service left behind; every process also carries the job's
name in TUNEFORGE_JOB, which finds processes whose leader is gone.
"""

from __future__ import annotations

import collections
import contextlib
import json
import signal
import subprocess
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import psutil

EVENT_PREFIX = "@@tuneforge "
LOG_TAIL_LINES = 40
JOB_ENV = "TUNEFORGE_JOB"


def format_event(kind: str, **payload: Any) -> str:
    return EVENT_PREFIX + json.dumps({"type": kind, **payload}, separators=(",", ":"))


def parse_event(line: str, types: Collection[str]) -> dict[str, Any] | None:
    """The event on `line`, or None when it is a log line (or an event of an unknown type)."""
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        event = json.loads(line[len(EVENT_PREFIX) :])
    except ValueError:
        return None
    return event if isinstance(event, dict) and event.get("type") in types else None


class WorkerProcess:
    """Runs `cmd` in `work_dir`; a reader thread turns its output into on_event/on_log calls."""

    def __init__(
        self,
        cmd: list[str],
        work_dir: Path,
        env: dict[str, str],
        event_types: Collection[str],
        on_event: Callable[[dict[str, Any]], None],
        on_log: Callable[[str], None],
    ) -> None:
        self.cmd = cmd
        self.work_dir = work_dir
        self.env = env
        self.event_types = event_types
        self.on_event = on_event
        self.on_log = on_log
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=self.work_dir,
            env=self.env,
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
                event = parse_event(line, self.event_types)
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
        """SIGTERM to the whole tree, SIGKILL after `grace_s`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_group(self.proc.pid, self.started_at, grace_s)


def stop_group(pid: int, started_at: float, grace_s: float = 5.0) -> bool:
    """Stops the worker led by `pid` if that process is still the one started at `started_at`
    (pids are reused). Launchers such as torchrun start children in sessions of their own, so
    the signal goes to every descendant, not only to the leader's process group. Returns whether
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
    e.g. workers whose leader died with the service that started it."""
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
