"""The inference service's evaluations table: what was asked, the state, the report's summary.

Blocking (SQLAlchemy): call from worker threads, not the event loop.
"""

from __future__ import annotations

import builtins
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from services.common.database import Base, Database
from services.common.errors import AlreadyExists, NotFound

PENDING, RUNNING, SUCCEEDED, FAILED = "PENDING", "RUNNING", "SUCCEEDED", "FAILED"
ENDED = (SUCCEEDED, FAILED)


def utcnow() -> datetime:
    return datetime.now(UTC)


class EvaluationRow(Base):
    __tablename__ = "evaluations"

    name: Mapped[str] = mapped_column(String(300), primary_key=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    evaluation_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)
    request_id: Mapped[str] = mapped_column(String(128), index=True, default="")
    model: Mapped[str] = mapped_column(String(300), default="")
    dataset: Mapped[str] = mapped_column(String(300), default="")
    spec_json: Mapped[str] = mapped_column(Text)
    report_json: Mapped[str] = mapped_column(Text, default="{}")
    error_json: Mapped[str] = mapped_column(Text, default="{}")
    # How many times a run was started (a service restart interrupts one and starts it again).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    start_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass
class EvaluationRecord:
    name: str
    project: str
    evaluation_id: str
    state: str
    spec: dict[str, Any]
    request_id: str = ""
    report: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    create_time: datetime = field(default_factory=utcnow)
    start_time: datetime | None = None
    end_time: datetime | None = None

    @classmethod
    def from_row(cls, row: EvaluationRow) -> EvaluationRecord:
        return cls(
            name=row.name,
            project=row.project,
            evaluation_id=row.evaluation_id,
            state=row.state,
            spec=json.loads(row.spec_json),
            request_id=row.request_id,
            report=json.loads(row.report_json or "{}"),
            error=json.loads(row.error_json or "{}"),
            attempts=row.attempts,
            create_time=_aware(row.create_time) or utcnow(),
            start_time=_aware(row.start_time),
            end_time=_aware(row.end_time),
        )


class EvaluationRecords:
    """Blocking CRUD of evaluations."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, record: EvaluationRecord) -> EvaluationRecord:
        with self.db.session() as s:
            if s.get(EvaluationRow, record.name) is not None:
                raise AlreadyExists(record.name)
            s.add(
                EvaluationRow(
                    name=record.name,
                    project=record.project,
                    evaluation_id=record.evaluation_id,
                    state=record.state,
                    request_id=record.request_id,
                    model=str(record.spec.get("model", "")),
                    dataset=str(record.spec.get("dataset", "")),
                    spec_json=json.dumps(record.spec),
                    report_json="{}",
                    error_json="{}",
                    attempts=0,
                    create_time=utcnow(),
                )
            )
        return self.get(record.name)

    def get(self, name: str) -> EvaluationRecord:
        with self.db.session() as s:
            row = s.get(EvaluationRow, name)
            if row is None:
                raise NotFound(name)
            return EvaluationRecord.from_row(row)

    def find_by_request_id(self, project: str, request_id: str) -> EvaluationRecord | None:
        if not request_id:
            return None
        with self.db.session() as s:
            row = s.scalars(
                select(EvaluationRow).where(
                    EvaluationRow.project == project, EvaluationRow.request_id == request_id
                )
            ).first()
            return EvaluationRecord.from_row(row) if row else None

    def list(
        self, project: str, after: str, limit: int, where: dict[str, str]
    ) -> builtins.list[EvaluationRecord]:
        with self.db.session() as s:
            query = select(EvaluationRow).where(EvaluationRow.project == project)
            if after:
                query = query.where(EvaluationRow.evaluation_id > after)
            for column, value in where.items():
                query = query.where(getattr(EvaluationRow, column) == value)
            rows = s.scalars(query.order_by(EvaluationRow.evaluation_id).limit(limit)).all()
            return [EvaluationRecord.from_row(r) for r in rows]

    def in_states(self, *states: str) -> builtins.list[EvaluationRecord]:
        """Evaluations in these states, oldest first."""
        with self.db.session() as s:
            rows = s.scalars(
                select(EvaluationRow)
                .where(EvaluationRow.state.in_(states))
                .order_by(EvaluationRow.create_time, EvaluationRow.name)
            ).all()
            return [EvaluationRecord.from_row(r) for r in rows]

    def start(self, name: str) -> EvaluationRecord:
        """PENDING -> RUNNING, counting the attempt."""
        with self.db.session() as s:
            row = s.get(EvaluationRow, name)
            if row is None:
                raise NotFound(name)
            row.state = RUNNING
            row.attempts += 1
            row.start_time = utcnow()
            return EvaluationRecord.from_row(row)

    def requeue(self, name: str) -> None:
        """Back to PENDING (a run that a restart interrupted starts again)."""
        with self.db.session() as s:
            row = s.get(EvaluationRow, name)
            if row is not None:
                row.state = PENDING

    def finish(
        self,
        name: str,
        state: str,
        *,
        report: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> EvaluationRecord:
        with self.db.session() as s:
            row = s.get(EvaluationRow, name)
            if row is None:
                raise NotFound(name)
            row.state = state
            row.end_time = utcnow()
            if report is not None:
                row.report_json = json.dumps(report)
            if error is not None:
                row.error_json = json.dumps(error)
            return EvaluationRecord.from_row(row)
