"""Training data: canonical JSONL rows -> token ids and labels, optional packing, and the
deterministic, rank-sharded order of micro-batches (a position in it is what resume restores)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from services.common.chat_template import IGNORE_INDEX, ChatTokenizer
from services.common.errors import InvalidArgument


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


def read_rows(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise InvalidArgument(
                        f"{path.name} line {line_no} is not JSON: {exc}",
                        field="train_files",
                        metadata={"line": str(line_no)},
                    ) from exc
                yield row


def row_messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation a row trains on; a preference row trains on its chosen reply."""
    messages = list(row.get("messages") or [])
    chosen = row.get("chosen")
    if isinstance(chosen, str):
        messages.append({"role": "assistant", "content": chosen})
    return messages


def tokenize(
    rows: Iterable[dict[str, Any]], tokenizer: ChatTokenizer, max_len: int
) -> list[Example]:
    """Encode every row; rows with no trained token after truncation are dropped."""
    examples = []
    for row in rows:
        input_ids, labels = tokenizer.encode(row_messages(row), max_len=max_len)
        # The first label is never trained (causal shift): a row needs a trained token after it.
        if any(label != IGNORE_INDEX for label in labels[1:]):
            examples.append(Example(input_ids, labels))
    return examples


def pack(examples: list[Example], max_len: int) -> list[Example]:
    """Bin-pack examples into sequences of at most max_len tokens, first-fit decreasing.

    Longest first, each into the first sequence with room: rows fill far better than packing in
    order (the order does not matter, ShardedBatches shuffles the rows). Deterministic: equal
    lengths keep their input order. An example is never split (one longer than max_len gets a
    row of its own); the first token of each example after the first in a row gets label
    IGNORE_INDEX so no loss is taken on predicting it from the previous example.
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    free = _FreeSpace(len(examples), max_len)
    alone: list[list[Example]] = []  # longer than max_len: a row each
    rows: list[list[Example]] = []
    for i in order:
        ex = examples[i]
        row = free.take(len(ex.input_ids))
        if row is None:
            alone.append([ex])
        elif row == len(rows):
            rows.append([ex])
        else:
            rows[row].append(ex)
    packed = []
    for row_examples in alone + rows:
        ids: list[int] = []
        labels: list[int] = []
        for ex in row_examples:
            ex_labels = list(ex.labels)
            if ids:
                ex_labels[0] = IGNORE_INDEX
            ids += ex.input_ids
            labels += ex_labels
        packed.append(Example(ids, labels))
    return packed


class _FreeSpace:
    """The free tokens of `count` rows of `capacity`, as a max-tree: the first row with room for
    n tokens is found in O(log rows), so packing a million examples stays fast. Rows not yet
    used are empty, so the first one with room is a used row if any fits, else the next new one.
    """

    def __init__(self, count: int, capacity: int) -> None:
        self.leaves = 1
        while self.leaves < count:
            self.leaves *= 2
        self.tree = [capacity] * (2 * self.leaves)

    def take(self, n: int) -> int | None:
        """Index of the first row with n free tokens, which are then used; None if none has."""
        if self.tree[1] < n:
            return None
        node = 1
        while node < self.leaves:
            node = 2 * node if self.tree[2 * node] >= n else 2 * node + 1
        self.tree[node] -= n
        row = node - self.leaves
        node //= 2
        while node:
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])
            node //= 2
        return row


def fill_ratio(rows: list[Example], max_len: int) -> float:
    """Share of the rows' max_len token slots holding tokens (1.0: no padding at all)."""
    if not rows:
        return 0.0
    return sum(len(ex.input_ids) for ex in rows) / (len(rows) * max_len)


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors: input_ids, attention_mask and labels (IGNORE_INDEX on padding)."""
    width = max(len(ex.input_ids) for ex in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, ex in enumerate(examples):
        n = len(ex.input_ids)
        input_ids[i, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
        labels[i, :n] = torch.tensor(ex.labels, dtype=torch.long)
        mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class ShardedBatches:
    """Micro-batches of one rank, as an endless stream over epochs.

    Each epoch shuffles all examples with a generator seeded by (seed, epoch), pads the order by
    repeating its head to a multiple of world_size (as torch's DistributedSampler does), and
    gives rank r the indices r, r + world_size, ... So every rank has the same number of
    micro-batches per epoch, and micro-batch m of the stream is fully determined by m.
    """

    def __init__(
        self,
        examples: list[Example],
        *,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        pad_id: int,
    ) -> None:
        if not examples:
            raise InvalidArgument(
                "the training data has no example with a trained (assistant) token",
                field="train_files",
            )
        self.examples = examples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.pad_id = pad_id
        self.per_rank = math.ceil(len(examples) / world_size)
        self.batches_per_epoch = math.ceil(self.per_rank / batch_size)
        self._epoch = -1
        self._indices: list[int] = []

    def _epoch_indices(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            g = torch.Generator()
            g.manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(len(self.examples), generator=g).tolist()
            total = self.per_rank * self.world_size
            while len(order) < total:
                order += order[: total - len(order)]
            self._indices = order[self.rank : total : self.world_size]
            self._epoch = epoch
        return self._indices

    def position(self, micro_step: int) -> tuple[int, int]:
        """(epoch, micro-batch within that epoch) of the stream's micro-batch `micro_step`."""
        return divmod(micro_step, self.batches_per_epoch)

    def batch(self, micro_step: int) -> dict[str, torch.Tensor]:
        epoch, index = self.position(micro_step)
        indices = self._epoch_indices(epoch)
        chosen = indices[index * self.batch_size : (index + 1) * self.batch_size]
        return collate([self.examples[i] for i in chosen], self.pad_id)


def eval_batches(
    examples: list[Example], *, batch_size: int, rank: int, world_size: int, pad_id: int
) -> Iterator[tuple[dict[str, torch.Tensor], bool]]:
    """This rank's share of the validation set as (batch, counts).

    Every rank yields the same number of batches (ZeRO-3 forwards are collective); a rank whose
    share is shorter repeats its first example in batches marked counts=False.
    """
    share = examples[rank::world_size]
    n_batches = math.ceil(math.ceil(len(examples) / world_size) / batch_size)
    for b in range(n_batches):
        chunk = share[b * batch_size : (b + 1) * batch_size]
        if chunk:
            yield collate(chunk, pad_id), True
        else:
            yield collate([examples[0]], pad_id), False
