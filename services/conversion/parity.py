"""The parity gate: compare an exported ONNX Runtime GenAI model with the PyTorch model it came
from, and say whether it is close enough to publish.

Three measurements, all on token ids from the project's chat-template renderer (ChatTokenizer), so
both sides see identical input:
- greedy agreement: each golden prompt is rendered with add_generation_prompt and completed
  greedily by transformers' `generate` and by an onnxruntime-genai Generator; a prompt's agreement
  is the length of the common prefix of the two generations over the reference's length (end of
  sequence token included). The report's value is the mean over prompts.
- logit deltas: both models score the same sequences in one forward pass (teacher forcing): the
  evaluation conversations and each prompt followed by the reference's reply. The ONNX side runs
  the exported decoder in a plain onnxruntime session with an empty KV cache, which gives logits
  at every position. A position's delta is the mean |change of log-probability| over the
  vocabulary, weighted by the reference's probabilities (log-probabilities, because a constant
  shift of all logits changes nothing the model says, and int4 exports shift them by whole units;
  weighted, because the unweighted mean is dominated by the noise of tokens that are never
  sampled). The report gives the mean and the max over positions.
- perplexity on the evaluation conversations, over the tokens a fine-tune trains on: the
  assistant replies and their end-of-turn token (a conversation without an assistant reply is
  scored on all its tokens).

Sequences are processed one at a time, so memory stays at the two models plus one sequence's
logits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from services.common.chat_template import IGNORE_INDEX, ChatTokenizer
from services.common.errors import FailedPrecondition, InvalidArgument

__all__ = ["DEFAULT_THRESHOLDS", "THRESHOLD_KEYS", "check_parity", "parity_thresholds"]

THRESHOLD_KEYS = ("min_greedy_agreement", "max_perplexity_increase", "max_mean_logit_delta")

# Per-precision limits (ParityThresholds fields). Measured on SmolLM2-135M-Instruct, 16 chat
# prompts x 32 greedy tokens and 8 evaluation conversations (the slow test), exports as
# services.conversion.export builds them:
#            agreement  perplexity  mean delta  max delta
#   fp32     1.00       +0.0002%    4e-6        2e-5
#   int8     0.62       +0.5%       0.07        0.37
#   int4     0.23       +4.2%       0.53        2.7
#   (the builder's plain int4, without export's options: 0.11, +42%, 0.85)
# fp32 is the same model up to float rounding: a near-tie may still flip a greedy token, so
# agreement has some slack and the delta limit is tight. Greedy agreement of quantized models is
# low on a model this small: after the first near-tie the continuations diverge, although each
# stays fluent (int8 answers every prompt sensibly). Perplexity and the logit delta are the stable
# measures, so their limits are ~3-6x and ~2x what healthy exports show, and agreement is only
# required to stay clear of a model that no longer follows its reference at all. A damaged
# export (noise on one weight matrix) or activation quantization fails them by a wide margin.
DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {
        "min_greedy_agreement": 0.95,
        "max_perplexity_increase": 0.01,
        "max_mean_logit_delta": 0.01,
    },
    "int8": {
        "min_greedy_agreement": 0.4,
        "max_perplexity_increase": 0.03,
        "max_mean_logit_delta": 0.2,
    },
    "int4": {
        "min_greedy_agreement": 0.1,
        "max_perplexity_increase": 0.15,
        "max_mean_logit_delta": 1.0,
    },
}
# Sequences longer than this (or than the model's context) are cut for scoring.
MAX_SEQUENCE_TOKENS = 1024


def parity_thresholds(
    precision: str, overrides: Mapping[str, float | None] | None = None
) -> dict[str, float]:
    """The precision's default thresholds, with the overrides that are set (not None)."""
    if precision not in DEFAULT_THRESHOLDS:
        raise InvalidArgument(
            f"precision {precision!r} is not one of {', '.join(DEFAULT_THRESHOLDS)}",
            field="precision",
        )
    thresholds = dict(DEFAULT_THRESHOLDS[precision])
    for key, value in (overrides or {}).items():
        if key not in THRESHOLD_KEYS:
            raise InvalidArgument(
                f"unknown parity threshold {key!r}", field=f"parity.thresholds.{key}"
            )
        if value is not None:
            thresholds[key] = float(value)
    return thresholds


def _genai_config(candidate_dir: Path) -> dict[str, Any]:
    path = candidate_dir / "genai_config.json"
    if not path.is_file():
        raise FailedPrecondition(f"no genai_config.json in {candidate_dir}: not an ONNX export")
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return config


def _agreement(reference: list[int], candidate: list[int]) -> float:
    """Fraction of the reference's tokens the candidate matches before the first difference."""
    if not reference:
        return 1.0 if not candidate else 0.0
    same = 0
    for a, b in zip(reference, candidate, strict=False):
        if a != b:
            break
        same += 1
    return same / len(reference)


