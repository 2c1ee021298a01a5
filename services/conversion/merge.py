"""Merge a PEFT adapter (LoRA, DoRA, or QLoRA's LoRA) into its base model and write the result as
a plain Hugging Face directory: safetensors weights, config, generation config, tokenizer and chat
template. Also normalizes a model that needs no merge (any dtype or weight layout -> safetensors).

Core logic: local directories only, no object store and no gRPC. It runs inside the conversion
worker process; the weights are merged in float32 and cast to the requested dtype at the end.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.model_files import TOKENIZER_FILES

__all__ = ["DTYPES", "MergeResult", "merge_model"]

# Output dtypes a merged model may be saved in (torch names).
DTYPES = ("float32", "bfloat16", "float16")
# Adapter weight files PEFT writes (the first one present is loaded).
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# Files copied along with the weights when present (licenses travel with the weights).
_EXTRA_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "NOTICE")
MISMATCH = "ADAPTER_BASE_MISMATCH"
SOURCE_INVALID = "MODEL_SOURCE_INVALID"


@dataclass(frozen=True)
class MergeResult:
    directory: Path  # the HF directory written (out_dir)
    parameter_count: int  # unique parameters (tied embeddings counted once)
    dtype: str  # torch name of the saved weights: "float32"
    files: list[str]  # file names in `directory`, sorted
    adapter_type: str  # "lora", "dora", or "" when no adapter was merged
    tied_embeddings: bool  # whether the saved model ties lm_head to the input embeddings


def _read_json(path: Path, field: str, reason: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InvalidArgument(
            f"{path.name} could not be read: {e}", field=field, reason=reason
        ) from e
    if not isinstance(data, dict):
        raise InvalidArgument(f"{path.name} is not a JSON object", field=field, reason=reason)
    return data


def _check_base_dir(base_dir: Path) -> None:
    field = "source_model"
    if not base_dir.is_dir():
        raise InvalidArgument(
            f"model directory {base_dir} does not exist",
            field=field,
            reason=SOURCE_INVALID,
            metadata={"path": str(base_dir)},
        )
    if not (base_dir / "config.json").is_file():
        if (base_dir / "adapter_config.json").is_file():
            raise InvalidArgument(
                "the source is an adapter: pass its base model as the source and the adapter "
                "separately",
                field=field,
                reason=SOURCE_INVALID,
            )
        raise InvalidArgument(
            f"no config.json in {base_dir}: not a Hugging Face model directory",
            field=field,
            reason=SOURCE_INVALID,
            metadata={"path": str(base_dir)},
        )


def _read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    field = "adapter_model"
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise InvalidArgument(
            f"no adapter_config.json in {adapter_dir}: not a PEFT adapter",
            field=field,
            reason=SOURCE_INVALID,
            metadata={"path": str(adapter_dir)},
        )
    config = _read_json(config_file, field, SOURCE_INVALID)
    peft_type = str(config.get("peft_type", ""))
    if peft_type.upper() != "LORA":
        raise InvalidArgument(
            f"adapter type {peft_type or '(none)'} cannot be merged: only LoRA, DoRA and QLoRA "
            "adapters are supported",
            field=field,
            reason=SOURCE_INVALID,
            metadata={"peft_type": peft_type},
        )
    if not any((adapter_dir / name).is_file() for name in ADAPTER_WEIGHT_FILES):
        raise InvalidArgument(
            f"no adapter weights ({' or '.join(ADAPTER_WEIGHT_FILES)}) in {adapter_dir}",
            field=field,
            reason=SOURCE_INVALID,
        )
    return config


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _matches(target: str | list[str], module_name: str) -> bool:
    """PEFT's rule: a string is a regex over the full module name, a list holds name suffixes."""
    if isinstance(target, str):
        return re.fullmatch(target, module_name) is not None
    return any(module_name == t or module_name.endswith("." + t) for t in target)


def _check_targets(config: dict[str, Any], module_names: list[str]) -> None:
    """Every target module of the adapter must exist in the base model."""
    raw = config.get("target_modules")
    if raw is None or raw == "all-linear":
        return
    if isinstance(raw, str):
        if not any(_matches(raw, name) for name in module_names):
            raise FailedPrecondition(
                f"the adapter targets modules matching {raw!r} but the base model has none: "
                "it was made for another base model",
                reason=MISMATCH,
                metadata={"target_modules": raw},
            )
        return
    missing = [t for t in _names(raw) if not any(_matches([t], n) for n in module_names)]
    if missing:
        raise FailedPrecondition(
            f"the adapter targets modules the base model does not have ({', '.join(missing)}): "
            "it was made for another base model",
            reason=MISMATCH,
            metadata={"missing_modules": ",".join(missing)},
        )


def _embedding_names(model: Any) -> tuple[set[str], bool]:
    """(names of the input/output embedding modules, whether they share one weight)."""
    inp = model.get_input_embeddings()
    out = model.get_output_embeddings()
    names = {
        name for name, m in model.named_modules() if m is inp or (out is not None and m is out)
    }
    tied = (
        out is not None
        and getattr(out, "weight", None) is not None
        and out.weight.data_ptr() == inp.weight.data_ptr()
    )
    return names, tied


