"""gRPC EvaluationService: proto <-> Evaluations. Thin: every decision is in evaluation.py."""

from __future__ import annotations

from typing import Any

import grpc

from services.common.errors import InvalidArgument
from services.common.job_watch import timestamp
from services.common.resource_names import parse_parent
from services.common.status import status_from_dict
from services.inference.evaluation import Evaluations
from services.inference.evaluation_records import EvaluationRecord
from tuneforge.common.v1 import common_pb2
from tuneforge.inference.v1 import evaluation_service_pb2 as pb
from tuneforge.inference.v1 import evaluation_service_pb2_grpc as pb_grpc
from tuneforge.inference.v1 import inference_service_pb2 as inference_pb

_OPTIONAL_PARAMETERS = ("temperature", "top_p", "top_k", "seed", "repetition_penalty")


def parameters_to_dict(p: common_pb2.GenerationParameters) -> dict[str, Any]:
    """The parameters as asked: unset optional values are left out."""
    values: dict[str, Any] = {"max_tokens": p.max_tokens, "stop": list(p.stop)}
    for key in _OPTIONAL_PARAMETERS:
        if p.HasField(key):
            values[key] = getattr(p, key)
    return values


def spec_from_proto(evaluation: pb.Evaluation) -> dict[str, Any]:
    for i, scorer in enumerate(evaluation.scorers):
        if scorer == pb.SCORER_UNSPECIFIED or scorer not in pb.Scorer.values():
            raise InvalidArgument(
                f"evaluation.scorers[{i}] must be EXACT_MATCH, CONTAINS or JSON_VALID",
                field=f"evaluation.scorers[{i}]",
            )
    backend = evaluation.backend
    if backend not in inference_pb.Backend.values():
        raise InvalidArgument(f"unknown backend {backend}", field="evaluation.backend")
    return {
        "model": evaluation.model,
        "adapter": evaluation.adapter,
        "dataset": evaluation.dataset,
        "split": evaluation.split,
        "scorers": [pb.Scorer.Name(s) for s in evaluation.scorers],
        "max_rows": evaluation.max_rows,
        "parameters": parameters_to_dict(evaluation.parameters),
        "backend": inference_pb.Backend.Name(backend) if backend else "",
    }


def report_to_proto(report: dict[str, Any]) -> pb.EvaluationReport:
    artifact = report.get("artifact") or {}
    return pb.EvaluationReport(
        row_count=int(report.get("row_count", 0)),
        scores={k: float(v) for k, v in (report.get("scores") or {}).items()},
        tokens_per_second=float(report.get("tokens_per_second", 0.0)),
        seconds=float(report.get("seconds", 0.0)),
        samples=[
            pb.EvaluationSample(
                line=int(s.get("line", 0)),
                prompt=str(s.get("prompt", "")),
                reference=str(s.get("reference", "")),
                answer=str(s.get("answer", "")),
                passed={k: bool(v) for k, v in (s.get("passed") or {}).items()},
            )
            for s in report.get("samples") or []
        ],
        artifact=common_pb2.ArtifactRef(
            uri=str(artifact.get("uri", "")),
            manifest_sha256=str(artifact.get("manifest_sha256", "")),
            files=[
                common_pb2.ArtifactFile(
                    path=f["path"], sha256=f["sha256"], size_bytes=int(f["size_bytes"])
                )
                for f in artifact.get("files") or []
            ],
            total_size_bytes=int(artifact.get("total_size_bytes", 0)),
        ),
    )


def evaluation_to_proto(record: EvaluationRecord) -> pb.Evaluation:
    spec = record.spec
    parameters = dict(spec.get("parameters") or {})
    message = pb.Evaluation(
        name=record.name,
        model=spec.get("model", ""),
        adapter=spec.get("adapter", ""),
        dataset=spec.get("dataset", ""),
        split=spec.get("split", ""),
        scorers=list(spec.get("scorers") or []),
        max_rows=int(spec.get("max_rows", 0)),
        parameters=common_pb2.GenerationParameters(**parameters),
        backend=spec.get("backend") or "BACKEND_UNSPECIFIED",
        state=record.state,
        error=status_from_dict(record.error),
        create_time=timestamp(record.create_time),
        end_time=timestamp(record.end_time),
    )
    if record.report:
        message.report.CopyFrom(report_to_proto(record.report))
    return message


class EvaluationServicer(pb_grpc.EvaluationServiceServicer):
    def __init__(self, evaluations: Evaluations) -> None:
        self.evaluations = evaluations

    async def CreateEvaluation(
        self, request: pb.CreateEvaluationRequest, context: grpc.aio.ServicerContext
    ) -> pb.Evaluation:
        project = parse_parent(request.parent)
        record = await self.evaluations.create(
            project,
            request.evaluation_id,
            spec_from_proto(request.evaluation),
            request.request_id,
        )
        return evaluation_to_proto(record)

    async def GetEvaluation(
        self, request: pb.GetEvaluationRequest, context: grpc.aio.ServicerContext
    ) -> pb.Evaluation:
        return evaluation_to_proto(await self.evaluations.get(request.name))

    async def ListEvaluations(
        self, request: pb.ListEvaluationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListEvaluationsResponse:
        project = parse_parent(request.parent)
        records, token = await self.evaluations.list(
            project, request.page_size, request.page_token, request.filter
        )
        return pb.ListEvaluationsResponse(
            evaluations=[evaluation_to_proto(r) for r in records], next_page_token=token
        )
