"""Choosing the next token from logits, shared by both backends so that a request decodes the same
way whichever engine computes its logits.

The logits processors are transformers' own (repetition penalty over prompt and reply, then
temperature, top-k, top-p), so the semantics are those of `model.generate()`. Each request has its
own seeded torch.Generator: its sampled text does not depend on what it is interleaved with.
"""

from __future__ import annotations

from typing import cast

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from services.inference.generation import Sampling


class TokenSampler:
    """Picks one token per step for one request."""

    def __init__(self, sampling: Sampling, prompt_ids: list[int]) -> None:
        self.sampling = sampling
        self._ids = list(prompt_ids)
        self._processors = LogitsProcessorList()
        self._penalized = sampling.repetition_penalty != 1.0
        if self._penalized:
            self._processors.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
        if not sampling.greedy:
            if sampling.temperature != 1.0:
                self._processors.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_k > 0:
                self._processors.append(TopKLogitsWarper(sampling.top_k))
            if sampling.top_p < 1.0:
                self._processors.append(TopPLogitsWarper(sampling.top_p))
        self._generator = torch.Generator().manual_seed(sampling.seed)

    def choose(self, logits: torch.Tensor) -> int:
        """`logits`: the last position's scores, shape (vocab,) or (1, vocab)."""
        scores = logits.reshape(1, -1).float().cpu()
        if self._processors:
            # Only the repetition penalty reads the ids; the warpers ignore them.
            ids = torch.tensor([self._ids if self._penalized else []], dtype=torch.long)
            scores = self._processors(cast(torch.LongTensor, ids), scores)
        if self.sampling.greedy:
            token = int(torch.argmax(scores, dim=-1).item())
        else:
            probs = torch.softmax(scores, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=self._generator).item())
        self._ids.append(token)
        return token
