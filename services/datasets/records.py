"""Dataset records: the state of every dataset (PROCESSING, READY, FAILED), its spec, progress,
results and diagnostics, in the service's database."""

from __future__ import annotations

import builtins
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Integer, String, Text, func, select
from sqlalchemy.orm import Mapped, mapped_column

from services.common.database import Base, Database
from services.common.errors import AlreadyExists, NotFound

PROCESSING, READY, FAILED = "PROCESSING", "READY", "FAILED"
MAX_DIAGNOSTICS = 1000


@dataclass
class DatasetSpec:
    """What the user asked for."""

    display_name: str = ""
    format: str = ""  # "" = detect
    validation_policy: str = "STRICT"  # or SKIP_INVALID
    column_mapping: dict[str, str] = field(default_factory=dict)
    model: str = ""
    max_seq_len: int = 0
    validation_fraction: float = 0.0
    seed: int = 0
    validation_dataset: str = ""
    source: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class DatasetResult:
    """What processing found; filled in as it goes and when it ends."""

    format: str = ""
    content_sha256: str = ""
    row_count: int = 0
    train_row_count: int = 0
    validation_row_count: int = 0
    invalid_row_count: int = 0
    statistics: dict[str, Any] = field(default_factory=dict)
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    diagnostic_counts: dict[str, int] = field(default_factory=dict)
    artifact: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] = field(default_factory=dict)  # {code, reason, message, metadata}


class DatasetRow(Base):
    __tablename__ = "datasets"

    name: Mapped[str] = mapped_column(String(300), primary_key=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    dataset_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)
    request_id: Mapped[str] = mapped_column(String(128), index=True, default="")
    content_sha256: Mapped[str] = mapped_column(String(64), index=True, default="")
    spec_json: Mapped[str] = mapped_column(Text)
    result_json: Mapped[str] = mapped_column(Text, default="{}")
    bytes_processed: Mapped[int] = mapped_column(Integer, default=0)
    bytes_total: Mapped[int] = mapped_column(Integer, default=0)
    rows_processed: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass
class DatasetRecord:
    name: str
    project: str
    dataset_id: str
    state: str
    spec: DatasetSpec
    result: DatasetResult
    request_id: str = ""
    bytes_processed: int = 0
    bytes_total: int = 0
    rows_processed: int = 0
    create_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    update_time: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def from_row(cls, row: DatasetRow) -> DatasetRecord:
        return cls(
            name=row.name,
            project=row.project,
            dataset_id=row.dataset_id,
            state=row.state,
            spec=DatasetSpec(**json.loads(row.spec_json)),
            result=DatasetResult(**json.loads(row.result_json or "{}")),
            request_id=row.request_id,
            bytes_processed=row.bytes_processed,
            bytes_total=row.bytes_total,
            rows_processed=row.rows_processed,
            create_time=_aware(row.create_time),
            update_time=_aware(row.update_time),
        )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class DatasetRecords:
    """CRUD of dataset records. Blocking."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, record: DatasetRecord) -> DatasetRecord:
        with self.db.session() as s:
            if s.get(DatasetRow, record.name) is not None:
                raise AlreadyExists(record.name)
            s.add(
                DatasetRow(
                    name=record.name,
                    project=record.project,
                    dataset_id=record.dataset_id,
                    state=record.state,
                    request_id=record.request_id,
                    spec_json=json.dumps(asdict(record.spec)),
                    result_json=json.dumps(asdict(record.result)),
                    bytes_total=record.bytes_total,
                    create_time=record.create_time,
                    update_time=record.update_time,
                )
            )
        return record

    def get(self, name: str) -> DatasetRecord:
        with self.db.session() as s:
            row = s.get(DatasetRow, name)
            if row is None:
                raise NotFound(name)
            return DatasetRecord.from_row(row)

    def find_by_request_id(self, project: str, request_id: str) -> DatasetRecord | None:
        if not request_id:
            return None
        with self.db.session() as s:
            row = s.scalars(
                select(DatasetRow).where(
                    DatasetRow.project == project, DatasetRow.request_id == request_id
                )
            ).first()
            return DatasetRecord.from_row(row) if row else None

    def list(
        self, project: str, after: str, limit: int, state: str | None = None
    ) -> list[DatasetRecord]:
        with self.db.session() as s:
            query = select(DatasetRow).where(DatasetRow.project == project)
            if after:
                query = query.where(DatasetRow.dataset_id > after)
            if state:
                query = query.where(DatasetRow.state == state)
            rows = s.scalars(query.order_by(DatasetRow.dataset_id).limit(limit)).all()
            return [DatasetRecord.from_row(r) for r in rows]

    def list_by_state(self, state: str) -> builtins.list[DatasetRecord]:
        with self.db.session() as s:
            rows = s.scalars(select(DatasetRow).where(DatasetRow.state == state)).all()
            return [DatasetRecord.from_row(r) for r in rows]

    def update_progress(self, name: str, bytes_processed: int, rows: int, bytes_total: int) -> None:
        with self.db.session() as s:
            row = s.get(DatasetRow, name)
            if row is not None:
                row.bytes_processed = bytes_processed
                row.rows_processed = rows
                row.bytes_total = max(row.bytes_total, bytes_total)
                row.update_time = datetime.now(UTC)

    def finish(self, name: str, state: str, result: DatasetResult) -> DatasetRecord:
        with self.db.session() as s:
            row = s.get(DatasetRow, name)
            if row is None:
                raise NotFound(name)
            row.state = state
            row.content_sha256 = result.content_sha256 if state == READY else ""
            row.result_json = json.dumps(asdict(result))
            row.update_time = datetime.now(UTC)
            return DatasetRecord.from_row(row)

    def delete(self, name: str) -> None:
        with self.db.session() as s:
            row = s.get(DatasetRow, name)
            if row is None:
                raise NotFound(name)
            s.delete(row)

    def count_using_content(self, content_sha256: str) -> int:
        """How many READY datasets point at the same stored content."""
        with self.db.session() as s:
            query = select(func.count()).where(DatasetRow.content_sha256 == content_sha256)
            return int(s.scalar(query) or 0)
