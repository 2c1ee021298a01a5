"""What a generation request asks for and what it produces, independent of gRPC and of the engine.

`GenerationParams` is the request as the caller wrote it (unset values are None), validated here
so both backends refuse the same things. `resolve_sampling` fills the unset values from the
model's own generation_config.json, the way `model.generate()` would.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument

MAX_STOP_SEQUENCES = 16
MAX_STOP_LENGTH = 256


class FinishReason(StrEnum):
    """Why a generation ended (the names of tuneforge.inference.v1.FinishReason)."""

    STOP = "STOP"
    LENGTH = "LENGTH"
    STOP_SEQUENCE = "STOP_SEQUENCE"


@dataclass(frozen=True)
class GenerationParams:
    """Sampling and stopping parameters as requested; None means "the model's default"."""

    max_tokens: int = 0
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    repetition_penalty: float | None = None

    def validated(self) -> GenerationParams:
        """Raises InvalidArgument naming the first impossible value."""
        if self.max_tokens < 0:
            raise _invalid("max_tokens must not be negative", "max_tokens")
        if self.temperature is not None and not self.temperature >= 0:
            raise _invalid("temperature must be 0 (greedy) or positive", "temperature")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise _invalid("top_p must be in (0, 1]", "top_p")
        if self.top_k is not None and self.top_k < 0:
            raise _invalid("top_k must not be negative (0 turns it off)", "top_k")
        if self.repetition_penalty is not None and not self.repetition_penalty > 0:
            raise _invalid(
                "repetition_penalty must be positive (1 turns it off)", "repetition_penalty"
            )
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise _invalid(f"stop: at most {MAX_STOP_SEQUENCES} stop sequences are allowed", "stop")
        for i, text in enumerate(self.stop):
            if not text or len(text) > MAX_STOP_LENGTH:
                raise _invalid(
                    f"stop[{i}]: a stop sequence must have 1 to {MAX_STOP_LENGTH} characters",
                    f"stop[{i}]",
                )
        return self


def _invalid(message: str, name: str) -> InvalidArgument:
    # The message starts with the field's full name, so a one-line error names it.
    return InvalidArgument(f"parameters.{message}", field=f"parameters.{name}")


@dataclass(frozen=True)
class Sampling:
    """Fully resolved decoding choices of one request."""

    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    seed: int

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def read_generation_defaults(model_dir: Path) -> dict[str, Any]:
    """The sampling defaults of a model's generation_config.json ({} when it has none)."""
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def resolve_sampling(params: GenerationParams, defaults: dict[str, Any]) -> Sampling:
    """Unset parameters take the model's defaults: sampling only if it sets `do_sample`, no top-k
    or top-p cut unless it sets one, a random seed unless the request gives one."""
    if params.temperature is not None:
        temperature = params.temperature
    elif defaults.get("do_sample"):
        temperature = float(defaults.get("temperature") or 1.0)
    else:
        temperature = 0.0
    top_p = params.top_p if params.top_p is not None else float(defaults.get("top_p") or 1.0)
    top_k = params.top_k if params.top_k is not None else int(defaults.get("top_k") or 0)
    penalty = params.repetition_penalty
    if penalty is None:
        penalty = float(defaults.get("repetition_penalty") or 1.0)
    seed = params.seed if params.seed is not None else secrets.randbits(63)
    return Sampling(
        temperature=temperature,
        top_p=min(max(top_p, 1e-6), 1.0),
        top_k=max(top_k, 0),
        repetition_penalty=penalty,
        seed=seed,
    )


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TextDelta:
    """Text added since the previous event."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The last event of a generation: the text not yet sent, why it ended, what it cost."""

    text: str
    reason: FinishReason
    usage: Usage
    time_to_first_token_s: float
    tokens_per_second: float


@dataclass(frozen=True)
class Failed:
    """The generation could not go on (the model was unloaded, the engine raised)."""

    error: BaseException


GenerationEvent = TextDelta | Finished | Failed
