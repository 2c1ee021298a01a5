"""The training loop: optimizer steps through DeepSpeed, metrics, evaluation and checkpoints."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from services.common.artifact_store import ArtifactStore
from services.common.chat_template import IGNORE_INDEX
from services.training.worker import checkpoints
from services.training.worker.data import Example, ShardedBatches, eval_batches
from services.training.worker.distributed import Dist, all_sum, barrier
from services.training.worker.events import EventWriter
from services.training.worker.trained_logits import TrainedTokenLoss
from services.training.worker_config import WorkerConfig


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint (DeepSpeed client state)."""

    step: int = 0  # optimizer steps done
    micro_step: int = 0  # micro-batches consumed: the data position
    trained_tokens: int = 0  # loss tokens over all ranks
    last_loss: float = float("nan")
    eval: dict[str, float] = field(default_factory=dict)

    def client_state(self, train: ShardedBatches, world_size: int) -> dict[str, Any]:
        epoch, batch_in_epoch = train.position(self.micro_step)
        return {
            "step": self.step,
            "micro_step": self.micro_step,
            "data_position": {"epoch": epoch, "batch_in_epoch": batch_in_epoch},
            "trained_tokens": self.trained_tokens,
            "last_loss": self.last_loss,
            "eval": dict(self.eval),
            "world_size": world_size,
        }

    @classmethod
    def from_client_state(cls, state: dict[str, Any]) -> Progress:
        return cls(
            step=int(state["step"]),
            micro_step=int(state["micro_step"]),
            trained_tokens=int(state.get("trained_tokens", 0)),
            last_loss=float(state.get("last_loss", float("nan"))),
            eval=dict(state.get("eval") or {}),
        )


def total_steps(config: WorkerConfig, batches_per_epoch: int) -> int:
    hp = config.hyperparameters
    if hp.max_steps > 0:
        return hp.max_steps
    return max(1, math.ceil(hp.epochs * batches_per_epoch / hp.gradient_accumulation_steps))