class _Reference:
    """The PyTorch model: greedy generation and logits."""

    def __init__(self, directory: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch.float32, local_files_only=True
        ).eval()
        own = self.model.generation_config
        eos = own.eos_token_id if own.eos_token_id is not None else self.model.config.eos_token_id
        pad = own.pad_token_id
        if pad is None:
            pad = eos[0] if isinstance(eos, list) else eos
        # Plain greedy search: none of the sampling or penalty settings the model may ship with.
        self.generation_config = GenerationConfig(
            do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=pad
        )

    def generate(self, ids: list[int], max_new_tokens: int) -> list[int]:
        torch = self.torch
        self.generation_config.max_new_tokens = max_new_tokens
        with torch.inference_mode():
            out = self.model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                generation_config=self.generation_config,
            )
        return [int(t) for t in out[0, len(ids) :].tolist()]

    def logits(self, ids: list[int]) -> Any:
        torch = self.torch
        with torch.inference_mode():
            return self.model(torch.tensor([ids])).logits[0].float()


class _GenaiCandidate:
    """The exported model under onnxruntime-genai, as served: greedy generation."""

    def __init__(self, directory: Path) -> None:
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(str(directory))

    def generate(self, ids: list[int], max_new_tokens: int) -> list[int]:
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(
            do_sample=False,
            num_beams=1,
            repetition_penalty=1.0,
            min_length=0,
            max_length=len(ids) + max_new_tokens,
        )
        generator = og.Generator(self.model, params)
        generator.append_tokens(ids)
        tokens: list[int] = []
        # get_next_tokens includes the end-of-sequence token (get_sequence leaves it out), as
        # transformers' output does.
        while not generator.is_done() and len(tokens) < max_new_tokens:
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        del generator
        return tokens


