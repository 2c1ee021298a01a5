"""Writes the demo's task dataset: dates written out in words ("March 5, 2021", "5th of March
2021", ...) to be answered with the ISO 8601 date alone ("2021-03-05"). Exact match scores it.

SmolLM2-135M-Instruct fails it as asked (it explains, or gets the month number or the padding
wrong); a few minutes of LoRA teach it the twelve month numbers and the strict format. Rows are
deterministic for a seed, and every date appears at most once.

    python scripts/demo_task.py OUT.jsonl [--rows N] [--seed S]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
from pathlib import Path

SYSTEM = "Convert the date to ISO 8601 (YYYY-MM-DD). Reply with the date only."
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
FIRST = dt.date(1950, 1, 1)
LAST = dt.date(2049, 12, 31)


def ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def spell(date: dt.date, style: int) -> str:
    """One of the written forms of `date`."""
    month = MONTHS[date.month - 1]
    forms = [
        f"{month} {date.day}, {date.year}",
        f"{date.day} {month} {date.year}",
        f"{month[:3]} {date.day}, {date.year}",
        f"the {ordinal(date.day)} of {month}, {date.year}",
    ]
    return forms[style % len(forms)]


def row(date: dt.date, style: int) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": spell(date, style)},
            {"role": "assistant", "content": date.isoformat()},
        ]
    }


def rows(count: int = 600, seed: int = 0) -> list[dict]:
    """`count` rows of distinct dates in [1950, 2049], each written in a random style."""
    rng = random.Random(seed)
    span = (LAST - FIRST).days + 1
    offsets = rng.sample(range(span), count)
    return [row(FIRST + dt.timedelta(days=o), rng.randrange(4)) for o in offsets]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = rows(args.rows, args.seed)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    print(f"wrote {len(data)} rows to {args.out} (e.g. {spell(dt.date(2021, 3, 5), 3)!r} -> ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