class TrainingLoop:
    def __init__(
        self,
        *,
        engine: Any,
        config: WorkerConfig,
        dist_info: Dist,
        train: ShardedBatches,
        validation: list[Example],
        events: EventWriter,
        store: ArtifactStore,
        work_dir: Path,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]],
        adapter: bool,
    ) -> None:
        self.engine = engine
        self.config = config
        self.dist = dist_info
        self.train = train
        self.validation = validation
        self.events = events
        self.store = store
        self.work_dir = work_dir
        self.autocast = autocast
        self.adapter = adapter
        self.total_steps = total_steps(config, train.batches_per_epoch)
        # Logits only where a token is trained (same loss, less LM-head work).
        self.loss = TrainedTokenLoss(engine.module)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.dist.device, non_blocking=True) for k, v in batch.items()}

    def _epoch(self, micro_step: int) -> float:
        return round(micro_step / self.train.batches_per_epoch, 4)

    def _manual_grad_norm(self) -> float:
        """L2 norm of the (already all-reduced) gradients: ZeRO-0 in fp32 does not record it."""
        sq = 0.0
        for p in self.engine.module.parameters():
            if p.requires_grad and p.grad is not None:
                sq += float(p.grad.detach().float().pow(2).sum())
        return math.sqrt(sq)

    def run(self, progress: Progress) -> Progress:
        engine = self.engine
        hp = self.config.hyperparameters
        ga = hp.gradient_accumulation_steps
        ckpt_every = hp.checkpoint_interval_steps
        eval_every = hp.eval_interval_steps
        run_start = time.perf_counter()
        start_step = progress.step
        engine.train()
        while progress.step < self.total_steps:
            t0 = time.perf_counter()
            lr = float(engine.get_lr()[0])
            loss_sum = tokens = trained = 0.0
            manual_norm: float | None = None
            first_micro = progress.micro_step
            for _ in range(ga):
                batch = self._to_device(self.train.batch(progress.micro_step))
                progress.micro_step += 1
                with self.autocast():
                    loss = self.loss(engine, batch)
                engine.backward(loss)
                if (
                    engine.is_gradient_accumulation_boundary()
                    and self.config.distribution.zero_stage == 0
                ):
                    manual_norm = self._manual_grad_norm()
                engine.step()
                loss_sum += float(loss.detach())
                tokens += float(batch["attention_mask"].sum())
                trained += float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            progress.step += 1
            loss_sum, micro, tokens, trained = all_sum(
                [loss_sum, float(ga), tokens, trained], self.dist.device
            )
            elapsed = time.perf_counter() - t0
            progress.last_loss = loss_sum / micro
            progress.trained_tokens += int(trained)
            grad_norm = engine.get_global_grad_norm()
            if grad_norm is None:
                grad_norm = manual_norm
            done_here = progress.step - start_step
            eta = (time.perf_counter() - run_start) / done_here * (self.total_steps - progress.step)
            self.events.emit(
                "metrics",
                step=progress.step,
                epoch=self._epoch(progress.micro_step),
                loss=progress.last_loss,
                learning_rate=lr,
                grad_norm=None if grad_norm is None else float(grad_norm),
                tokens_per_second=tokens / elapsed if elapsed > 0 else 0.0,
                eta_seconds=round(eta, 1),
                total_steps=self.total_steps,
                trained_tokens=progress.trained_tokens,
            )
            epoch_ended = (progress.micro_step // self.train.batches_per_epoch) > (
                first_micro // self.train.batches_per_epoch
            )
            last = progress.step >= self.total_steps
            if not last and self._due(eval_every, progress.step, epoch_ended):
                self.evaluate(progress)
            if self._due(ckpt_every, progress.step, epoch_ended):
                if last:
                    self.evaluate(progress)
                self.checkpoint(progress)
        if progress.eval.get("step") != progress.step:
            self.evaluate(progress)
        return progress

    @staticmethod
    def _due(interval: int, step: int, epoch_ended: bool) -> bool:
        return step % interval == 0 if interval > 0 else epoch_ended

    def evaluate(self, progress: Progress) -> None:
        """Validation loss, token accuracy and perplexity over trained tokens, all ranks."""
        if not self.validation:
            return
        engine = self.engine
        engine.eval()
        loss_sum = count = correct = 0.0
        with torch.no_grad():
            for batch, counts in eval_batches(
                self.validation,
                batch_size=self.config.hyperparameters.batch_size,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
                pad_id=self.train.pad_id,
            ):
                batch = self._to_device(batch)
                with self.autocast():
                    logits = engine(
                        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                    ).logits
                if not counts:
                    continue
                logits = logits[:, :-1].float()
                labels = batch["labels"][:, 1:]
                mask = labels != IGNORE_INDEX
                loss_sum += float(
                    F.cross_entropy(
                        logits.reshape(-1, logits.size(-1)),
                        labels.reshape(-1),
                        ignore_index=IGNORE_INDEX,
                        reduction="sum",
                    )
                )
                count += float(mask.sum())
                correct += float(((logits.argmax(-1) == labels) & mask).sum())
        engine.train()
        loss_sum, count, correct = all_sum([loss_sum, count, correct], self.dist.device)
        loss = loss_sum / max(count, 1.0)
        progress.eval = {
            "step": progress.step,
            "loss": loss,
            "token_accuracy": correct / max(count, 1.0),
            "perplexity": math.exp(min(loss, 700.0)),
        }
        self.events.emit(
            "eval",
            step=progress.step,
            epoch=self._epoch(progress.micro_step),
            loss=loss,
            token_accuracy=progress.eval["token_accuracy"],
            perplexity=progress.eval["perplexity"],
        )

    def checkpoint(self, progress: Progress) -> None:
        step = progress.step
        local = self.work_dir / "checkpoints" / f"step-{step:08d}"
        state = progress.client_state(self.train, self.dist.world_size)
        checkpoints.save_local(self.engine, local, self.dist, state, self.adapter)
        if self.dist.is_main:
            prefix = checkpoints.step_prefix(self.config.checkpoint_prefix, step)
            metrics = {"loss": progress.last_loss}
            if progress.eval.get("step") == step:
                metrics["eval_loss"] = progress.eval["loss"]
            metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
            published = checkpoints.publish(
                self.store,
                local,
                prefix,
                name=f"{self.config.job}/checkpoints/step-{step:08d}",
                attributes={
                    "step": step,
                    "epoch": self._epoch(progress.micro_step),
                    "data_position": state["data_position"] | {"micro_step": progress.micro_step},
                    "world_size": self.dist.world_size,
                    "zero_stage": self.config.distribution.zero_stage,
                    "method": self.config.method,
                },
                metrics=metrics,
            )
            self.events.emit(
                "checkpoint",
                step=step,
                epoch=self._epoch(progress.micro_step),
                prefix=published.prefix,
                manifest_sha256=published.manifest_sha256,
                files=[f.model_dump() for f in published.manifest.files],
                metrics=metrics,
            )
            try:
                checkpoints.prune(self.store, self.config.checkpoint_prefix)
            except Exception as exc:  # an old checkpoint left behind is not worth failing for
                self.events.log(f"could not delete old checkpoints: {exc}", level="warning")
        barrier()