class _OnnxCandidate:
    """The exported decoder in a plain onnxruntime session: logits at every position."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        import numpy as np
        import onnxruntime as ort

        self.np = np
        decoder = config["model"]["decoder"]
        self.session = ort.InferenceSession(
            str(directory / decoder["filename"]), providers=["CPUExecutionProvider"]
        )
        self.logits_name = decoder.get("outputs", {}).get("logits", "logits")
        self.kv_heads = int(decoder.get("num_key_value_heads") or decoder["num_attention_heads"])
        self.head_size = int(decoder["head_size"])
        self.inputs = self.session.get_inputs()

    def logits(self, ids: list[int]) -> Any:
        np = self.np
        n = len(ids)
        feeds: dict[str, Any] = {}
        for spec in self.inputs:
            name = spec.name
            if name == "input_ids":
                feeds[name] = np.array([ids], dtype=np.int64)
            elif name == "attention_mask":
                feeds[name] = np.ones((1, n), dtype=np.int64)
            elif name == "position_ids":
                feeds[name] = np.arange(n, dtype=np.int64)[None, :]
            elif name.startswith("past_key_values"):
                # Empty KV cache: the whole sequence is the prompt.
                dtype = np.float16 if "float16" in spec.type else np.float32
                heads = spec.shape[1] if isinstance(spec.shape[1], int) else self.kv_heads
                size = spec.shape[3] if isinstance(spec.shape[3], int) else self.head_size
                feeds[name] = np.zeros((1, heads, 0, size), dtype=dtype)
            else:
                raise FailedPrecondition(
                    f"the exported model has an input this check cannot feed: {name}"
                )
        (logits,) = self.session.run([self.logits_name], feeds)
        return logits[0].astype(np.float32)


class _Tally:
    """Running logit deltas and negative log-likelihoods of both models."""

    def __init__(self) -> None:
        self.max_delta = 0.0
        self.delta_sum = 0.0
        self.delta_count = 0
        self.ref_nll = 0.0
        self.cand_nll = 0.0
        self.scored = 0

    def add(self, ref: Any, cand: Any, ids: list[int], scored: list[bool] | None) -> None:
        import torch

        cand = torch.from_numpy(cand)
        vocab = min(ref.shape[-1], cand.shape[-1])
        ref_logp = torch.log_softmax(ref[:, :vocab].double(), dim=-1)
        cand_logp = torch.log_softmax(cand[:, :vocab].double(), dim=-1)
        # Per position: |change of log-probability|, weighted by the reference's probability.
        per_position = ((ref_logp - cand_logp).abs() * ref_logp.exp()).sum(dim=-1)
        worst = float(per_position.max())
        if not worst <= self.max_delta:  # also keeps a NaN (max() would drop it)
            self.max_delta = worst
        self.delta_sum += float(per_position.sum())
        self.delta_count += per_position.numel()
        if scored is None or len(ids) < 2:
            return
        mask = torch.tensor(scored[1:])
        if not bool(mask.any()):
            return
        targets = torch.tensor(ids[1:])[:, None]
        self.ref_nll -= float(ref_logp[:-1].gather(1, targets)[:, 0][mask].sum())
        self.cand_nll -= float(cand_logp[:-1].gather(1, targets)[:, 0][mask].sum())
        self.scored += int(mask.sum())

    def perplexities(self) -> tuple[float, float]:
        if not self.scored:
            return 0.0, 0.0
        return _exp(self.ref_nll / self.scored), _exp(self.cand_nll / self.scored)


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf  # a broken model's perplexity overflows


def _prompt_text(messages: list[dict[str, Any]]) -> str:
    content = messages[-1].get("content") if messages else None
    return content if isinstance(content, str) else json.dumps(messages, ensure_ascii=False)


def check_parity(
    reference_dir: Path,
    candidate_dir: Path,
    prompts: list[list[dict[str, Any]]],
    eval_texts: list[list[dict[str, Any]]],
    max_new_tokens: int,
    thresholds: Mapping[str, float | None],
    *,
    max_sequence_tokens: int = MAX_SEQUENCE_TOKENS,
    on_progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Compare the ONNX export in `candidate_dir` with the HF model in `reference_dir`.

    `prompts` are conversations to complete, `eval_texts` full conversations for perplexity
    (without any, both perplexities are 0 and their limit is not checked);
    `thresholds` holds ParityThresholds fields (see `parity_thresholds`); one that is missing or
    None is not checked. Returns a dict with exactly the fields of ParityReport (`prompts` as
    PromptComparison dicts, `forced` False). Raises InvalidArgument for no prompts or a bad
    max_new_tokens, ChatTemplateError for a conversation the template rejects.
    """
    reference_dir, candidate_dir = Path(reference_dir), Path(candidate_dir)
    if not prompts:
        raise InvalidArgument("the parity check needs at least one prompt", field="parity")
    if max_new_tokens < 1:
        raise InvalidArgument(
            f"max_new_tokens must be positive, got {max_new_tokens}",
            field="parity.max_new_tokens",
        )
    limits = {k: float(v) for k, v in thresholds.items() if k in THRESHOLD_KEYS and v is not None}
    config = _genai_config(candidate_dir)
    context = int(config.get("model", {}).get("context_length") or max_sequence_tokens)
    max_tokens = max(2, min(max_sequence_tokens, context))

    chat = ChatTokenizer.from_dir(reference_dir)
    reference = _Reference(reference_dir)
    steps = len(prompts) * 2 + len(eval_texts)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done / steps)

    # 1. Greedy generation, one prompt at a time, with the model as onnxruntime-genai serves it.
    comparisons: list[dict[str, Any]] = []
    sequences: list[list[int]] = []
    generator = _GenaiCandidate(candidate_dir)
    try:
        for messages in prompts:
            text = chat.render_prompt(messages)
            ids = chat.tokenizer.encode(text, add_special_tokens=False).ids
            budget = min(max_new_tokens, max(1, context - 1))
            ids = ids[-max(1, context - budget) :]  # keep the end of an over-long prompt
            ref_tokens = reference.generate(ids, budget)
            cand_tokens = generator.generate(ids, budget)
            comparisons.append(
                {
                    "prompt": _prompt_text(messages),
                    "reference_text": chat.tokenizer.decode(ref_tokens, skip_special_tokens=True),
                    "candidate_text": chat.tokenizer.decode(cand_tokens, skip_special_tokens=True),
                    "agreement": _agreement(ref_tokens, cand_tokens),
                }
            )
            sequences.append((ids + ref_tokens)[-max_tokens:])
            step()
    finally:
        del generator

    # 2. Teacher forcing: logit deltas on every sequence, perplexity on the conversations.
    tally = _Tally()
    scorer = _OnnxCandidate(candidate_dir, config)
    for messages in eval_texts:
        ids, labels = chat.encode(messages, max_len=max_tokens)
        if len(ids) < 2:
            step()
            continue
        trained = [label != IGNORE_INDEX for label in labels]
        scored = trained if any(trained[1:]) else [True] * len(ids)
        tally.add(reference.logits(ids), scorer.logits(ids), ids, scored)
        step()
    for ids in sequences:
        tally.add(reference.logits(ids), scorer.logits(ids), ids, None)
        step()
    del scorer, reference

    agreement = sum(c["agreement"] for c in comparisons) / len(comparisons)
    mean_delta = tally.delta_sum / tally.delta_count if tally.delta_count else 0.0
    ref_ppl, cand_ppl = tally.perplexities()
    checks = []
    if "min_greedy_agreement" in limits:
        checks.append(agreement >= limits["min_greedy_agreement"])
    if "max_mean_logit_delta" in limits:
        checks.append(mean_delta <= limits["max_mean_logit_delta"])
    if "max_perplexity_increase" in limits and tally.scored:
        increase = cand_ppl / ref_ppl - 1.0
        checks.append(increase <= limits["max_perplexity_increase"])
    return {
        "prompt_count": len(prompts),
        "greedy_agreement": agreement,
        "max_logit_delta": tally.max_delta,
        "mean_logit_delta": mean_delta,
        "reference_perplexity": ref_ppl,
        "candidate_perplexity": cand_ppl,
        "thresholds": limits,
        "passed": all(checks),
        "forced": False,
        "prompts": comparisons,
    }
