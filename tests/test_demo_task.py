"""The demo's task generator (scripts/demo_task.py): deterministic rows whose reference is the
ISO date of the written one, scorable by exact match, with a held-out split of the asked size."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from pathlib import Path

import pytest

from services.datasets.ingest import in_validation
from services.inference.evaluation import row_from_canonical, score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import demo_task

ISO = re.compile(r"\d{4}-\d{2}-\d{2}")


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    assert demo_task.rows(200, seed=3) == demo_task.rows(200, seed=3)
    assert demo_task.rows(200, seed=3) != demo_task.rows(200, seed=4)


def test_every_reference_is_the_iso_date_of_the_question() -> None:
    data = demo_task.rows(600)
    references = [r["messages"][-1]["content"] for r in data]
    assert len(set(references)) == 600, "a date repeats"
    for r, reference in zip(data, references, strict=True):
        assert ISO.fullmatch(reference)
        date = dt.date.fromisoformat(reference)
        assert demo_task.FIRST <= date <= demo_task.LAST
        question = r["messages"][1]["content"]
        assert str(date.year) in question and str(date.day) in question
        assert demo_task.MONTHS[date.month - 1][:3] in question


def test_every_written_style_is_used() -> None:
    questions = [r["messages"][1]["content"] for r in demo_task.rows(200)]
    assert any(q.startswith("the ") and " of " in q for q in questions)
    assert any(re.fullmatch(r"[A-Z][a-z]{2} \d+, \d{4}", q) for q in questions)
    assert any(re.fullmatch(r"\d+ [A-Z][a-z]+ \d{4}", q) for q in questions)
    assert any(re.fullmatch(r"[A-Z][a-z]{3,} \d+, \d{4}", q) for q in questions)


@pytest.mark.parametrize(
    ("day", "text"),
    [
        (1, "1st"),
        (2, "2nd"),
        (3, "3rd"),
        (11, "11th"),
        (12, "12th"),
        (13, "13th"),
        (21, "21st"),
        (30, "30th"),
    ],
)
def test_ordinals(day: int, text: str) -> None:
    assert demo_task.ordinal(day) == text


def test_rows_are_scored_by_exact_match_on_the_reference() -> None:
    row = row_from_canonical(1, demo_task.row(dt.date(2021, 3, 5), 0))
    assert row is not None
    assert [m["role"] for m in row.prompt] == ["system", "user"]
    assert row.prompt[1]["content"] == "March 5, 2021"
    assert row.reference == "2021-03-05"
    assert score("EXACT_MATCH", "2021-03-05\n", row.reference)
    assert not score("EXACT_MATCH", "The date is 2021-03-05.", row.reference)
    assert not score("EXACT_MATCH", "2021-3-5", row.reference)


def test_held_out_split_is_about_a_tenth(tmp_path: Path) -> None:
    out = tmp_path / "dates.jsonl"
    assert demo_task.main([str(out), "--rows", "600"]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 600
    assert [json.loads(line) for line in lines] == demo_task.rows(600)
    held_out = [line for line in lines if in_validation(line, 0.1, 0)]
    assert 40 <= len(held_out) <= 80
