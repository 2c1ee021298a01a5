"""The training loss with the LM head computed only where a token is trained.

A causal LM computes logits for every position, but the loss reads only the positions whose next
token is trained (assistant tokens, not the prompt or padding). The LM head is the model's widest
matmul (hidden x vocabulary: 576 x 49152 for SmolLM2, about a fifth of its forward FLOPs) and
its fp32 logits the largest tensor of a step (4 x 256 x 49152 floats = 192 MiB), read again by
the softmax and the backward. On chat data about 40% of a padded batch's positions are trained,
so selecting them before the head skips most of that work; the loss is the same mean
cross-entropy over the same tokens.

The selection is a forward pre-hook on the output embedding module, so the model's own forward
(and DeepSpeed's ZeRO-3 hooks around every module) runs unchanged. A model whose head does not
receive (batch, positions, hidden) states gets its logits computed as usual and the loss taken
from them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from services.common.chat_template import IGNORE_INDEX


class TrainedTokenLoss:
    """Mean next-token cross-entropy over the trained tokens of a batch."""

    def __init__(self, model: torch.nn.Module) -> None:
        get_head = getattr(model, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        self._rows: torch.Tensor | None = None  # (batch, positions) bool: where logits are needed
        self._selected = False
        self._handle = None
        if isinstance(head, torch.nn.Module):
            self._handle = head.register_forward_pre_hook(self._select)

    def _select(self, _module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        rows = self._rows
        if rows is None or not args or not isinstance(args[0], torch.Tensor):
            return None
        hidden = args[0]
        if hidden.dim() != 3 or hidden.shape[:2] != rows.shape:
            return None
        self._selected = True
        return (hidden[rows], *args[1:])

    def __call__(self, engine: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["labels"]
        if self._handle is None:
            return engine(**batch).loss
        # Position t predicts token t + 1: its logits are needed when label t + 1 is trained.
        trained = labels[:, 1:] != IGNORE_INDEX
        rows = torch.zeros_like(labels, dtype=torch.bool)
        rows[:, :-1] = trained
        self._rows, self._selected = rows, False
        try:
            out = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        finally:
            self._rows = None
        logits = out.logits
        if not self._selected:  # the head saw every position: the usual shifted loss
            logits = logits[:, :-1].reshape(-1, logits.size(-1))
            return F.cross_entropy(
                logits.float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
            )
        return F.cross_entropy(logits.float(), labels[:, 1:][trained])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
