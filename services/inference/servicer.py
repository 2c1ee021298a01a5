"""gRPC InferenceService: proto <-> ServedModels. Thin: every decision is in the core modules.

A streaming call that ends early (the client cancelled, its deadline passed, the connection
dropped) cancels its generation in `finally`, which gives its slot back to the model at once.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from services.common.errors import InvalidArgument
from services.common.resource_names import decode_page_token, encode_page_token, page_size
from services.common.status import error_status_proto
from services.inference.engine import Backend
from services.inference.generation import Finished, FinishReason, GenerationParams, Usage
from services.inference.scheduler import GenerationJob
from services.inference.served_models import LOADING, READY, Prompt, ServedModel, ServedModels
from tuneforge.common.v1 import common_pb2
from tuneforge.inference.v1 import inference_service_pb2 as pb
from tuneforge.inference.v1 import inference_service_pb2_grpc as pb_grpc

_FINISH = {
    FinishReason.STOP: pb.STOP,
    FinishReason.LENGTH: pb.LENGTH,
    FinishReason.STOP_SEQUENCE: pb.STOP_SEQUENCE,
}
_STATE = {LOADING: pb.ServedModel.LOADING, READY: pb.ServedModel.READY}


def params_from_proto(p: common_pb2.GenerationParameters) -> GenerationParams:
    return GenerationParams(
        max_tokens=p.max_tokens,
        temperature=p.temperature if p.HasField("temperature") else None,
        top_p=p.top_p if p.HasField("top_p") else None,
        top_k=p.top_k if p.HasField("top_k") else None,
        stop=tuple(p.stop),
        seed=p.seed if p.HasField("seed") else None,
        repetition_penalty=p.repetition_penalty if p.HasField("repetition_penalty") else None,
    )


def backend_from_proto(value: int) -> Backend | None:
    if value == pb.BACKEND_UNSPECIFIED:
        return None
    return Backend(pb.Backend.Name(value))


def messages_from_proto(messages: list[common_pb2.ChatMessage]) -> list[dict[str, str]]:
    if not messages:
        raise InvalidArgument("messages must hold at least one message", field="messages")
    out = []
    for i, m in enumerate(messages):
        if not m.role:
            raise InvalidArgument("every message needs a role", field=f"messages[{i}].role")
        out.append({"role": m.role, "content": m.content})
    return out


def usage_to_proto(usage: Usage) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def served_to_proto(served: ServedModel) -> pb.ServedModel:
    running, waiting = served.counts()
    message = pb.ServedModel(
        model=served.name,
        backend=served.backend.value,
        state=_STATE.get(served.state, pb.ServedModel.FAILED),
        adapters=served.loaded_adapters(),
        active_requests=running,
        queued_requests=waiting,
    )
    if served.error is not None:
        message.error.CopyFrom(error_status_proto(served.error))
    if served.load_time is not None:
        ts = timestamp_pb2.Timestamp()
        ts.FromDatetime(served.load_time)
        message.load_time.CopyFrom(ts)
    return message


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(self, models: ServedModels) -> None:
        self.models = models

    async def _submit(
        self,
        request: pb.GenerateRequest | pb.ChatRequest,
        prompt: Prompt,
        stream: bool = False,
    ) -> tuple[GenerationJob, ServedModel]:
        options = request.stream_options
        return await self.models.submit(
            request.model,
            request.adapter,
            backend_from_proto(request.backend),
            prompt,
            params_from_proto(request.parameters),
            arrival=time.monotonic(),
            stream_interval_ms=(
                options.interval_ms if stream and options.HasField("interval_ms") else None
            ),
        )

    @staticmethod
    def _prompt(request: pb.GenerateRequest) -> Prompt:
        if not request.prompt:
            raise InvalidArgument("prompt is required", field="prompt")
        return Prompt(text=request.prompt)

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        job, served = await self._submit(request, self._prompt(request))
        return await collect(job, served)

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        job, _ = await self._submit(request, self._prompt(request), stream=True)
        async for message in _stream(job):
            yield message

    async def Chat(
        self, request: pb.ChatRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        prompt = Prompt(messages=messages_from_proto(list(request.messages)))
        job, served = await self._submit(request, prompt)
        return await collect(job, served)

    async def ChatStream(
        self, request: pb.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        prompt = Prompt(messages=messages_from_proto(list(request.messages)))
        job, _ = await self._submit(request, prompt, stream=True)
        async for message in _stream(job):
            yield message

    async def ListServedModels(
        self, request: pb.ListServedModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListServedModelsResponse:
        size = page_size(request.page_size)
        after = str(decode_page_token(request.page_token).get("after", ""))
        served = [s for s in self.models.list() if s.name > after]
        page, rest = served[:size], served[size:]
        token = encode_page_token({"after": page[-1].name}) if rest else ""
        return pb.ListServedModelsResponse(
            served_models=[served_to_proto(s) for s in page], next_page_token=token
        )

    async def LoadModel(
        self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServedModel:
        served = await self.models.load(
            request.model, list(request.adapters), backend_from_proto(request.backend)
        )
        return served_to_proto(served)

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self.models.unload(request.model)
        return empty_pb2.Empty()


async def collect(job: GenerationJob, served: ServedModel) -> pb.GenerateResponse:
    """The whole generation as one response (what unary calls return)."""
    parts: list[str] = []
    final: Finished | None = None
    try:
        async for event in job.events():
            parts.append(event.text)
            if isinstance(event, Finished):
                final = event
    finally:
        job.cancel()  # a no-op once finished; frees the slot if this call was cancelled
    assert final is not None
    return pb.GenerateResponse(
        text="".join(parts),
        finish_reason=_FINISH[final.reason],
        usage=usage_to_proto(final.usage),
        model=served.name,
        adapter=job.adapter_name,
        backend=served.backend.value,
        time_to_first_token_seconds=final.time_to_first_token_s,
        tokens_per_second=final.tokens_per_second,
    )


async def _stream(job: GenerationJob) -> AsyncIterator[pb.GenerateStreamResponse]:
    try:
        async for event in job.events():
            if isinstance(event, Finished):
                yield pb.GenerateStreamResponse(
                    text=event.text,
                    finish_reason=_FINISH[event.reason],
                    usage=usage_to_proto(event.usage),
                )
            elif event.text:
                yield pb.GenerateStreamResponse(text=event.text)
    finally:
        job.cancel()
