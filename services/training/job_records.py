"""Training jobs and their events in the service's database: the persistent queue.

A job is PENDING until the scheduler starts it (priority first, then creation order), RUNNING
while a worker group trains it, and ends SUCCEEDED, FAILED or CANCELLED. Every state change,
metric, evaluation, checkpoint and log line is an event with a per-job sequence number.
"""

from __future__ import annotations

import builtins
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Float, Integer, String, Text, func, select
from sqlalchemy.orm import Mapped, mapped_column

from services.common.database import Base, Database
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


class JobRow(Base):
    __tablename__ = "training_jobs"

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
    resume_count: Mapped[int] = mapped_column(Integer, default=0)
    worker_pid: Mapped[int] = mapped_column(Integer, default=0)
    worker_started_at: Mapped[float] = mapped_column(Float, default=0.0)
    last_sequence: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    start_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EventRow(Base):
    __tablename__ = "training_job_events"

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
    resume_count: int = 0
    worker_pid: int = 0
    worker_started_at: float = 0.0
    create_time: datetime = field(default_factory=utcnow)
    start_time: datetime | None = None
    end_time: datetime | None = None
    update_time: datetime = field(default_factory=utcnow)

    @classmethod
    def from_row(cls, row: JobRow) -> Job:
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


def _apply(row: JobRow, updates: dict[str, Any]) -> None:
    """Sets columns by name; values of `*_json` columns are serialized."""
    for key, value in updates.items():
        setattr(row, key, json.dumps(value) if key.endswith("_json") else value)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class JobRecords:
    """Blocking CRUD of jobs and events."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, job: Job) -> Job:
        with self.db.session() as s:
            if s.get(JobRow, job.name) is not None:
                raise AlreadyExists(job.name)
            now = utcnow()
            s.add(
                JobRow(
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
            row = s.get(JobRow, name)
            if row is None:
                raise NotFound(name)
            return Job.from_row(row)

    def find_by_request_id(self, project: str, request_id: str) -> Job | None:
        if not request_id:
            return None
        with self.db.session() as s:
            row = s.scalars(
                select(JobRow).where(JobRow.project == project, JobRow.request_id == request_id)
            ).first()
            return Job.from_row(row) if row else None

    def list(
        self, project: str, after: str, limit: int, state: str | None = None
    ) -> builtins.list[Job]:
        with self.db.session() as s:
            query = select(JobRow).where(JobRow.project == project)
            if after:
                query = query.where(JobRow.job_id > after)
            if state:
                query = query.where(JobRow.state == state)
            rows = s.scalars(query.order_by(JobRow.job_id).limit(limit)).all()
            return [Job.from_row(r) for r in rows]

    def in_states(self, *states: str) -> builtins.list[Job]:
        """Jobs in these states, in scheduling order: priority first, then creation."""
        with self.db.session() as s:
            rows = s.scalars(
                select(JobRow)
                .where(JobRow.state.in_(states))
                .order_by(JobRow.priority.desc(), JobRow.create_time, JobRow.name)
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
            row = s.get(JobRow, name)
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
            row = s.get(JobRow, name)
            if row is None:
                return
            _apply(row, updates)
            row.update_time = utcnow()

    def add_event(self, name: str, kind: str, payload: dict[str, Any], **updates: Any) -> int:
        """Appends an event (and applies `updates` to the job in the same transaction)."""
        with self.db.session() as s:
            sequence = self._add_event(s, name, kind, payload)
            if updates:
                row = s.get(JobRow, name)
                if row is not None:
                    _apply(row, updates)
                    row.update_time = utcnow()
            return sequence

    @staticmethod
    def _add_event(s: Any, name: str, kind: str, payload: dict[str, Any]) -> int:
        row = s.get(JobRow, name)
        sequence = (row.last_sequence if row else 0) + 1
        if row is not None:
            row.last_sequence = sequence
        s.add(
            EventRow(
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
            query = select(EventRow).where(EventRow.job == name, EventRow.sequence > after_sequence)
            if kind:
                query = query.where(EventRow.kind == kind)
            rows = s.scalars(query.order_by(EventRow.sequence).limit(limit)).all()
            return [
                Event(r.job, r.sequence, _aware(r.time), r.kind, json.loads(r.payload_json))
                for r in rows
            ]

    def delete(self, name: str) -> None:
        with self.db.session() as s:
            row = s.get(JobRow, name)
            if row is None:
                raise NotFound(name)
            s.query(EventRow).filter(EventRow.job == name).delete()
            s.delete(row)

    def count_running(self) -> int:
        with self.db.session() as s:
            query = select(func.count()).where(JobRow.state.in_((RUNNING, CANCELLING)))
            return int(s.scalar(query) or 0)
