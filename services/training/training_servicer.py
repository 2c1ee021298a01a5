"""gRPC TrainingService: proto <-> TrainingJobs. Blocking calls run in worker threads; Watch
streams history, then live events as supervisors report them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import empty_pb2

from services.common.job_records import Event, Job
from services.common.job_watch import JobNotifier, timestamp, watch
from services.common.resource_names import parse_parent
from services.common.status import status_from_dict
from services.training.jobs import CheckpointInfo, TrainingJobs
from tuneforge.common.v1 import common_pb2
from tuneforge.training.v1 import training_service_pb2 as pb
from tuneforge.training.v1 import training_service_pb2_grpc as pb_grpc


def _set_fields(message: Any) -> dict[str, Any]:
    """The fields the caller set, as plain Python values (enums by name)."""
    values: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.message_type is not None:
            values[field.name] = _set_fields(value)
        elif field.enum_type is not None:
            values[field.name] = field.enum_type.values_by_number[value].name
        elif field.is_repeated:
            values[field.name] = list(value)
        else:
            values[field.name] = value
    return values


def spec_from_proto(job: pb.TrainingJob) -> dict[str, Any]:
    as_dict = _set_fields

    distribution = as_dict(job.distribution)
    return {
        "display_name": job.display_name,
        "base_model": job.base_model,
        "training_dataset": job.training_dataset,
        "validation_dataset": job.validation_dataset,
        "method": pb.Method.Name(job.method).lower() if job.method else "",
        "hyperparameters": as_dict(job.hyperparameters),
        "lora": as_dict(job.lora),
        "distribution": distribution,
        "suffix": job.suffix,
        "seed": job.seed,
        "priority": job.priority,
        "labels": dict(job.labels),
    }


def _step_metrics(m: dict[str, Any]) -> pb.StepMetrics:
    keys = (
        "step",
        "epoch",
        "loss",
        "learning_rate",
        "grad_norm",
        "tokens_per_second",
        "eta_seconds",
        "total_steps",
    )
    return pb.StepMetrics(**{k: m[k] for k in keys if m.get(k) is not None})


def _eval_metrics(m: dict[str, Any]) -> pb.EvalMetrics:
    keys = ("step", "epoch", "loss", "token_accuracy", "perplexity")
    return pb.EvalMetrics(**{k: m[k] for k in keys if m.get(k) is not None})


def job_to_proto(job: Job) -> pb.TrainingJob:
    spec, resolved = job.spec, job.resolved
    hp = resolved.get("hyperparameters") or {}
    lora = resolved.get("lora") or {}
    dist = spec.get("distribution") or {}
    progress = job.progress
    message = pb.TrainingJob(
        name=job.name,
        display_name=spec.get("display_name", ""),
        base_model=spec.get("base_model", ""),
        training_dataset=spec.get("training_dataset", ""),
        validation_dataset=spec.get("validation_dataset", ""),
        method=(resolved.get("method") or spec.get("method") or "lora").upper(),
        suffix=spec.get("suffix", ""),
        seed=int(spec.get("seed") or 0),
        priority=job.priority,
        labels=spec.get("labels") or {},
        state=job.state,
        error=status_from_dict(job.error),
        output_model=job.output_model,
        progress=pb.TrainingProgress(
            step=int(progress.get("step", 0)),
            total_steps=int(progress.get("total_steps", 0)),
            epoch=float(progress.get("epoch", 0.0)),
            trained_tokens=int(progress.get("trained_tokens", 0)),
            eta_seconds=float(progress.get("eta_seconds", 0.0)),
        ),
        latest_metrics=_step_metrics(job.latest_metrics) if job.latest_metrics else None,
        latest_eval=_eval_metrics(job.latest_eval) if job.latest_eval else None,
        resume_count=job.resume_count,
        create_time=timestamp(job.create_time),
        start_time=timestamp(job.start_time),
        end_time=timestamp(job.end_time),
        update_time=timestamp(job.update_time),
    )
    message.hyperparameters.CopyFrom(_hyperparameters(spec.get("hyperparameters") or {}))
    message.lora.CopyFrom(_lora(spec.get("lora") or {}))
    message.distribution.CopyFrom(
        pb.DistributionConfig(
            processes_per_node=int(dist.get("processes_per_node", 0)),
            nodes=int(dist.get("nodes", 0)),
            zero_stage=int(dist.get("zero_stage", 0)),
            offload_optimizer=bool(dist.get("offload_optimizer", False)),
            offload_parameters=bool(dist.get("offload_parameters", False)),
            launcher=dist.get("launcher", "LAUNCHER_UNSPECIFIED"),
            kubernetes=pb.KubernetesConfig(**(dist.get("kubernetes") or {})),
        )
    )
    if hp:
        message.resolved_hyperparameters.CopyFrom(_hyperparameters(hp))
    if lora:
        message.resolved_lora.CopyFrom(_lora(lora))
    return message


def _hyperparameters(values: dict[str, Any]) -> pb.Hyperparameters:
    fields = pb.Hyperparameters.DESCRIPTOR.fields_by_name
    return pb.Hyperparameters(**{k: v for k, v in values.items() if k in fields})


def _lora(values: dict[str, Any]) -> pb.LoraConfig:
    fields = pb.LoraConfig.DESCRIPTOR.fields_by_name
    return pb.LoraConfig(**{k: v for k, v in values.items() if k in fields})


def checkpoint_to_proto(c: CheckpointInfo) -> pb.Checkpoint:
    return pb.Checkpoint(
        name=c.name,
        step=c.step,
        epoch=c.epoch,
        artifact=common_pb2.ArtifactRef(
            uri=c.uri,
            manifest_sha256=c.manifest_sha256,
            files=[common_pb2.ArtifactFile(**f) for f in c.files],
            total_size_bytes=sum(f["size_bytes"] for f in c.files),
        ),
        metrics=c.metrics,
        create_time=timestamp(c.created_at),
    )


def event_to_proto(event: Event) -> pb.TrainingJobEvent:
    out = pb.TrainingJobEvent(sequence=event.sequence, time=timestamp(event.time))
    p = event.payload
    if event.kind == "state_change":
        out.state_change.CopyFrom(
            pb.StateChange(
                previous_state=p.get("previous_state", "STATE_UNSPECIFIED"),
                state=p.get("state", "STATE_UNSPECIFIED"),
                reason=p.get("reason", ""),
            )
        )
    elif event.kind == "metrics":
        out.metrics.CopyFrom(_step_metrics(p))
    elif event.kind == "eval":
        out.eval.CopyFrom(_eval_metrics(p))
    elif event.kind == "checkpoint":
        files = p.get("files", [])
        out.checkpoint.CopyFrom(
            pb.Checkpoint(
                step=int(p.get("step", 0)),
                epoch=float(p.get("epoch", 0.0)),
                artifact=common_pb2.ArtifactRef(
                    uri=p.get("uri", p.get("prefix", "")),
                    manifest_sha256=p.get("manifest_sha256", ""),
                    files=[common_pb2.ArtifactFile(**f) for f in files],
                    total_size_bytes=sum(f.get("size_bytes", 0) for f in files),
                ),
                metrics=p.get("metrics", {}),
            )
        )
    else:
        out.log.CopyFrom(
            common_pb2.LogLine(
                time=timestamp(event.time),
                level=p.get("level", "info"),
                source=p.get("source", ""),
                message=p.get("message", ""),
            )
        )
    return out


class TrainingServicer(pb_grpc.TrainingServiceServicer):
    def __init__(self, jobs: TrainingJobs, notifier: JobNotifier) -> None:
        self.jobs = jobs
        self.notifier = notifier

    async def CreateTrainingJob(
        self, request: pb.CreateTrainingJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.TrainingJob:
        project = parse_parent(request.parent)
        job = await asyncio.to_thread(
            self.jobs.create,
            project,
            request.training_job_id,
            spec_from_proto(request.training_job),
            request.request_id,
        )
        return job_to_proto(job)

    async def GetTrainingJob(
        self, request: pb.GetTrainingJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.TrainingJob:
        return job_to_proto(await asyncio.to_thread(self.jobs.get, request.name))

    async def ListTrainingJobs(
        self, request: pb.ListTrainingJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTrainingJobsResponse:
        project = parse_parent(request.parent)
        jobs, token = await asyncio.to_thread(
            self.jobs.list, project, request.page_size, request.page_token, request.filter
        )
        return pb.ListTrainingJobsResponse(
            training_jobs=[job_to_proto(j) for j in jobs], next_page_token=token
        )

    async def CancelTrainingJob(
        self, request: pb.CancelTrainingJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.TrainingJob:
        return job_to_proto(await asyncio.to_thread(self.jobs.cancel, request.name))

    async def DeleteTrainingJob(
        self, request: pb.DeleteTrainingJobRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await asyncio.to_thread(self.jobs.delete, request.name)
        return empty_pb2.Empty()

    async def WatchTrainingJob(
        self, request: pb.WatchTrainingJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TrainingJobEvent]:
        async for event in watch(
            self.jobs, request.name, request.after_sequence, self.notifier, event_to_proto
        ):
            yield event

    async def ListTrainingJobEvents(
        self, request: pb.ListTrainingJobEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTrainingJobEventsResponse:
        events, token = await asyncio.to_thread(
            self.jobs.list_events,
            request.parent,
            request.page_size,
            request.page_token,
            request.filter,
        )
        return pb.ListTrainingJobEventsResponse(
            events=[event_to_proto(e) for e in events], next_page_token=token
        )

    async def ListTrainingJobCheckpoints(
        self, request: pb.ListTrainingJobCheckpointsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTrainingJobCheckpointsResponse:
        checkpoints = await asyncio.to_thread(self.jobs.checkpoints, request.parent)
        return pb.ListTrainingJobCheckpointsResponse(
            checkpoints=[checkpoint_to_proto(c) for c in checkpoints]
        )
