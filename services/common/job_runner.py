"""What the training and conversion services' job APIs share: read and page jobs and events,
cancel, delete, start queued jobs as worker processes, supervise them, recover after a restart.

Blocking; a servicer calls the API in threads, and an asyncio loop calls `schedule()`. Each
running job has a supervisor thread that owns its worker process and turns the worker's reports
into events and state. Subclasses say how a job's worker is made, what its events mean and what
a clean exit is worth.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import structlog

from services.common.artifact_store import ArtifactStore
from services.common.errors import FailedPrecondition, InvalidArgument, StoreUnavailable
from services.common.job_records import (
    ACTIVE,
    CANCELLED,
    CANCELLING,
    ENDED,
    FAILED,
    PENDING,
    RUNNING,
    Event,
    Job,
    JobRecords,
)
from services.common.job_watch import JobNotifier
from services.common.resource_names import (
    cut_page,
    decode_page_token,
    page_size,
    parse_filter,
    parse_name,
)
from services.common.worker_process import WorkerProcess, stop_group, stop_job_processes

STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLING", "CANCELLED")
log = structlog.get_logger("jobs")


def worker_failed(message: str, **metadata: str) -> dict[str, Any]:
    """The error of a job whose worker failed (google.rpc.Status as a dict)."""
    return {"code": "INTERNAL", "reason": "WORKER_FAILED", "message": message, "metadata": metadata}


class JobRunner:
    # The collection in job names ("projects/{p}/{collection}/{id}").
    collection = "jobs"
    # What a cancelled job keeps, for its end reason.
    cancelled_reason = "cancelled"
    # Why a job goes back to the queue when the service stops or restarts.
    requeue_reason = "the job starts again"

    def __init__(
        self,
        records: JobRecords,
        max_concurrent: int = 1,
        cancel_grace_s: float = 5.0,
    ) -> None:
        self.records = records
        self.max_concurrent = max_concurrent
        self.cancel_grace_s = cancel_grace_s
        self.notify: Callable[[str], None] = lambda _job: None
        self._running: dict[str, WorkerProcess] = {}
        self._supervisors: dict[str, threading.Thread] = {}
        self._shutting_down = False
        self._lock = threading.Lock()

    # --- what subclasses provide --------------------------------------------------------------

    def make_worker(self, job: Job) -> WorkerProcess:
        """The (not yet started) worker of `job`, reporting to on_event / on_log."""
        raise NotImplementedError

    def on_event(self, name: str, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def completed(self, job: Job, code: int, worker: WorkerProcess) -> None:
        """The worker of a RUNNING job exited on its own with `code`: finish the job."""
        raise NotImplementedError

    def delete_artifacts(self, job: Job) -> None:
        """What a deleted job leaves in the store and should not (nothing by default)."""

    # --- read ---------------------------------------------------------------------------------

    def get(self, name: str) -> Job:
        parse_name(name, self.collection)
        return self.records.get(name)

    def list(
        self, project: str, requested: int, token: str, filter_text: str
    ) -> tuple[builtins.list[Job], str]:
        size = page_size(requested)
        state = parse_filter(filter_text, {"state"}).get("state")
        if state and state not in STATES:
            raise InvalidArgument(f"unknown state {state!r}", field="filter")
        after = str(decode_page_token(token).get("after", ""))
        found = self.records.list(project, after, size + 1, state)
        return cut_page(found, size, lambda item: item.job_id)

    def events(
        self, name: str, after: int = 0, limit: int = 1000, kind: str | None = None
    ) -> builtins.list[Event]:
        self.get(name)
        return self.records.events(name, after, limit, kind)

    def list_events(
        self, name: str, requested: int, token: str, filter_text: str
    ) -> tuple[builtins.list[Event], str]:
        size = page_size(requested)
        kind = parse_filter(filter_text, {"type"}).get("type")
        after = int(str(decode_page_token(token).get("after", 0)))
        found = self.events(name, after, size + 1, kind)
        return cut_page(found, size, lambda item: item.sequence)

    # --- cancel / delete ----------------------------------------------------------------------

    def cancel(self, name: str) -> Job:
        job = self.get(name)
        if job.state in ENDED:
            raise FailedPrecondition(
                f"{name} already ended {job.state}",
                reason="JOB_STATE_CONFLICT",
                metadata={"state": job.state},
            )
        if job.state == PENDING:
            done = self.records.transition(
                name, CANCELLED, "cancelled before it started", expect=(PENDING,)
            )
            if done is not None:
                self.notify(name)
                return done
        moved = self.records.transition(name, CANCELLING, "cancel requested", expect=(RUNNING,))
        self.notify(name)
        with self._lock:
            worker = self._running.get(name)
        if worker is not None:
            threading.Thread(
                target=worker.terminate, args=(self.cancel_grace_s,), daemon=True
            ).start()
        return moved or self.get(name)

    def delete(self, name: str) -> None:
        job = self.get(name)
        if job.state in ACTIVE:
            raise FailedPrecondition(
                f"{name} is {job.state}; cancel it first",
                reason="JOB_STATE_CONFLICT",
                metadata={"state": job.state},
            )
        self.delete_artifacts(job)
        self.records.delete(name)
        log.info("job_deleted", job=name)

    # --- scheduling ---------------------------------------------------------------------------

    def schedule(self) -> builtins.list[str]:
        """Starts queued jobs while fewer than max_concurrent run. Returns the started ones."""
        started: builtins.list[str] = []
        if self._shutting_down:
            return started
        with self._lock:
            free = self.max_concurrent - len(self._running)
        if free <= 0:
            return started
        for job in self.records.in_states(PENDING)[:free]:
            if self._start(job):
                started.append(job.name)
        return started

    def _start(self, job: Job) -> bool:
        reason = (
            f"{self.requeue_reason} (restart {job.resume_count})"
            if job.resume_count
            else "a worker slot is free"
        )
        moved = self.records.transition(job.name, RUNNING, reason, expect=(PENDING,))
        if moved is None:
            return False
        try:
            worker = self.make_worker(moved)
            worker.start()
        except OSError as exc:
            why = f"the worker could not start: {exc}"
            self._finish(job.name, FAILED, why, worker_failed(why))
            return False
        self.records.update(job.name, worker_pid=worker.pid, worker_started_at=worker.started_at)
        supervisor = threading.Thread(
            target=self._supervise,
            args=(job.name, worker),
            daemon=True,
            name=f"supervise-{job.job_id}",
        )
        with self._lock:
            self._running[job.name] = worker
            self._supervisors[job.name] = supervisor
        supervisor.start()
        log.info("job_started", job=job.name, pid=worker.pid)
        self.notify(job.name)
        return True

    def _on_log(self, name: str, line: str) -> None:
        level = "error" if ("Error" in line or "Traceback" in line) else "info"
        self.records.add_event(
            name, "log", {"level": level, "source": "worker", "message": line[:4000]}
        )
        self.notify(name)

    def _log_event(self, name: str, level: str, message: str) -> None:
        self.records.add_event(
            name, "log", {"level": level, "source": "service", "message": message}
        )

    def _supervise(self, name: str, worker: WorkerProcess) -> None:
        code = worker.wait()
        with self._lock:
            self._running.pop(name, None)
            self._supervisors.pop(name, None)
        job = self.records.get(name)
        if job.state == CANCELLING:
            self._finish(
                name,
                CANCELLED,
                self.cancelled_reason,
                {
                    "code": "CANCELLED",
                    "reason": "ABORTED",
                    "message": "the job was cancelled",
                    "metadata": {},
                },
            )
        elif self._shutting_down:
            self.records.transition(
                name,
                PENDING,
                f"the service is stopping; {self.requeue_reason} when it is back",
                expect=(RUNNING,),
                resume_count=job.resume_count + 1,
            )
        else:
            self.completed(job, code, worker)
        self.notify(name)

    def _finish(self, name: str, state: str, reason: str, error: dict[str, Any] | None) -> None:
        self.records.transition(name, state, reason, error=error)
        log.info("job_ended", job=name, state=state, reason=reason)

    # --- restart ------------------------------------------------------------------------------

    def recover(self) -> builtins.list[str]:
        """After a restart: stop workers an earlier service left behind, requeue their jobs,
        finish pending cancellations. Returns the requeued jobs."""
        requeued = []
        for job in self.records.in_states(RUNNING, CANCELLING):
            if job.worker_pid:
                stop_group(job.worker_pid, job.worker_started_at, grace_s=5)
            stop_job_processes(job.name, grace_s=5)
            if job.state == CANCELLING:
                self._finish(job.name, CANCELLED, self.cancelled_reason, None)
                continue
            self.records.transition(
                job.name,
                PENDING,
                f"the service restarted; {self.requeue_reason}",
                expect=(RUNNING,),
                resume_count=job.resume_count + 1,
                worker_pid=0,
            )
            requeued.append(job.name)
        return requeued

    def shutdown(self, grace_s: float = 10.0) -> None:
        """Stops running workers; their jobs go back to the queue and run again later."""
        self._shutting_down = True
        with self._lock:
            workers = dict(self._running)
        for worker in workers.values():
            worker.terminate(grace_s)
        with self._lock:
            threads = [self._supervisors[n] for n in workers if n in self._supervisors]
        for thread in threads:
            thread.join(timeout=grace_s + 10)


class JobScheduling:
    """A JobRunner's life in its service's event loop: on start, recover what an earlier process
    left and start the scheduler (every `every_s`, and at once when a job has news); on stop,
    stop the scheduler and the running workers (their jobs go back to the queue)."""

    def __init__(
        self,
        jobs: JobRunner,
        store: ArtifactStore,
        notifier: JobNotifier,
        every_s: float = 1.0,
    ) -> None:
        self.jobs = jobs
        self.store = store
        self.notifier = notifier
        self.every_s = every_s
        self._task: asyncio.Task[None] | None = None
        jobs.notify = notifier.notify

    async def _schedule(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.jobs.schedule)
            except Exception:
                log.exception("schedule_failed")
            await self.notifier.wait(self.every_s)

    async def start(self) -> None:
        self.notifier.bind()
        # The service starts even when the store is down; calls that need it answer UNAVAILABLE.
        try:
            await asyncio.to_thread(self.store.ensure_bucket)
        except StoreUnavailable as exc:
            log.warning("store_unavailable_at_start", error=exc.message)
        for name in await asyncio.to_thread(self.jobs.recover):
            log.info("job_requeued_after_restart", job=name)
        self._task = asyncio.create_task(self._schedule())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self.jobs.shutdown)
