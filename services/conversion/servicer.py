"""gRPC ConversionService: proto <-> ConversionJobs. Blocking calls run in worker threads; Watch
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
from services.conversion.jobs import ConversionJobs
from tuneforge.common.v1 import common_pb2
from tuneforge.conversion.v1 import conversion_service_pb2 as pb
from tuneforge.conversion.v1 import conversion_service_pb2_grpc as pb_grpc

THRESHOLD_FIELDS = ("min_greedy_agreement", "max_perplexity_increase", "max_mean_logit_delta")


def spec_from_proto(job: pb.ConversionJob) -> dict[str, Any]:
    parity = job.parity
    thresholds = {
        key: getattr(parity.thresholds, key)
        for key in THRESHOLD_FIELDS
        if parity.thresholds.HasField(key)
    }
    return {
        "display_name": job.display_name,
        "source_model": job.source_model,
        "adapter_model": job.adapter_model,
        "output_formats": [pb.OutputFormat.Name(f) for f in job.output_formats],
        "precision": pb.Precision.Name(job.precision) if job.precision else "",
        "parity": {
            "golden_prompts": list(parity.golden_prompts),
            "dataset": parity.dataset,
            "max_rows": parity.max_rows,
            "max_new_tokens": parity.max_new_tokens,
            "thresholds": thresholds,
        },
        "force_publish": job.force_publish,
        "output_model_id": job.output_model_id,
        "labels": dict(job.labels),
    }


def thresholds_to_proto(values: dict[str, Any]) -> pb.ParityThresholds:
    return pb.ParityThresholds(
        **{k: float(v) for k, v in values.items() if k in THRESHOLD_FIELDS and v is not None}
    )


def parity_to_proto(report: dict[str, Any]) -> pb.ParityReport:
    return pb.ParityReport(
        prompt_count=int(report.get("prompt_count", 0)),
        greedy_agreement=float(report.get("greedy_agreement", 0.0)),
        max_logit_delta=float(report.get("max_logit_delta", 0.0)),
        mean_logit_delta=float(report.get("mean_logit_delta", 0.0)),
        reference_perplexity=float(report.get("reference_perplexity", 0.0)),
        candidate_perplexity=float(report.get("candidate_perplexity", 0.0)),
        thresholds=thresholds_to_proto(report.get("thresholds") or {}),
        passed=bool(report.get("passed", False)),
        forced=bool(report.get("forced", False)),
        prompts=[
            pb.PromptComparison(
                prompt=str(p.get("prompt", "")),
                reference_text=str(p.get("reference_text", "")),
                candidate_text=str(p.get("candidate_text", "")),
                agreement=float(p.get("agreement", 0.0)),
            )
            for p in report.get("prompts") or []
        ],
    )


def job_to_proto(job: Job) -> pb.ConversionJob:
    spec, resolved = job.spec, job.resolved
    parity = resolved.get("parity") or {}
    message = pb.ConversionJob(
        name=job.name,
        display_name=spec.get("display_name", ""),
        source_model=spec.get("source_model", ""),
        adapter_model=spec.get("adapter_model", ""),
        output_formats=[f.upper() for f in resolved.get("formats") or []],
        precision=str(resolved.get("precision", "int4")).upper(),
        parity=pb.ParityConfig(
            golden_prompts=[p[-1]["content"] for p in parity.get("prompts") or []],
            dataset=(spec.get("parity") or {}).get("dataset", ""),
            max_rows=int(parity.get("max_rows", 0)),
            max_new_tokens=int(parity.get("max_new_tokens", 0)),
            thresholds=thresholds_to_proto(parity.get("thresholds") or {}),
        ),
        force_publish=bool(resolved.get("force_publish", False)),
        output_model_id=spec.get("output_model_id", ""),
        labels=spec.get("labels") or {},
        state=job.state,
        stage=job.progress.get("stage") or "STAGE_UNSPECIFIED",
        progress=float(job.progress.get("progress", 0.0)),
        error=status_from_dict(job.error),
        output_models=job.outputs,
        create_time=timestamp(job.create_time),
        start_time=timestamp(job.start_time),
        end_time=timestamp(job.end_time),
        update_time=timestamp(job.update_time),
    )
    if job.latest_eval:
        message.parity_report.CopyFrom(parity_to_proto(job.latest_eval))
    return message


def event_to_proto(event: Event) -> pb.ConversionJobEvent:
    out = pb.ConversionJobEvent(sequence=event.sequence, time=timestamp(event.time))
    p = event.payload
    if event.kind == "state_change":
        out.state_change.CopyFrom(
            pb.ConversionStateChange(
                previous_state=p.get("previous_state", "STATE_UNSPECIFIED"),
                state=p.get("state", "STATE_UNSPECIFIED"),
                reason=p.get("reason", ""),
            )
        )
    elif event.kind == "progress":
        out.progress.CopyFrom(
            pb.ConversionProgress(
                stage=p.get("stage") or "STAGE_UNSPECIFIED",
                progress=float(p.get("progress", 0.0)),
            )
        )
    elif event.kind == "parity":
        out.parity_report.CopyFrom(parity_to_proto(p))
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


class ConversionServicer(pb_grpc.ConversionServiceServicer):
    def __init__(self, jobs: ConversionJobs, notifier: JobNotifier) -> None:
        self.jobs = jobs
        self.notifier = notifier

    async def CreateConversionJob(
        self, request: pb.CreateConversionJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConversionJob:
        project = parse_parent(request.parent)
        job = await asyncio.to_thread(
            self.jobs.create,
            project,
            request.conversion_job_id,
            spec_from_proto(request.conversion_job),
            request.request_id,
        )
        return job_to_proto(job)

    async def GetConversionJob(
        self, request: pb.GetConversionJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConversionJob:
        return job_to_proto(await asyncio.to_thread(self.jobs.get, request.name))

    async def ListConversionJobs(
        self, request: pb.ListConversionJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListConversionJobsResponse:
        project = parse_parent(request.parent)
        jobs, token = await asyncio.to_thread(
            self.jobs.list, project, request.page_size, request.page_token, request.filter
        )
        return pb.ListConversionJobsResponse(
            conversion_jobs=[job_to_proto(j) for j in jobs], next_page_token=token
        )

    async def CancelConversionJob(
        self, request: pb.CancelConversionJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConversionJob:
        return job_to_proto(await asyncio.to_thread(self.jobs.cancel, request.name))

    async def DeleteConversionJob(
        self, request: pb.DeleteConversionJobRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await asyncio.to_thread(self.jobs.delete, request.name)
        return empty_pb2.Empty()

    async def WatchConversionJob(
        self, request: pb.WatchConversionJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ConversionJobEvent]:
        async for event in watch(
            self.jobs, request.name, request.after_sequence, self.notifier, event_to_proto
        ):
            yield event
