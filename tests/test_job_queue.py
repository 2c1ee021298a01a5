"""The persistent queue: priority first, then first come first served; it survives a reopen."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from services.common.database import Database
from services.common.job_records import CANCELLED, PENDING, RUNNING, Job
from services.training.job_records import training_job_records


def test_priority_then_fifo_and_persistence(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    records = training_job_records(Database(url))
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

    reopened = training_job_records(Database(url))
    assert [j.job_id for j in reopened.in_states(PENDING)] == ["d", "a", "c", "e"]
    assert [j.job_id for j in reopened.in_states(RUNNING)] == ["b"]
    events = reopened.events("projects/p/trainingJobs/b")
    assert [e.sequence for e in events] == [1, 2]
    assert events[-1].payload == {
        "previous_state": "PENDING",
        "state": "RUNNING",
        "reason": "started",
    }


def test_a_database_from_an_older_release_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    records = training_job_records(Database(f"sqlite:///{path}"))
    records.create(
        Job(name="projects/p/trainingJobs/old", project="p", job_id="old", state=PENDING, spec={})
    )
    records.db.close()
    with sqlite3.connect(path) as connection:  # as an older release left it
        connection.execute("ALTER TABLE training_jobs DROP COLUMN outputs_json")

    reopened = training_job_records(Database(f"sqlite:///{path}"))
    assert reopened.get("projects/p/trainingJobs/old").outputs == []
    reopened.update("projects/p/trainingJobs/old", outputs_json=["projects/p/models/m"])
    assert reopened.get("projects/p/trainingJobs/old").outputs == ["projects/p/models/m"]


def test_workers_get_the_cpus_of_the_container_quota(tmp_path: Path) -> None:
    from services.common.cpus import available_cpus

    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == affinity
    (tmp_path / "cpu.max").write_text("100000 100000\n")  # a 1-CPU limit
    assert available_cpus(tmp_path) == 1
    assert available_cpus(tmp_path / "missing") == affinity
