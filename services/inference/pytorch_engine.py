"""The PyTorch + PEFT backend: one base model (base or merged weights) with any number of PEFT
adapters, one of them (or none) active per decoding step.

Adapters are injected into the base model's layers by peft and switched with `set_adapter`, so
requests for different adapters share the base weights and take turns step by step. Switching
costs one pass over the LoRA layers (well under a millisecond on small models); the scheduler
groups a round's steps by adapter so a round switches at most once per adapter.
"""

from __future__ import annotations

import inspect
import itertools
import threading
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import structlog
import torch

from services.common.chat_template import ChatTokenizer
from services.common.errors import FailedPrecondition, InvalidArgument
from services.inference.engine import (
    AdapterFiles,
    Backend,
    eos_token_ids,
    read_context_length,
)
from services.inference.generation import Sampling, read_generation_defaults
from services.inference.sampler import TokenSampler
from services.inference.settings import InferenceSettings

log = structlog.get_logger("inference.pytorch")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_CONTEXT = 2048


class _Unknown:
    """Which adapter the layers have on is not known (after a load or an eviction)."""


UNKNOWN = _Unknown()


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def resolve_dtype(setting: str, device: torch.device, stored: str) -> torch.dtype:
    """float32 on CPU (half precision matmuls are slow there and change greedy output), the
    stored half precision on a GPU."""
    if setting != "auto":
        if setting not in DTYPES:
            raise InvalidArgument(
                f"dtype must be auto or one of {sorted(DTYPES)}, got {setting!r}",
                field="TUNEFORGE_INFERENCE_DTYPE",
                reason="INVALID_CONFIGURATION",
            )
        return DTYPES[setting]
    if device.type != "cpu" and stored in ("bfloat16", "float16"):
        return DTYPES[stored]
    return torch.float32


