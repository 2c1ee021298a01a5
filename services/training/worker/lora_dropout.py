"""LoRA dropout with cheaper masks on CPU.

PEFT draws a LoRA layer's dropout mask with `nn.Dropout`, which on CPU calls `bernoulli_`: one
generator draw per element. A LoRA step on SmolLM2 draws 210 masks (30 layers x 7 projections),
and on 2 cores that was about a fifth of a bf16 step. This dropout draws one 64-bit word per
four elements and drops an element when its 16 bits fall below the drop threshold; forward and
backward together take about 40% of `nn.Dropout`'s time. The drop probability is rounded to a
multiple of 1/65536 and the kept values are scaled by exactly 1 / (1 - that probability), so
the expectation is unchanged. Masks come from the default generator, which checkpoints save and
resume restores.

On GPU, and for a drop probability too small to round well, it is plain `nn.Dropout`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_LANE = 1 << 16  # the values of one 16-bit lane of a random word
_MIN_P = 1 / 512  # below this the rounding would be off by more than 0.4% of p


class LoraDropout(nn.Dropout):
    """A drop-in `nn.Dropout` (PEFT's own checks see one) with 16-bit masks on CPU."""

    def __init__(self, p: float) -> None:
        super().__init__(p)
        self._threshold = round(p * _LANE)
        self._scale = 1.0 / (1.0 - self._threshold / _LANE)
        self._cheap = p >= _MIN_P

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self._cheap or x.device.type != "cpu":
            return super().forward(x)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
        lanes = words.view(torch.int16)[:n].view(x.shape)  # each uniform on [-32768, 32767]
        dropped = lanes < self._threshold - _LANE // 2
        out: torch.Tensor = _ScaleAndDrop.apply(x, dropped, self._scale)
        return out


class _ScaleAndDrop(torch.autograd.Function):
    """x * scale with the dropped elements zeroed, forward and backward. Written out so that the
    boolean mask is applied with `masked_fill_` (saved as is, 1 byte an element) instead of
    being converted to x's dtype for a multiply on each pass, which cost more than the draw."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dropped: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(dropped)
        ctx.scale = scale
        return x.mul(scale).masked_fill_(dropped, 0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (dropped,) = ctx.saved_tensors
        return grad.mul(ctx.scale).masked_fill_(dropped, 0), None, None


def use_cheap_lora_dropout(model: nn.Module) -> int:
    """Swap every LoRA layer's `nn.Dropout` for a `LoraDropout` of the same p; returns how many."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in list(dropouts.items()):
            if type(dropout) is nn.Dropout and dropout.p > 0:
                replacement = LoraDropout(dropout.p)
                replacement.train(dropout.training)
                dropouts[name] = replacement
                swapped += 1
    return swapped
