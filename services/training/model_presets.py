"""Built-in tiny models for tests and demos: random weights, an offline byte-level tokenizer.

Nothing here touches the network: the tokenizer is built in code (256 byte tokens plus the
ChatML special tokens), the model from a small config with seeded random weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)

from services.common.chat_template import DEFAULT_CHAT_TEMPLATE

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, PAD)

# ChatML with the reply inside {% generation %}, the same template models without one get.
CHATML_TEMPLATE = DEFAULT_CHAT_TEMPLATE

MAX_POSITIONS = 512


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: ids 0-3 are the special tokens, then one token per byte.

    No training and no merges, so it is identical on every machine and every run.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({ch: len(SPECIAL_TOKENS) + i for i, ch in enumerate(alphabet)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=ENDOFTEXT,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=None,
        additional_special_tokens=[IM_START],
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _special_ids(tok: PreTrainedTokenizerFast) -> tuple[int, int, int]:
    """(bos, eos, pad) token ids."""
    ids = tok.convert_tokens_to_ids([ENDOFTEXT, IM_END, PAD])
    assert isinstance(ids, list)
    return ids[0], ids[1], ids[2]


def _tiny_dims(tok: PreTrainedTokenizerFast) -> dict[str, Any]:
    """What both tiny presets share: a 2-layer, 64-wide model over the preset tokenizer."""
    bos, eos, pad = _special_ids(tok)
    return {
        "vocab_size": len(tok),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": MAX_POSITIONS,
        "tie_word_embeddings": False,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
    }


def _tiny_llama(tok: PreTrainedTokenizerFast) -> PretrainedConfig:
    return LlamaConfig(**_tiny_dims(tok))


def _tiny_phi3(tok: PreTrainedTokenizerFast) -> PretrainedConfig:
    # original == max keeps the ONNX builder off its LongRoPE path (see PLATFORM.md).
    return Phi3Config(**_tiny_dims(tok), original_max_position_embeddings=MAX_POSITIONS)


PRESET_CONFIGS: dict[str, Callable[[PreTrainedTokenizerFast], PretrainedConfig]] = {
    "tiny-llama": _tiny_llama,
    "tiny-phi3": _tiny_phi3,
}
PRESETS: tuple[str, ...] = tuple(PRESET_CONFIGS)


def build_preset(name: str, out_dir: Path, seed: int = 0) -> Path:
    """Write preset `name` as a Hugging Face directory (safetensors) into `out_dir`."""
    if name not in PRESET_CONFIGS:
        raise KeyError(name)
    tok = build_tokenizer()
    config = PRESET_CONFIGS[name](tok)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir
