"""One rank of a training job: fetch model and data, build the DeepSpeed engine, resume, train,
publish the output model. Errors go to stderr with a traceback and a non-zero exit status."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.common.artifact_store import ArtifactStore
from services.common.chat_template import ChatTokenizer
from services.common.errors import InvalidArgument, TuneforgeError
from services.common.model_files import MODEL_CACHE_ENV, ModelFileCache
from services.common.settings import StoreSettings
from services.training.worker import checkpoints, output
from services.training.worker.data import ShardedBatches, fill_ratio, pack, read_rows, tokenize
from services.training.worker.distributed import (
    Dist,
    barrier,
    broadcast_object,
    init_distributed,
    shutdown,
)
from services.training.worker.ds_config import deepspeed_config, lr_lambda
from services.training.worker.events import EventWriter
from services.training.worker.loop import Progress, TrainingLoop, total_steps
from services.training.worker.model_setup import ADAPTER_METHODS, build_model, count_parameters
from services.training.worker_config import WorkerConfig


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m services.training.worker job.json", file=sys.stderr)
        return 2
    try:
        run_worker(Path(argv[0]))
    except BaseException as exc:
        if isinstance(exc, SystemExit | KeyboardInterrupt):
            raise
        rank = os.environ.get("RANK", "0")
        what = str(exc) if isinstance(exc, TuneforgeError) else f"{type(exc).__name__}: {exc}"
        print(f"training worker (rank {rank}) failed: {what}", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # No clean process-group shutdown here: the other ranks may be inside a collective.
        # torchrun stops them when this rank exits non-zero.
        os._exit(1)
    return 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def precision_mode(config: WorkerConfig, device: torch.device) -> str:
    """How to honour `precision`: "fp32", "ds_bf16" (DeepSpeed bf16: bf16 weights and grads,
    fp32 master weights), "autocast_bf16" (fp32 weights, bf16 matmuls) or "ds_fp16"."""
    precision = config.hyperparameters.precision
    if precision == "fp32":
        return "fp32"
    if precision == "fp16":
        if device.type != "cuda":
            raise InvalidArgument(
                "precision fp16 needs a GPU; use bf16 or fp32 on CPU",
                field="hyperparameters.precision",
            )
        return "ds_fp16"
    # 4-bit weights must not be cast by DeepSpeed: QLoRA gets bf16 through autocast.
    if config.method == "qlora":
        return "autocast_bf16"
    return "ds_bf16"


def _download_data(store: ArtifactStore, keys: list[str], root: Path, fetch: bool) -> list[Path]:
    paths = []
    for key in keys:
        dest = root / key
        if fetch and not dest.is_file():
            store.get_file(key, dest)
        paths.append(dest)
    return paths


def _make_optimizer(config: WorkerConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    hp = config.hyperparameters
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": hp.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if config.distribution.offload_optimizer and config.distribution.zero_stage >= 1:
        # ZeRO-Offload steps on the CPU with DeepSpeed's own Adam (JIT-built once, ~1 min).
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=hp.learning_rate, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=hp.learning_rate)


def run_worker(job_path: Path) -> None:
    # torch's own deprecated names, used by DeepSpeed on every ZeRO collective: pure log noise.
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\..* is deprecated")
    warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.* is deprecated")
    config = WorkerConfig.from_file(job_path)
    work = Path.cwd()
    dist_info = init_distributed()
    events = EventWriter(dist_info.is_main)
    store = ArtifactStore(StoreSettings())
    _train(config, dist_info, events, store, work)
    shutdown()


def _train(
    config: WorkerConfig, dist_info: Dist, events: EventWriter, store: ArtifactStore, work: Path
) -> None:
    import deepspeed

    hp = config.hyperparameters
    dist_cfg = config.distribution
    main_rank = dist_info.is_main
    adapter = config.method in ADAPTER_METHODS
    # More than one node: a launcher (Kubeflow Trainer) started every rank; their number must
    # be the job's, or the batch size and the data shards the service planned would not hold.
    expected = dist_cfg.nodes * dist_cfg.processes_per_node
    if dist_cfg.nodes > 1 and dist_info.world_size != expected:
        raise InvalidArgument(
            f"{dist_cfg.nodes} nodes x {dist_cfg.processes_per_node} processes need "
            f"{expected} ranks; the launcher started {dist_info.world_size}",
            field="distribution.nodes",
        )
    if config.method == "qlora" and dist_cfg.zero_stage == 3:
        raise InvalidArgument(
            "QLoRA cannot run under ZeRO-3 (4-bit weights cannot be partitioned); use stage 0-2",
            field="distribution.zero_stage",
        )
    mode = precision_mode(config, dist_info.device)

    # A resumed job that had already published its output has nothing left to do.
    done = output.existing_output(store, config) if main_rank else None
    done = broadcast_object(done)
    if done is not None:
        events.log(f"{config.output.model} was published before the restart: nothing left to train")
        events.emit(
            "output",
            model=config.output.model,
            manifest_sha256=done.sha256(),
            parameter_count=int(done.attributes.get("parameter_count", 0)),
        )
        return

    # Rank 0 downloads model and data; the others then find them complete in the same cache.
    cache = work / "cache"
    models = ModelFileCache(store, Path(os.environ.get(MODEL_CACHE_ENV) or cache / "models"))
    if main_rank:
        base_dir, base_manifest = models.fetch(config.base_model, field="base_model")
        train_paths = _download_data(store, config.train_files, cache / "data", True)
        val_paths = _download_data(store, config.validation_files, cache / "data", True)
    barrier()
    if not main_rank:
        base_dir, base_manifest = models.fetch(config.base_model, field="base_model")
        train_paths = _download_data(store, config.train_files, cache / "data", False)
        val_paths = _download_data(store, config.validation_files, cache / "data", False)

    tokenizer = ChatTokenizer.from_dir(base_dir)
    pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    examples = tokenize(read_rows(train_paths), tokenizer, hp.max_seq_len)
    if hp.packing:
        rows = pack(examples, hp.max_seq_len)
        events.log(
            f"packed {len(examples)} examples into {len(rows)} rows, "
            f"fill {fill_ratio(rows, hp.max_seq_len):.0%}"
        )
        examples = rows
    validation = tokenize(read_rows(val_paths), tokenizer, hp.max_seq_len)
    train = ShardedBatches(
        examples,
        batch_size=hp.batch_size,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
        seed=config.seed,
        pad_id=pad_id,
    )

    seed_everything(config.seed)  # identical initial adapter weights on every rank
    model = build_model(config, base_dir, dist_info.device)
    trainable, total = count_parameters(model)
    seed_everything(config.seed + dist_info.rank)  # per-rank dropout masks
    optimizer = _make_optimizer(config, model)
    steps = total_steps(config, train.batches_per_epoch)
    factor = lr_lambda(hp.lr_scheduler, hp.warmup_ratio, steps)
    ds_config = deepspeed_config(
        config, dist_info.world_size, bf16=mode == "ds_bf16", fp16=mode == "ds_fp16"
    )
    if dist_cfg.offload_parameters and dist_cfg.zero_stage != 3:
        events.log("offload_parameters needs ZeRO stage 3: ignored", level="warning")
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor),
        config=ds_config,
    )

    progress = Progress()
    if config.resume:
        found = checkpoints.fetch_latest(
            store, config.checkpoint_prefix, work / "resume", dist_info
        )
        if found is not None:
            local, manifest = found
            state = checkpoints.load(engine, local, dist_info, adapter)
            progress = Progress.from_client_state(state)
            events.log(f"resumed from {manifest.name} at step {progress.step}")
    elif main_rank:
        for _step, prefix in checkpoints.list_checkpoints(store, config.checkpoint_prefix):
            store.delete_artifact(prefix)  # starting over: old checkpoints must not be resumed
    barrier()

    events.emit(
        "started",
        total_steps=steps,
        resumed_from_step=progress.step,
        world_size=dist_info.world_size,
        trainable_parameters=trainable,
    )
    autocast: Callable[[], contextlib.AbstractContextManager[Any]]
    if mode == "autocast_bf16":
        device_type = dist_info.device.type

        def autocast() -> contextlib.AbstractContextManager[Any]:
            return torch.autocast(device_type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext
    loop = TrainingLoop(
        engine=engine,
        config=config,
        dist_info=dist_info,
        train=train,
        validation=validation,
        events=events,
        store=store,
        work_dir=work,
        autocast=autocast,
        adapter=adapter,
    )
    progress = loop.run(progress)

    out_dir = work / "output"
    if main_rank and out_dir.exists():
        shutil.rmtree(out_dir)
    barrier()
    output.save_local(engine, config, dist_info, out_dir)
    barrier()
    if main_rank:
        if not adapter:
            output.copy_tokenizer(base_dir, out_dir)
        metrics = {"train_loss": progress.last_loss}
        if progress.eval:
            metrics.update(
                eval_loss=progress.eval["loss"],
                token_accuracy=progress.eval["token_accuracy"],
                perplexity=progress.eval["perplexity"],
            )
        manifest, sha = output.publish(
            store,
            config,
            out_dir,
            base_manifest,
            parameter_count=trainable if adapter else total,
            metrics={k: float(v) for k, v in metrics.items() if v == v},
            precision=hp.precision,
        )
        events.emit(
            "output",
            model=config.output.model,
            manifest_sha256=sha,
            parameter_count=int(manifest.attributes["parameter_count"]),
        )
