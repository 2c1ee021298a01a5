"""The job's output model: a PEFT adapter or full safetensors weights, uploaded to the catalog
under `models/{project}/{id}/` with its manifest written LAST."""

from __future__ import annotations

import json
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from services.common.artifact_store import ArtifactStore
from services.common.errors import AlreadyExists
from services.common.manifest import Manifest
from services.common.model_files import TOKENIZER_FILES, model_prefix
from services.training.worker.distributed import Dist
from services.training.worker_config import WorkerConfig

COPIED_BASE_ATTRIBUTES = (
    "architecture",
    "model_type",
    "dtype",
    "vocab_size",
    "context_length",
    "tokenizer_sha256",
    "chat_template_sha256",
)


def source_of(config: WorkerConfig) -> str:
    return f"job:{config.job}"


def existing_output(store: ArtifactStore, config: WorkerConfig) -> Manifest | None:
    """The output this job already published (a resumed job that had finished), else None.

    Raises AlreadyExists when another job or import owns the name.
    """
    manifest = store.read_manifest(model_prefix(config.output.model, "output.model"))
    if manifest is None:
        return None
    if manifest.attributes.get("source") != source_of(config):
        raise AlreadyExists(config.output.model)
    return manifest


def save_local(engine: Any, config: WorkerConfig, dist_info: Dist, out_dir: Path) -> None:
    """All ranks (ZeRO-3 gathers are collective); rank 0 writes the files into out_dir."""
    module = engine.module
    zero3 = config.distribution.zero_stage == 3
    if config.method == "full":
        # ZeRO-3: gathered layer by layer onto rank 0 (the others get an empty dict).
        state = engine._zero3_consolidated_16bit_state_dict() if zero3 else module.state_dict()
        if dist_info.is_main:
            module.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
        return

    import deepspeed

    trainable = [p for p in module.parameters() if p.requires_grad]
    gather = (
        deepspeed.zero.GatheredParameters(trainable, modifier_rank=None) if zero3 else nullcontext()
    )
    with gather:
        if dist_info.is_main:
            # save_pretrained keeps only the adapter's weights (adapter_model.safetensors).
            module.save_pretrained(out_dir, safe_serialization=True)
    if dist_info.is_main:
        # Readers load the adapter onto the catalog model, not onto our local cache path.
        adapter_config = out_dir / "adapter_config.json"
        data = json.loads(adapter_config.read_text(encoding="utf-8"))
        data["base_model_name_or_path"] = config.base_model
        adapter_config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def copy_tokenizer(base_dir: Path, out_dir: Path) -> None:
    for name in TOKENIZER_FILES:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out_dir / name)


def saved_dtype(out_dir: Path) -> str:
    from safetensors import safe_open

    counts: dict[str, int] = {}
    for path in out_dir.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (safe_open is not a dict)
                t = fh.get_slice(key)
                dtype = str(t.get_dtype())
                counts[dtype] = counts.get(dtype, 0) + 1
    if not counts:
        return ""
    name = max(counts, key=lambda k: counts[k])
    return {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}.get(name, name.lower())


def publish(
    store: ArtifactStore,
    config: WorkerConfig,
    out_dir: Path,
    base_manifest: Manifest,
    *,
    parameter_count: int,
    metrics: dict[str, float],
    precision: str,
) -> tuple[Manifest, str]:
    """Rank 0: upload out_dir and write the output model's manifest (last)."""
    prefix = model_prefix(config.output.model, "output.model")
    base_attrs = base_manifest.attributes
    full = config.method == "full"
    attributes: dict[str, Any] = {
        k: base_attrs[k] for k in COPIED_BASE_ATTRIBUTES if k in base_attrs
    }
    if full:
        attributes["dtype"] = saved_dtype(out_dir) or attributes.get("dtype", "")
    attributes.update(
        model_kind="MERGED" if full else "ADAPTER",
        display_name=config.output.display_name or config.output.model.rsplit("/", 1)[-1],
        labels=dict(config.output.labels),
        base_model=config.base_model,
        method=config.method,
        precision=precision,
        parameter_count=parameter_count,
        source=source_of(config),
        source_kind="job",
    )
    lineage: dict[str, Any] = {
        "base_model": config.base_model,
        "base_model_sha256": base_manifest.sha256(),
        "training_job": config.job,
        "tokenizer_sha256": base_attrs.get("tokenizer_sha256", ""),
        "chat_template_sha256": base_attrs.get("chat_template_sha256", ""),
        "seed": config.seed,
    }
    lineage.update(config.lineage)
    lineage["config_json"] = config.model_dump_json()
    store.delete_prefix(prefix)  # leftovers of an interrupted upload (no manifest: invisible)
    files = store.upload_dir(out_dir, prefix)
    manifest = Manifest(
        kind="model",
        name=config.output.model,
        format="safetensors" if full else "peft",
        files=files,
        lineage=lineage,
        metrics=metrics,
        attributes=attributes,
    )
    sha = store.write_manifest(prefix, manifest)
    return manifest, sha


def trainable_count(module: torch.nn.Module) -> int:
    return sum(
        int(getattr(p, "ds_numel", 0) or p.numel()) for p in module.parameters() if p.requires_grad
    )
