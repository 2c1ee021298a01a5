"""The persistent queue: priority first, then first come first served; it survives a reopen."""

from __future__ import annotations

import time
from pathlib import Path

from services.common.database import Database
from services.training.job_records import CANCELLED, PENDING, RUNNING, Job, JobRecords


def test_priority_then_fifo_and_persistence(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    records = JobRecords(Database(url))
    for job_id, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1)]:
        records.create(
            Job(
                name=f"projects/p/trainingJobs/{job_id}",
                project="p",
                job_id=job_id,
                state=PENDING,
                spec={},
                priority=priority,
            )
        )
        time.sleep(0.01)
    order = [j.job_id for j in records.in_states(PENDING)]
    assert order == ["b", "d", "a", "c", "e"]

    assert (
        records.transition("projects/p/trainingJobs/b", RUNNING, "started", expect=(PENDING,))
        is not None
    )
    # A transition from an unexpected state is refused (someone else moved the job).
    assert (
        records.transition("projects/p/trainingJobs/b", CANCELLED, "x", expect=(PENDING,)) is None
    )

    reopened = JobRecords(Database(url))
    assert [j.job_id for j in reopened.in_states(PENDING)] == ["d", "a", "c", "e"]
    assert [j.job_id for j in reopened.in_states(RUNNING)] == ["b"]
    events = reopened.events("projects/p/trainingJobs/b")
    assert [e.sequence for e in events] == [1, 2]
    assert events[-1].payload == {
        "previous_state": "PENDING",
        "state": "RUNNING",
        "reason": "started",
    }
