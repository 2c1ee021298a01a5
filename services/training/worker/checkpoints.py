"""Checkpoints: everything needed to resume exactly (DeepSpeed engine state, RNG states of every
rank, data position), saved locally by all ranks, uploaded by rank 0 with its manifest LAST."""

from __future__ import annotations

import random
import re
import shutil
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


def save_local(
    engine: Any, local_dir: Path, dist_info: Dist, client_state: dict[str, Any], adapter: bool
) -> None:
    """All ranks: write the engine state (partitioned under ZeRO) and this rank's RNG state."""
    if dist_info.is_main and local_dir.exists():
        shutil.rmtree(local_dir)
    barrier()
    engine.save_checkpoint(
        str(local_dir),
        tag=ENGINE_TAG,
        client_state=client_state,
        save_latest=False,
        # The frozen base is the catalog model: an adapter's checkpoint holds only the adapter.
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


def load(engine: Any, local_dir: Path, dist_info: Dist, adapter: bool) -> dict[str, Any]:
    """All ranks: restore the engine state and this rank's RNG state; returns the client state."""
    load_path, client_state = engine.load_checkpoint(
        str(local_dir), tag=ENGINE_TAG, load_module_strict=not adapter
    )
    if load_path is None:
        raise FailedPrecondition(f"DeepSpeed could not load the checkpoint in {local_dir}")
    rng_file = local_dir / ENGINE_TAG / f"rng_state_rank{dist_info.rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return dict(client_state or {})
