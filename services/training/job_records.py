"""The training service's job tables (the queue itself is services.common.job_records)."""

from __future__ import annotations

from services.common.database import Base, Database
from services.common.job_records import EventColumns, JobColumns, JobRecords


class TrainingJobRow(JobColumns, Base):
    __tablename__ = "training_jobs"


class TrainingJobEventRow(EventColumns, Base):
    __tablename__ = "training_job_events"


def training_job_records(db: Database) -> JobRecords:
    return JobRecords(db, TrainingJobRow, TrainingJobEventRow)
