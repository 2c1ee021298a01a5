"""What the scheduler needs from a backend: an Engine holds one loaded model (and its adapters),
a DecodeSession is one request's decoding state on it (KV cache, sampler).

Engines are driven by one worker thread per model (services/inference/scheduler.py); the only
other thread that touches one is a LoadModel call preloading adapters, which takes the engine's
lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from services.common.chat_template import ChatTokenizer
from services.inference.generation import Sampling

# The file that marks a model directory in the ONNX Runtime GenAI layout.
GENAI_CONFIG = "genai_config.json"


class Backend(StrEnum):
    """The names of tuneforge.inference.v1.Backend."""

    PYTORCH = "PYTORCH"
    ONNX_RUNTIME = "ONNX_RUNTIME"


@dataclass(frozen=True)
class AdapterFiles:
    """A catalog adapter that was checked against its base and downloaded."""

    name: str
    directory: Path
    manifest_sha256: str


class DecodeSession(Protocol):
    def next_token(self) -> int:
        """Computes the next token (the first call also reads the prompt)."""
        ...

    def close(self) -> None:
        """Frees the KV cache and the session's hold on its adapter."""
        ...


class Engine(Protocol):
    backend: Backend
    tokenizer: ChatTokenizer
    eos_token_ids: frozenset[int]
    context_length: int
    generation_defaults: dict[str, Any]

    def start(
        self,
        prompt_ids: list[int],
        sampling: Sampling,
        max_new_tokens: int,
        adapter: AdapterFiles | None,
    ) -> DecodeSession: ...

    def load_adapter(self, adapter: AdapterFiles) -> None: ...

    def loaded_adapters(self) -> list[str]:
        """Catalog names of the loaded adapters, most recently used first."""
        ...

    def close(self) -> None: ...


def eos_token_ids(configured: Any, tokenizer: ChatTokenizer) -> frozenset[int]:
    """The ids that end a reply: the model's configured eos id(s) and the tokenizer's eos.

    Chat models often list several (e.g. <|eot_id|> and <|end_of_text|>); an id outside the
    vocabulary is ignored.
    """
    ids: set[int] = set()
    values: Iterable[Any] = configured if isinstance(configured, list | tuple) else [configured]
    for value in values:
        if isinstance(value, int) and 0 <= value < tokenizer.vocab_size:
            ids.add(value)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


def encode(tokenizer: ChatTokenizer, text: str, add_special_tokens: bool) -> list[int]:
    """Token ids of a prompt. Raw prompts get the tokenizer's special tokens (BOS), as
    `tokenizer(prompt)` does; rendered chats do not, as `apply_chat_template` does not."""
    return list(tokenizer.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)


def decoder_for(tokenizer: ChatTokenizer) -> Any:
    """A decode function for TextAssembler; special tokens are not part of the reply's text."""

    def decode(ids: Sequence[int]) -> str:
        return str(tokenizer.tokenizer.decode(list(ids), skip_special_tokens=True))

    return decode


def read_context_length(attributes: dict[str, Any], fallback: int) -> int:
    value = attributes.get("context_length")
    try:
        length = int(value) if value is not None else 0
    except (TypeError, ValueError):
        length = 0
    return length if length > 0 else fallback
