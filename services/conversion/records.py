"""The conversion service's job tables (the queue itself is services.common.job_records)."""

from __future__ import annotations

from services.common.database import Base, Database
from services.common.job_records import EventColumns, JobColumns, JobRecords


class ConversionJobRow(JobColumns, Base):
    __tablename__ = "conversion_jobs"


class ConversionJobEventRow(EventColumns, Base):
    __tablename__ = "conversion_job_events"


def conversion_job_records(db: Database) -> JobRecords:
    return JobRecords(db, ConversionJobRow, ConversionJobEventRow)
