"""`client.evaluations`: score a model (optionally with an adapter) on a dataset's held-out rows.

>>> evaluation = client.evaluations.create("tiny", "support", scorers=["exact_match"]).wait()
>>> evaluation.report.scores["EXACT_MATCH"], evaluation.report.artifact.uri
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import grpc

from tuneforge.client import call, pages
from tuneforge.common.v1 import common_pb2
from tuneforge.errors import TuneforgeError
from tuneforge.inference.v1 import evaluation_service_pb2 as pb
from tuneforge.inference.v1 import evaluation_service_pb2_grpc as pb_grpc
from tuneforge.inference_client import backend_value

if TYPE_CHECKING:
    from tuneforge.client import Client

ENDED_STATES = ("SUCCEEDED", "FAILED")


def scorer_name(scorer: str) -> str:
    """The Scorer enum name of "exact_match", "contains", "json_valid" (any case, "-" or "_")."""
    name = scorer.upper().replace("-", "_")
    if name not in ("EXACT_MATCH", "CONTAINS", "JSON_VALID"):
        raise ValueError(f"unknown scorer {scorer!r}; use exact_match, contains or json_valid")
    return name


class EvaluationHandle:
    """An evaluation: its latest state, waiting for the end."""

    def __init__(self, evaluations: Evaluations, evaluation: pb.Evaluation) -> None:
        self._evaluations = evaluations
        self.evaluation = evaluation

    @property
    def name(self) -> str:
        return self.evaluation.name

    @property
    def state(self) -> str:
        return pb.Evaluation.State.Name(self.evaluation.state)

    def refresh(self) -> pb.Evaluation:
        self.evaluation = self._evaluations.get(self.name).evaluation
        return self.evaluation

    def wait(
        self,
        on_update: Callable[[pb.Evaluation], None] | None = None,
        timeout_s: float | None = None,
        poll_s: float = 0.5,
    ) -> pb.Evaluation:
        """Polls the evaluation until it ends (reconnecting if the service restarts) and returns
        it; `on_update` sees every polled state."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                self.refresh()
            except TuneforgeError as exc:
                if exc.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
            else:
                if on_update:
                    on_update(self.evaluation)
                if self.state in ENDED_STATES:
                    return self.evaluation
            if deadline is not None and time.monotonic() > deadline:
                raise TuneforgeError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, f"{self.name} is still {self.state}"
                )
            time.sleep(poll_s)


class Evaluations:
    """`client.evaluations`: evaluations (hosted by the inference service)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._stub = pb_grpc.EvaluationServiceStub(client.channel("inference"))

    def evaluation_name(self, evaluation: str) -> str:
        if evaluation.startswith("projects/"):
            return evaluation
        return f"{self._client.parent}/evaluations/{evaluation}"

    def create(
        self,
        model: str,
        dataset: str,
        *,
        adapter: str = "",
        scorers: Sequence[str] = (),
        split: str = "",
        max_rows: int = 0,
        parameters: common_pb2.GenerationParameters | None = None,
        backend: str | None = None,
        evaluation_id: str = "",
        request_id: str = "",
    ) -> EvaluationHandle:
        """Starts an evaluation of `model` (with `adapter`) on `dataset`'s validation rows (or
        `split="train"`). `scorers`: exact_match (the server's default), contains, json_valid.
        Decoding is greedy unless `parameters` set a temperature (see
        tuneforge.inference_client.generation_parameters)."""
        evaluation = pb.Evaluation(
            model=self._client.model_name(model),
            adapter=self._client.model_name(adapter) if adapter else "",
            dataset=self._client.dataset_name(dataset),
            split=split,
            scorers=[scorer_name(s) for s in scorers],
            max_rows=max_rows,
            backend=backend_value(backend),
        )
        if parameters is not None:
            evaluation.parameters.CopyFrom(parameters)
        request = pb.CreateEvaluationRequest(
            parent=self._client.parent,
            evaluation_id=evaluation_id,
            evaluation=evaluation,
            request_id=request_id,
        )
        created = call(self._stub.CreateEvaluation, request, self._client.config.timeout_s)
        return EvaluationHandle(self, created)

    def get(self, evaluation: str) -> EvaluationHandle:
        request = pb.GetEvaluationRequest(name=self.evaluation_name(evaluation))
        return EvaluationHandle(
            self, call(self._stub.GetEvaluation, request, self._client.config.timeout_s)
        )

    def list(self, filter: str = "", page_size: int = 0) -> Iterator[pb.Evaluation]:
        """Every evaluation of the project; `filter`: state=, model=, dataset= (AND)."""
        return pages(
            self._stub.ListEvaluations,
            lambda token: pb.ListEvaluationsRequest(
                parent=self._client.parent, page_size=page_size, page_token=token, filter=filter
            ),
            "evaluations",
            self._client.config.timeout_s,
        )