def _untie(model: Any) -> None:
    """Give lm_head its own copy of the embedding matrix, so that merging an adapter into one of
    them does not change the other (they share storage while tied)."""
    import torch

    out = model.get_output_embeddings()
    out.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    model.config.tie_word_embeddings = False
    text_config = model.config.get_text_config()
    if text_config is not model.config:
        text_config.tie_word_embeddings = False


def _touches_embeddings(config: dict[str, Any], embedding_names: set[str]) -> bool:
    targets = config.get("target_modules")
    wanted: str | list[str] = targets if isinstance(targets, str) else _names(targets)
    saved = _names(config.get("modules_to_save"))
    for name in embedding_names:
        if (wanted and targets != "all-linear" and _matches(wanted, name)) or _matches(saved, name):
            return True
    return False


def _apply_adapter(model: Any, adapter_dir: Path) -> Any:
    """The base model with the adapter merged in; raises on an adapter made for another base."""
    from peft import PeftConfig, PeftModel

    try:
        peft_config = PeftConfig.from_pretrained(str(adapter_dir))
    except (OSError, ValueError, TypeError) as e:
        raise InvalidArgument(
            f"adapter_config.json is not a valid PEFT config: {e}",
            field="adapter_model",
            reason=SOURCE_INVALID,
        ) from e
    peft_config.inference_mode = True
    try:
        peft_model = PeftModel(model, peft_config)
        result = peft_model.load_adapter(str(adapter_dir), "default", torch_device="cpu")
    except (ValueError, RuntimeError, KeyError) as e:
        # Target modules absent, or weight shapes of another architecture ("size mismatch").
        raise FailedPrecondition(
            f"the adapter does not fit the base model: {_first_line(e)}", reason=MISMATCH
        ) from e
    unexpected = list(result.unexpected_keys)
    if unexpected or result.missing_keys:
        keys = (unexpected or result.missing_keys)[:3]
        what = "has weights for modules the base model lacks" if unexpected else "lacks weights"
        raise FailedPrecondition(
            f"the adapter {what} (e.g. {', '.join(keys)}): it was made for another base model",
            reason=MISMATCH,
            metadata={
                "unexpected_keys": len(unexpected),
                "missing_keys": len(result.missing_keys),
            },
        )
    return peft_model.merge_and_unload()


def _first_line(e: BaseException) -> str:
    """The line of an error that says what is wrong (torch puts "size mismatch for ..." after a
    header line)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    telling = [line for line in lines if "size mismatch" in line or "not found" in line]
    return (telling or lines)[0][:300]


def _prepare_out_dir(out_dir: Path, *sources: Path) -> None:
    target = out_dir.resolve()
    for src in sources:
        src = src.resolve()
        if src == target or target in src.parents or src in target.parents:
            raise ValueError(f"out_dir {out_dir} must not overlap the source {src}")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)


def merge_model(
    base_dir: Path,
    adapter_dir: Path | None,
    out_dir: Path,
    *,
    dtype: str = "float32",
) -> MergeResult:
    """Write base (+ adapter, merged) as a safetensors HF directory at `out_dir` (replaced).

    Raises InvalidArgument (MODEL_SOURCE_INVALID) for a directory that is not a model or adapter,
    FailedPrecondition (ADAPTER_BASE_MISMATCH) for an adapter made for another base model.
    """
    import torch
    from transformers import AutoModelForCausalLM

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if dtype not in DTYPES:
        raise InvalidArgument(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}", field="dtype")
    _check_base_dir(base_dir)
    adapter_config = _read_adapter_config(Path(adapter_dir)) if adapter_dir is not None else None
    _prepare_out_dir(out_dir, base_dir, *([Path(adapter_dir)] if adapter_dir else []))

    try:
        # Merge in float32 whatever the stored dtype: bf16 merges round the adapter's delta away.
        model = AutoModelForCausalLM.from_pretrained(
            base_dir, dtype=torch.float32, local_files_only=True
        )
    except Exception as e:  # transformers raises OSError, ValueError, KeyError, safetensors errors
        raise InvalidArgument(
            f"the model in {base_dir.name} could not be loaded: {_first_line(e)}",
            field="source_model",
            reason=SOURCE_INVALID,
        ) from e
    model.eval()

    adapter_type = ""
    if adapter_config is not None:
        assert adapter_dir is not None
        _check_targets(adapter_config, [name for name, _ in model.named_modules()])
        embedding_names, tied = _embedding_names(model)
        if tied and _touches_embeddings(adapter_config, embedding_names):
            # Merged into a shared matrix, an lm_head delta would also change the embeddings
            # (and vice versa): the merged model has two matrices.
            _untie(model)
        with torch.no_grad():
            model = _apply_adapter(model, Path(adapter_dir))
        adapter_type = "dora" if adapter_config.get("use_dora") else "lora"

    torch_dtype = getattr(torch, dtype)
    model = model.to(torch_dtype)
    model.config.dtype = torch_dtype
    _, tied = _embedding_names(model)
    parameter_count = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        model.save_pretrained(out_dir, safe_serialization=True)
    for name in (*TOKENIZER_FILES, *_EXTRA_FILES):
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out_dir / name)
    del model
    return MergeResult(
        directory=out_dir,
        parameter_count=parameter_count,
        dtype=dtype,
        files=sorted(p.name for p in out_dir.iterdir() if p.is_file()),
        adapter_type=adapter_type,
        tied_embeddings=tied,
    )