class PyTorchEngine:
    """A transformers causal LM with its PEFT adapters, least recently used evicted first."""

    backend = Backend.PYTORCH

    def __init__(
        self, model_dir: Path, attributes: dict[str, Any], settings: InferenceSettings
    ) -> None:
        from transformers import AutoModelForCausalLM

        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)  # process-wide
        self.device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, self.device, str(attributes.get("dtype", "")))
        model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        self.model: Any = model.to(self.device).eval()
        self.tokenizer = ChatTokenizer.from_dir(model_dir)
        self.generation_defaults = read_generation_defaults(model_dir)
        configured = model.generation_config.eos_token_id
        if configured is None:
            configured = model.config.eos_token_id
        self.eos_token_ids = eos_token_ids(configured, self.tokenizer)
        positions = int(getattr(model.config, "max_position_embeddings", 0) or DEFAULT_CONTEXT)
        self.context_length = read_context_length(attributes, positions)
        self.max_adapters = settings.max_adapters_per_model
        # transformers 5.x renamed the forward argument `past_key_values` to `cache`.
        parameters = inspect.signature(self.model.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self._lock = threading.RLock()
        self._peft: Any = None
        self._adapters: OrderedDict[str, str] = OrderedDict()  # catalog name -> peft name
        self._order: tuple[str, ...] = ()  # the same names, for readers without the lock
        self._in_use: Counter[str] = Counter()
        self._applied: str | _Unknown | None = None
        self._serial = itertools.count()

    # --- adapters --------------------------------------------------------------------------

    def load_adapter(self, adapter: AdapterFiles) -> None:
        with self._lock:
            self._ensure_loaded(adapter)

    def loaded_adapters(self) -> list[str]:
        # A snapshot, not the lock: the worker holds the lock for a whole forward pass (a long
        # prefill can take seconds), and this is read from the event loop.
        return list(reversed(self._order))

    def _touch(self, name: str) -> None:
        """Marks `name` most recently used (caller holds the lock)."""
        if next(reversed(self._adapters), None) != name:
            self._adapters.move_to_end(name)
            self._order = tuple(self._adapters)

    def _ensure_loaded(self, adapter: AdapterFiles) -> str:
        if adapter.name in self._adapters:
            self._touch(adapter.name)
            return self._adapters[adapter.name]
        from peft import PeftConfig, PeftModel

        peft_name = f"adapter{next(self._serial)}"
        try:
            config = PeftConfig.from_pretrained(str(adapter.directory))
        except Exception as exc:
            raise FailedPrecondition(
                f"{adapter.name} has no readable adapter_config.json: {exc}",
                metadata={"adapter": adapter.name},
            ) from exc
        if config.is_prompt_learning:
            raise InvalidArgument(
                f"{adapter.name} is a prompt-learning adapter; only adapters that modify the "
                "model's layers (LoRA, DoRA, IA3, ...) can be served",
                field="adapter",
            )
        try:
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(
                    self.model, str(adapter.directory), adapter_name=peft_name
                )
            else:
                self._peft.load_adapter(str(adapter.directory), adapter_name=peft_name)
        except Exception as exc:
            raise FailedPrecondition(
                f"{adapter.name} could not be loaded onto this model: {exc}",
                reason="ADAPTER_BASE_MISMATCH",
                metadata={"adapter": adapter.name},
            ) from exc
        self._peft.eval()
        self._adapters[adapter.name] = peft_name
        self._order = tuple(self._adapters)
        self._applied = UNKNOWN
        log.info("adapter_loaded", adapter=adapter.name, loaded=len(self._adapters))
        self._evict(keep=adapter.name)
        return peft_name

    def _evict(self, keep: str) -> None:
        """Drops least recently used adapters that no running request holds. If every loaded
        adapter is in use the limit is exceeded until requests end, rather than stalling them."""
        for name in list(self._adapters):
            if len(self._adapters) <= self.max_adapters:
                return
            if name == keep or self._in_use[name]:
                continue
            self._peft.delete_adapter(self._adapters.pop(name))
            self._order = tuple(self._adapters)
            self._applied = UNKNOWN
            log.info("adapter_evicted", adapter=name)

    def _apply(self, adapter: str | None) -> None:
        """Puts the layers in the state of `adapter` (None: the base model alone)."""
        if self._applied == adapter or (adapter is None and self._peft is None):
            return
        lora = self._peft.base_model
        if adapter is None:
            lora.disable_adapter_layers()
        else:
            if not isinstance(self._applied, str):
                lora.enable_adapter_layers()
            lora.set_adapter(self._adapters[adapter], inference_mode=True)
        self._applied = adapter

    # --- decoding --------------------------------------------------------------------------

    def start(
        self,
        prompt_ids: list[int],
        sampling: Sampling,
        max_new_tokens: int,
        adapter: AdapterFiles | None,
    ) -> TorchSession:
        with self._lock:
            if adapter is not None:
                self._ensure_loaded(adapter)
                self._in_use[adapter.name] += 1
        return TorchSession(self, prompt_ids, TokenSampler(sampling, prompt_ids), adapter)

    def _forward(self, adapter: str | None, input_ids: list[int], cache: Any) -> tuple[Any, Any]:
        """One forward pass of `input_ids` after `cache`: (last position's logits, new cache)."""
        with self._lock, torch.inference_mode():
            if adapter is not None:
                self._touch(adapter)
            self._apply(adapter)
            kwargs: dict[str, Any] = {"use_cache": True, "logits_to_keep": 1}
            if cache is not None:
                kwargs[self._cache_argument] = cache
            ids = torch.tensor([input_ids], dtype=torch.long, device=self.device)
            out = self.model(input_ids=ids, **kwargs)
            new_cache = getattr(out, "cache", None)
            if new_cache is None:
                new_cache = out.past_key_values
            return out.logits[0, -1], new_cache

    def _release(self, adapter: str | None) -> None:
        with self._lock:
            if adapter is not None:
                self._in_use[adapter] -= 1

    def close(self) -> None:
        with self._lock:
            self._peft = None
            self._adapters.clear()
            self._order = ()
            self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class TorchSession:
    """One request on a PyTorchEngine: its KV cache, sampler and adapter."""

    def __init__(
        self,
        engine: PyTorchEngine,
        prompt_ids: list[int],
        sampler: TokenSampler,
        adapter: AdapterFiles | None,
    ) -> None:
        self._engine = engine
        self._pending = list(prompt_ids)
        self._sampler = sampler
        self._adapter = adapter.name if adapter is not None else None
        self._cache: Any = None
        self._closed = False

    def next_token(self) -> int:
        logits, self._cache = self._engine._forward(self._adapter, self._pending, self._cache)
        token = self._sampler.choose(logits)
        self._pending = [token]
        return token

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._cache = None
            self._engine._release(self._adapter)
