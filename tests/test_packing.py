"""Packing tokenized examples into training rows: first-fit decreasing, never splitting one."""

from __future__ import annotations

import random

from services.common.chat_template import IGNORE_INDEX
from services.training.worker.data import Example, fill_ratio, pack


def example(token: int, length: int) -> Example:
    """An example whose every token is `token`, so it can be found again in a packed row."""
    return Example([token] * length, [token] * length)


def in_order(examples: list[Example], max_len: int) -> list[Example]:
    """Packing as it was before: in order, a new row whenever the next example does not fit."""
    rows: list[list[int]] = []
    for ex in examples:
        if not rows or len(rows[-1]) + len(ex.input_ids) > max_len:
            rows.append([])
        rows[-1] += ex.input_ids
    return [Example(r, r) for r in rows]


def unpack(row: Example) -> list[tuple[int, int]]:
    """(token, length) of the examples in a row, in their order there; checks their labels."""
    found: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(row.input_ids) + 1):
        if i == len(row.input_ids) or row.input_ids[i] != row.input_ids[start]:
            token = row.input_ids[start]
            labels = row.labels[start:i]
            # No loss on predicting an example's first token from the one before it.
            first = token if start == 0 else IGNORE_INDEX
            assert labels == [first] + [token] * (i - start - 1)
            found.append((token, i - start))
            start = i
    return found


def skewed(n: int, seed: int = 0) -> list[Example]:
    """Chat-like lengths: mostly short examples, a long tail close to max_len (512)."""
    rng = random.Random(seed)
    return [example(i + 1, min(500, int(rng.lognormvariate(4.6, 0.7)) + 8)) for i in range(n)]


def test_packs_longest_first_into_the_first_row_with_room() -> None:
    examples = [example(t, n) for t, n in [(1, 3), (2, 7), (3, 5), (4, 2), (5, 8)]]
    rows = pack(examples, 10)
    assert [unpack(r) for r in rows] == [[(5, 8), (4, 2)], [(2, 7), (1, 3)], [(3, 5)]]
    assert fill_ratio(rows, 10) == 25 / 30


def test_fills_better_than_packing_in_order_and_loses_nothing() -> None:
    examples = skewed(2000)
    rows = pack(examples, 512)
    assert all(len(r.input_ids) <= 512 for r in rows)
    packed = sorted(ex for r in rows for ex in unpack(r))
    assert packed == sorted((ex.input_ids[0], len(ex.input_ids)) for ex in examples)

    tokens = sum(len(ex.input_ids) for ex in examples)
    before = fill_ratio(in_order(examples, 512), 512)
    after = fill_ratio(rows, 512)
    assert after == tokens / (len(rows) * 512)
    assert before < 0.85 and after > 0.97, (before, after)
    assert len(rows) <= -(-tokens // 512) + 2  # within two rows of a perfect packing


def test_is_deterministic_and_keeps_the_input_order_of_equal_lengths() -> None:
    examples = skewed(500, seed=1)
    rows = pack(examples, 512)
    assert pack(list(examples), 512) == rows
    same_length = [example(t, 4) for t in range(1, 8)]
    assert [unpack(r) for r in pack(same_length, 8)] == [
        [(1, 4), (2, 4)],
        [(3, 4), (4, 4)],
        [(5, 4), (6, 4)],
        [(7, 4)],
    ]


def test_an_example_longer_than_max_len_gets_a_row_of_its_own() -> None:
    rows = pack([example(1, 3), example(2, 12), example(3, 4)], 8)
    assert [unpack(r) for r in rows] == [[(2, 12)], [(3, 4), (1, 3)]]
    assert pack([], 8) == [] and fill_ratio([], 8) == 0.0
