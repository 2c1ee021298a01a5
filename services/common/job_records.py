"""Jobs and their events in a service's database: the persistent queue of the training and
conversion services.

A job is PENDING until the scheduler starts it (priority first, then creation order), RUNNING
while a worker process runs it, and ends SUCCEEDED, FAILED or CANCELLED. Every state change,
metric, evaluation, checkpoint and log line is an event with a per-job sequence number.

Each service declares its own pair of tables from `JobColumns` and `EventColumns`; `JobRecords`
works on any such pair.
"""

from __future__ import annotations

import builtins
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Float, Integer, String, Text, func, select
from sqlalchemy.orm import Mapped, mapped_column

from services.common.database import Database
from services.common.errors import AlreadyExists, NotFound

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED = (
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLING",
    "CANCELLED",
)
ENDED = (SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (PENDING, RUNNING, CANCELLING)


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobColumns:
    """The columns of a jobs table (mixed into each service's declarative class)."""

    name: Mapped[str] = mapped_column(String(300), primary_key=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    job_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    request_id: Mapped[str] = mapped_column(String(128), index=True, default="")
    spec_json: Mapped[str] = mapped_column(Text)  # what the user asked
    resolved_json: Mapped[str] = mapped_column(Text, default="{}")  # WorkerConfig
    progress_json: Mapped[str] = mapped_column(Text, default="{}")
    latest_metrics_json: Mapped[str] = mapped_column(Text, default="{}")
    latest_eval_json: Mapped[str] = mapped_column(Text, default="{}")
    error_json: Mapped[str] = mapped_column(Text, default="{}")
    output_model: Mapped[str] = mapped_column(String(300), default="")
    # Every catalog model the job published (JSON list); output_model is the main one.
    outputs_json: Mapped[str] = mapped_column(Text, default="[]")
    resume_count: Mapped[int] = mapped_column(Integer, default=0)
    worker_pid: Mapped[int] = mapped_column(Integer, default=0)
    worker_started_at: Mapped[float] = mapped_column(Float, default=0.0)
    last_sequence: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    start_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EventColumns:
    """The columns of a job events table."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job: Mapped[str] = mapped_column(String(300), index=True)
    sequence: Mapped[int] = mapped_column(Integer)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(String(16), index=True)
    payload_json: Mapped[str] = mapped_column(Text)


@dataclass
class Job:
    name: str
    project: str
    job_id: str
    state: str
    spec: dict[str, Any]
    priority: int = 0
    request_id: str = ""
    resolved: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    latest_metrics: dict[str, Any] = field(default_factory=dict)
    latest_eval: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] = field(default_factory=dict)
    output_model: str = ""
    outputs: list[str] = field(default_factory=list)
    resume_count: int = 0
    worker_pid: int = 0
    worker_started_at: float = 0.0
    create_time: datetime = field(default_factory=utcnow)
    start_time: datetime | None = None
    end_time: datetime | None = None
    update_time: datetime = field(default_factory=utcnow)

    @classmethod
    def from_row(cls, row: JobColumns) -> Job:
        return cls(
            name=row.name,
            project=row.project,
            job_id=row.job_id,
            state=row.state,
            spec=json.loads(row.spec_json),
            priority=row.priority,
            request_id=row.request_id,
            resolved=json.loads(row.resolved_json or "{}"),
            progress=json.loads(row.progress_json or "{}"),
            latest_metrics=json.loads(row.latest_metrics_json or "{}"),
            latest_eval=json.loads(row.latest_eval_json or "{}"),
            error=json.loads(row.error_json or "{}"),
            output_model=row.output_model,
            outputs=json.loads(row.outputs_json or "[]"),
            resume_count=row.resume_count,
            worker_pid=row.worker_pid,
            worker_started_at=row.worker_started_at,
            create_time=_aware(row.create_time),
            start_time=_aware(row.start_time) if row.start_time else None,
            end_time=_aware(row.end_time) if row.end_time else None,
            update_time=_aware(row.update_time),
        )


@dataclass
class Event:
    job: str
    sequence: int
    time: datetime
    kind: str  # state_change, metrics, eval, log, checkpoint
    payload: dict[str, Any]


def _apply(row: JobColumns, updates: dict[str, Any]) -> None:
    """Sets columns by name; values of `*_json` columns are serialized."""
    for key, value in updates.items():
        setattr(row, key, json.dumps(value) if key.endswith("_json") else value)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class JobRecords:
    """Blocking CRUD of jobs and events."""

    def __init__(self, db: Database, jobs: type[JobColumns], events: type[EventColumns]) -> None:
        self.db = db
        # The declarative classes (typed Any: their constructors take the columns as keywords).
        self._jobs: Any = jobs
        self._events: Any = events

    def create(self, job: Job) -> Job:
        with self.db.session() as s:
            if s.get(self._jobs, job.name) is not None:
                raise AlreadyExists(job.name)
            now = utcnow()
            s.add(
                self._jobs(
                    name=job.name,
                    project=job.project,
                    job_id=job.job_id,
                    state=job.state,
                    priority=job.priority,
                    request_id=job.request_id,
                    spec_json=json.dumps(job.spec),
                    resolved_json=json.dumps(job.resolved),
                    create_time=now,
                    update_time=now,
                )
            )
            self._add_event(
                s,
                job.name,
                "state_change",
                {
                    "previous_state": "STATE_UNSPECIFIED",
                    "state": job.state,
                    "reason": "job created",
                },
            )
        return self.get(job.name)

    def get(self, name: str) -> Job:
        with self.db.session() as s:
            row = s.get(self._jobs, name)
            if row is None:
                raise NotFound(name)
            return Job.from_row(row)

    def find_by_request_id(self, project: str, request_id: str) -> Job | None:
        if not request_id:
            return None
        with self.db.session() as s:
            row = s.scalars(
                select(self._jobs).where(
                    self._jobs.project == project, self._jobs.request_id == request_id
                )
            ).first()
            return Job.from_row(row) if row else None

    def list(
        self, project: str, after: str, limit: int, state: str | None = None
    ) -> builtins.list[Job]:
        with self.db.session() as s:
            query = select(self._jobs).where(self._jobs.project == project)
            if after:
                query = query.where(self._jobs.job_id > after)
            if state:
                query = query.where(self._jobs.state == state)
            rows = s.scalars(query.order_by(self._jobs.job_id).limit(limit)).all()
            return [Job.from_row(r) for r in rows]

    def in_states(self, *states: str) -> builtins.list[Job]:
        """Jobs in these states, in scheduling order: priority first, then creation."""
        with self.db.session() as s:
            rows = s.scalars(
                select(self._jobs)
                .where(self._jobs.state.in_(states))
                .order_by(self._jobs.priority.desc(), self._jobs.create_time, self._jobs.name)
            ).all()
            return [Job.from_row(r) for r in rows]

    def transition(
        self,
        name: str,
        state: str,
        reason: str,
        *,
        expect: tuple[str, ...] | None = None,
        error: dict[str, Any] | None = None,
        **updates: Any,
    ) -> Job | None:
        """Moves a job to `state` (only from `expect` states, when given) with an event.

        Returns None when the job was not in an expected state (someone else moved it)."""
        with self.db.session() as s:
            row = s.get(self._jobs, name)
            if row is None:
                raise NotFound(name)
            if expect is not None and row.state not in expect:
                return None
            previous = row.state
            row.state = state
            now = utcnow()
            row.update_time = now
            if state == RUNNING and row.start_time is None:
                row.start_time = now
            if state in ENDED:
                row.end_time = now
                row.worker_pid = 0
            if error is not None:
                row.error_json = json.dumps(error)
            _apply(row, updates)
            if previous != state:
                self._add_event(
                    s,
                    name,
                    "state_change",
                    {"previous_state": previous, "state": state, "reason": reason},
                )
            return Job.from_row(row)

    def update(self, name: str, **updates: Any) -> None:
        with self.db.session() as s:
            row = s.get(self._jobs, name)
            if row is None:
                return
            _apply(row, updates)
            row.update_time = utcnow()

    def add_event(self, name: str, kind: str, payload: dict[str, Any], **updates: Any) -> int:
        """Appends an event (and applies `updates` to the job in the same transaction)."""
        with self.db.session() as s:
            sequence = self._add_event(s, name, kind, payload)
            if updates:
                row = s.get(self._jobs, name)
                if row is not None:
                    _apply(row, updates)
                    row.update_time = utcnow()
            return sequence

    def _add_event(self, s: Any, name: str, kind: str, payload: dict[str, Any]) -> int:
        row = s.get(self._jobs, name)
        sequence = (row.last_sequence if row else 0) + 1
        if row is not None:
            row.last_sequence = sequence
        s.add(
            self._events(
                job=name,
                sequence=sequence,
                time=utcnow(),
                kind=kind,
                payload_json=json.dumps(payload),
            )
        )
        return int(sequence)

    def events(
        self, name: str, after_sequence: int = 0, limit: int = 1000, kind: str | None = None
    ) -> builtins.list[Event]:
        with self.db.session() as s:
            query = select(self._events).where(
                self._events.job == name, self._events.sequence > after_sequence
            )
            if kind:
                query = query.where(self._events.kind == kind)
            rows = s.scalars(query.order_by(self._events.sequence).limit(limit)).all()
            return [
                Event(r.job, r.sequence, _aware(r.time), r.kind, json.loads(r.payload_json))
                for r in rows
            ]

    def delete(self, name: str) -> None:
        with self.db.session() as s:
            row = s.get(self._jobs, name)
            if row is None:
                raise NotFound(name)
            s.query(self._events).filter(self._events.job == name).delete()
            s.delete(row)

    def count_running(self) -> int:
        with self.db.session() as s:
            query = select(func.count()).where(self._jobs.state.in_((RUNNING, CANCELLING)))
            return int(s.scalar(query) or 0)
