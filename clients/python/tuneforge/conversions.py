"""`client.conversions`: merge adapters, export ONNX (fp32/int8/int4), parity reports."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from tuneforge.client import call, follow, pages, server_stream
from tuneforge.conversion.v1 import conversion_service_pb2 as pb
from tuneforge.conversion.v1 import conversion_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from tuneforge.client import Client


class ConversionJobHandle:
    """A conversion job: its latest state, its events, waiting for the end."""

    def __init__(self, conversions: Conversions, job: pb.ConversionJob) -> None:
        self._conversions = conversions
        self.job = job

    @property
    def name(self) -> str:
        return self.job.name

    @property
    def state(self) -> str:
        return pb.ConversionJob.State.Name(self.job.state)

    @property
    def stage(self) -> str:
        return pb.ConversionJob.Stage.Name(self.job.stage)

    def refresh(self) -> pb.ConversionJob:
        self.job = self._conversions.get(self.name).job
        return self.job

    def events(self, after_sequence: int = 0) -> Iterator[pb.ConversionJobEvent]:
        """Streams the job's events (history, then live) until it ends."""
        return self._conversions.watch(self.name, after_sequence)

    def wait(
        self,
        on_event: Callable[[pb.ConversionJobEvent], None] | None = None,
        timeout_s: float | None = None,
    ) -> pb.ConversionJob:
        """Follows the job to its end (reconnecting if the stream breaks) and returns it."""
        return follow(
            self,
            lambda after: self._conversions.watch(self.name, after, timeout_s=timeout_s),
            on_event,
            timeout_s,
        )

    def cancel(self) -> pb.ConversionJob:
        self.job = self._conversions.cancel(self.name).job
        return self.job


class Conversions:
    """`client.conversions`: conversion jobs (hosted by the conversion service)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._stub = pb_grpc.ConversionServiceStub(client.channel("conversion"))

    def job_name(self, job: str) -> str:
        if job.startswith("projects/"):
            return job
        return f"{self._client.parent}/conversionJobs/{job}"

    def create(
        self,
        model: str,
        *,
        adapter: str = "",
        formats: Sequence[str] = ("onnx",),
        precision: str = "int4",
        golden_prompts: Sequence[str] = (),
        parity_dataset: str = "",
        max_rows: int = 0,
        max_new_tokens: int = 0,
        thresholds: Mapping[str, float] | None = None,
        force_publish: bool = False,
        output_model_id: str = "",
        job_id: str = "",
        display_name: str = "",
        labels: Mapping[str, str] | None = None,
        request_id: str = "",
    ) -> ConversionJobHandle:
        """Queues a conversion of `model` (a base or merged model, or an adapter) with `adapter`
        merged onto it. `formats`: "onnx" and/or "merged"; `precision` of the ONNX weights:
        fp32, int8 or int4. Parity prompts default to the training job's validation rows;
        `thresholds` takes the fields of ParityThresholds."""
        job = pb.ConversionJob(
            display_name=display_name,
            source_model=self._client.model_name(model),
            adapter_model=self._client.model_name(adapter) if adapter else "",
            output_formats=[f.upper() for f in formats],
            precision=precision.upper(),
            parity=pb.ParityConfig(
                golden_prompts=list(golden_prompts),
                dataset=self._client.dataset_name(parity_dataset) if parity_dataset else "",
                max_rows=max_rows,
                max_new_tokens=max_new_tokens,
                thresholds=pb.ParityThresholds(**dict(thresholds or {})),
            ),
            force_publish=force_publish,
            output_model_id=output_model_id,
            labels=dict(labels or {}),
        )
        request = pb.CreateConversionJobRequest(
            parent=self._client.parent,
            conversion_job_id=job_id,
            conversion_job=job,
            request_id=request_id,
        )
        created = call(self._stub.CreateConversionJob, request, self._client.config.timeout_s)
        return ConversionJobHandle(self, created)

    def get(self, job: str) -> ConversionJobHandle:
        request = pb.GetConversionJobRequest(name=self.job_name(job))
        return ConversionJobHandle(
            self, call(self._stub.GetConversionJob, request, self._client.config.timeout_s)
        )

    def list(self, filter: str = "", page_size: int = 0) -> Iterator[pb.ConversionJob]:
        return pages(
            self._stub.ListConversionJobs,
            lambda token: pb.ListConversionJobsRequest(
                parent=self._client.parent, page_size=page_size, page_token=token, filter=filter
            ),
            "conversion_jobs",
            self._client.config.timeout_s,
        )

    def cancel(self, job: str) -> ConversionJobHandle:
        request = pb.CancelConversionJobRequest(name=self.job_name(job))
        return ConversionJobHandle(
            self, call(self._stub.CancelConversionJob, request, self._client.config.timeout_s)
        )

    def delete(self, job: str) -> None:
        request = pb.DeleteConversionJobRequest(name=self.job_name(job))
        call(self._stub.DeleteConversionJob, request, self._client.config.timeout_s)

    def watch(
        self, job: str, after_sequence: int = 0, timeout_s: float | None = None
    ) -> Iterator[pb.ConversionJobEvent]:
        request = pb.WatchConversionJobRequest(
            name=self.job_name(job), after_sequence=after_sequence
        )
        return server_stream(
            self._stub.WatchConversionJob, request, timeout_s or self._client.config.long_timeout_s
        )
