"""The ONNX Runtime GenAI backend: a model directory in its layout (genai_config.json, the ONNX
decoder with KV cache, the tokenizer files).

onnxruntime-genai runs the model and keeps the KV cache; the next token is chosen by our own
TokenSampler from the logits it exposes, so sampling parameters, seeds and stop handling behave
exactly as on the PyTorch backend, and greedy output equals PyTorch's for an fp32 export.
Tokenizing and chat rendering use ChatTokenizer on the exported tokenizer files, the same code the
training service used.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.common.chat_template import ChatTokenizer
from services.common.cpus import available_cpus
from services.common.errors import InvalidArgument
from services.inference.engine import (
    GENAI_CONFIG,
    AdapterFiles,
    Backend,
    eos_token_ids,
    read_context_length,
)
from services.inference.generation import Sampling, read_generation_defaults
from services.inference.sampler import TokenSampler
from services.inference.settings import InferenceSettings


class OnnxEngine:
    """An onnxruntime_genai.Model; each request gets its own Generator (its own KV cache)."""

    backend = Backend.ONNX_RUNTIME

    def __init__(
        self, model_dir: Path, attributes: dict[str, Any], settings: InferenceSettings
    ) -> None:
        import onnxruntime_genai as og

        self._og = og
        config = json.loads((model_dir / GENAI_CONFIG).read_text(encoding="utf-8"))
        model_config = config.get("model", {})
        og_config = og.Config(str(model_dir))
        threads = settings.onnx_threads or available_cpus()
        # Only the decoder's thread count changes; the rest of genai_config.json stays as stored.
        options = {"intra_op_num_threads": threads}
        og_config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(og_config)
        self.tokenizer = ChatTokenizer.from_dir(model_dir)
        self.generation_defaults = read_generation_defaults(model_dir)
        self.eos_token_ids = eos_token_ids(model_config.get("eos_token_id"), self.tokenizer)
        self.context_length = int(
            model_config.get("context_length") or read_context_length(attributes, 2048)
        )
        self._lock = threading.Lock()

    def load_adapter(self, adapter: AdapterFiles) -> None:
        raise InvalidArgument(
            "ONNX models are served with their adapter merged; serve the adapter on its base "
            "model with the PYTORCH backend",
            field="adapter",
        )

    def loaded_adapters(self) -> list[str]:
        return []

    def start(
        self,
        prompt_ids: list[int],
        sampling: Sampling,
        max_new_tokens: int,
        adapter: AdapterFiles | None,
    ) -> OnnxSession:
        if adapter is not None:
            self.load_adapter(adapter)
        params = self._og.GeneratorParams(self.model)
        # The generator preallocates its KV cache for max_length tokens; sampling is ours.
        params.set_search_options(
            max_length=min(self.context_length, len(prompt_ids) + max_new_tokens),
            do_sample=False,
        )
        with self._lock:
            generator = self._og.Generator(self.model, params)
        return OnnxSession(generator, prompt_ids, TokenSampler(sampling, prompt_ids))

    def close(self) -> None:
        self.model = None


class OnnxSession:
    def __init__(self, generator: Any, prompt_ids: list[int], sampler: TokenSampler) -> None:
        self._generator = generator
        self._pending = list(prompt_ids)
        self._sampler = sampler

    def next_token(self) -> int:
        self._generator.append_tokens(np.asarray([self._pending], dtype=np.int32))
        logits = self._generator.get_logits()  # (batch, positions, vocab)
        token = self._sampler.choose(torch.from_numpy(np.ascontiguousarray(logits[0, -1])))
        self._pending = [token]
        return token

    def close(self) -> None:
        self._generator = None
