"""Checkpoints: everything needed to resume exactly (DeepSpeed engine state, RNG states of every
rank, data position), saved locally by all ranks, uploaded by rank 0 with its manifest LAST."""

from __future__ import annotations

import random
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.common.artifact_store import ArtifactStore
from services.common.errors import FailedPrecondition
from services.common.manifest import Manifest
from services.training.worker.distributed import Dist, barrier, broadcast_object

ENGINE_TAG = "engine"  # DeepSpeed's tag folder inside a checkpoint
KEEP_CHECKPOINTS = 3
_STEP_DIR = re.compile(r"step-(\d{8})/$")


def step_prefix(checkpoint_prefix: str, step: int) -> str:
    return f"{checkpoint_prefix.rstrip('/')}/step-{step:08d}/"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@dataclass
class Published:
    prefix: str
    manifest_sha256: str
    manifest: Manifest


def trainable_names(module: torch.nn.Module) -> set[str]:
    """State-dict keys of the trainable parameters, every alias of a tied one included."""
    return {n for n, p in module.named_parameters(remove_duplicate=False) if p.requires_grad}


@contextmanager
def _only_trainable_state(module: torch.nn.Module) -> Iterator[None]:
    """While open, module.state_dict() holds the trainable parameters only.

    DeepSpeed's exclude_frozen_parameters drops the frozen names named_parameters() lists, and
    that lists a tied weight once: SmolLM2's lm_head.weight (the tied embedding, 108 MiB) and
    frozen buffers (4-bit quantization state) stayed in every adapter checkpoint.
    """
    keep = trainable_names(module)

    def drop_frozen(
        _module: torch.nn.Module, state: dict[str, Any], prefix: str, _meta: Any
    ) -> None:
        for key in [k for k in state if k.removeprefix(prefix) not in keep]:
            del state[key]

    handle = module.register_state_dict_post_hook(drop_frozen)
    try:
        yield
    finally:
        handle.remove()


def save_local(
    engine: Any, local_dir: Path, dist_info: Dist, client_state: dict[str, Any], adapter: bool
) -> None:
    """All ranks: write the engine state (partitioned under ZeRO) and this rank's RNG state.

    An adapter's checkpoint holds only the adapter (weights, optimizer state): the frozen base
    is the catalog model, loaded again on resume.
    """
    if dist_info.is_main and local_dir.exists():
        shutil.rmtree(local_dir)
    barrier()
    with _only_trainable_state(engine.module) if adapter else nullcontext():
        engine.save_checkpoint(
            str(local_dir),
            tag=ENGINE_TAG,
            client_state=client_state,
            save_latest=False,
            # Also keeps ZeRO-2/3 from saving the frozen params' partitions.
            exclude_frozen_parameters=adapter,
        )
    torch.save(rng_state(), local_dir / ENGINE_TAG / f"rng_state_rank{dist_info.rank}.pt")
    barrier()


def publish(
    store: ArtifactStore,
    local_dir: Path,
    prefix: str,
    *,
    name: str,
    attributes: dict[str, Any],
    metrics: dict[str, float],
) -> Published:
    """Rank 0: upload a saved checkpoint, then its manifest, then drop the oldest ones."""
    files = store.upload_dir(local_dir, prefix)
    manifest = Manifest(
        kind="checkpoint",
        name=name,
        format="deepspeed",
        files=files,
        attributes=attributes,
        metrics=metrics,
    )
    sha = store.write_manifest(prefix, manifest)
    shutil.rmtree(local_dir, ignore_errors=True)
    return Published(prefix, sha, manifest)


def prune(store: ArtifactStore, checkpoint_prefix: str, keep: int = KEEP_CHECKPOINTS) -> None:
    published = list_checkpoints(store, checkpoint_prefix)
    for _step, prefix in published[:-keep]:
        store.delete_artifact(prefix)


def list_checkpoints(store: ArtifactStore, checkpoint_prefix: str) -> list[tuple[int, str]]:
    """(step, prefix) of the published checkpoints, oldest first."""
    found = []
    for prefix in store.list_artifacts(checkpoint_prefix.rstrip("/") + "/"):
        match = _STEP_DIR.search(prefix)
        if match:
            found.append((int(match.group(1)), prefix))
    return sorted(found)


def fetch_latest(
    store: ArtifactStore, checkpoint_prefix: str, local_root: Path, dist_info: Dist
) -> tuple[Path, Manifest] | None:
    """All ranks: the newest published checkpoint, downloaded once by rank 0 (None if none).

    Resuming needs the world size the checkpoint was written with (ZeRO partitions per rank).
    """
    found: tuple[str, Manifest] | None = None
    error = ""
    if dist_info.is_main:
        try:
            published = list_checkpoints(store, checkpoint_prefix)
            if published:
                prefix = published[-1][1]
                target = local_root / prefix.rstrip("/").rsplit("/", 1)[-1]
                if target.exists():
                    shutil.rmtree(target)
                manifest = store.download_artifact(prefix, target)
                found = (str(target), manifest)
        except Exception as exc:  # every rank must learn of it, or the others wait forever
            error = f"{type(exc).__name__}: {exc}"
    found, error = broadcast_object((found, error))
    if error:
        raise FailedPrecondition(f"could not fetch the latest checkpoint: {error}")
    if found is None:
        return None
    path, manifest = found
    saved_world = int(manifest.attributes.get("world_size", 0))
    if saved_world != dist_info.world_size:
        raise FailedPrecondition(
            f"checkpoint {manifest.name} was written by {saved_world} processes but this run has "
            f"{dist_info.world_size}: resume with the same number of processes, or start over "
            "with resume=false",
            metadata={"checkpoint_world_size": str(saved_world)},
        )
    return Path(path), manifest


def _load_adapter(src: dict[str, Any], dst: torch.nn.Module) -> None:
    """Load an adapter checkpoint onto the freshly built model, whose frozen base came from the
    catalog: every trainable parameter must be in it (frozen extras of older checkpoints, equal
    to the base, are harmless)."""
    result = dst.load_state_dict(src, strict=False)
    missing = sorted(trainable_names(dst) & set(result.missing_keys))
    if missing:
        raise FailedPrecondition(
            f"the checkpoint lacks {len(missing)} parameters of the adapter being trained, "
            f"e.g. {missing[0]}",
            metadata={"missing_parameters": str(len(missing)), "example": missing[0]},
        )


def load(engine: Any, local_dir: Path, dist_info: Dist, adapter: bool) -> dict[str, Any]:
    """All ranks: restore the engine state and this rank's RNG state; returns the client state."""
    load_path, client_state = engine.load_checkpoint(
        str(local_dir), tag=ENGINE_TAG, custom_load_fn=_load_adapter if adapter else None
    )
    if load_path is None:
        raise FailedPrecondition(f"DeepSpeed could not load the checkpoint in {local_dir}")
    rng_file = local_dir / ENGINE_TAG / f"rng_state_rank{dist_info.rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return dict(client_state or {})
