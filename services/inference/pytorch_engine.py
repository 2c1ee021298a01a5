"""The PyTorch + PEFT backend: one base model (base or merged weights) with any number of PEFT
adapters, one of them (or none) active per decoding step.

Adapters are injected into the base model's layers by peft, so requests for different adapters
share the base weights and take turns step by step; the scheduler groups a round's steps by
adapter so a round switches at most once per adapter. With several adapters in use, it switches
once per token, so a switch must be cheap: peft's `set_adapter` walks every module of the model
and resets `requires_grad` on every adapter's weights of every LoRA layer, ~37 ms on SmolLM2
with 8 adapters (a decoding step takes ~45 ms). Under `torch.inference_mode` only the active
adapter matters, so after peft has set an adapter once (which also freezes every adapter), a
switch sets the active adapter on a cached list of the tuner layers: ~0.4 ms for SmolLM2's 210.
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
        # The tuner layers of self._peft, for switching without peft's walk (see _apply); None
        # when the adapters have modules peft switches separately (modules_to_save).
        self._tuner_layers: list[Any] | None = None
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
        # Once per load, after the evictions, which only ever follow a load.
        self._tuner_layers = _switchable_layers(self._peft)
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
        if isinstance(self._applied, str | None) and self._tuner_layers is not None:
            # peft has set an adapter since the last load or eviction, so every adapter is
            # frozen and in eval mode: only the active one and the on/off switch change.
            disabled = adapter is None
            active = [self._adapters[adapter]] if adapter is not None else None
            for layer in self._tuner_layers:
                layer._disable_adapters = disabled
                if active is not None:
                    layer._active_adapter = active
            if active is not None:
                lora.active_adapter = active[0]
            self._applied = adapter
            return
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


def _switchable_layers(peft_model: Any) -> list[Any] | None:
    """The tuner layers whose active adapter `_apply` sets directly, or None when peft must
    switch (auxiliary modules such as modules_to_save keep their own copies per adapter, or a
    layer is merged or lacks the attributes this relies on)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    layers = []
    for module in peft_model.modules():
        if isinstance(module, AuxiliaryTrainingWrapper):
            return None
        if isinstance(module, BaseTunerLayer):
            if module.merged or not hasattr(module, "_active_adapter"):
                return None
            layers.append(module)
    return layers


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
