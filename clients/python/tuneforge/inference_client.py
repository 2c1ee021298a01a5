"""`client.inference`: generation and chat with served models, and the served models themselves.

(Not `tuneforge/inference.py`: `tuneforge.inference` is the package of the generated stubs.)

>>> reply = client.inference.chat("tiny", [{"role": "user", "content": "hi"}], adapter="tiny-words")
>>> for chunk in client.inference.generate("tiny", "Once", stream=True, max_tokens=20):
...     print(chunk.text, end="")
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import grpc

from tuneforge.client import call, pages
from tuneforge.common.v1 import common_pb2
from tuneforge.errors import TuneforgeError
from tuneforge.inference.v1 import inference_service_pb2 as pb
from tuneforge.inference.v1 import inference_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from tuneforge.client import Client

BACKENDS = {
    "pytorch": pb.PYTORCH,
    "onnx": pb.ONNX_RUNTIME,
    "onnx_runtime": pb.ONNX_RUNTIME,
    "onnxruntime": pb.ONNX_RUNTIME,
}
Message = common_pb2.ChatMessage | Mapping[str, Any]


def backend_value(backend: str | None) -> pb.Backend:
    """ "pytorch" or "onnx" (any case); None lets the server choose from the model."""
    if not backend:
        return pb.BACKEND_UNSPECIFIED
    try:
        return BACKENDS[backend.lower().replace("-", "_")]
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}; use pytorch or onnx") from None


def generation_parameters(
    *,
    max_tokens: int = 0,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    stop: str | Sequence[str] | None = None,
    seed: int | None = None,
    repetition_penalty: float | None = None,
) -> common_pb2.GenerationParameters:
    """The proto of the sampling and stopping parameters; None leaves a value to the model."""
    params = common_pb2.GenerationParameters(
        max_tokens=max_tokens, stop=[stop] if isinstance(stop, str) else list(stop or [])
    )
    if temperature is not None:
        params.temperature = temperature
    if top_p is not None:
        params.top_p = top_p
    if top_k is not None:
        params.top_k = top_k
    if seed is not None:
        params.seed = seed
    if repetition_penalty is not None:
        params.repetition_penalty = repetition_penalty
    return params


def stream_options(stream: bool, interval_ms: int | None) -> pb.StreamOptions | None:
    """The request's stream options; an interval is refused for a call that does not stream."""
    if interval_ms is None:
        return None
    if not stream:
        raise ValueError("stream_interval_ms paces a stream: pass stream=True with it")
    return pb.StreamOptions(interval_ms=interval_ms)


def chat_messages(messages: Sequence[Message]) -> list[common_pb2.ChatMessage]:
    out = []
    for m in messages:
        if isinstance(m, common_pb2.ChatMessage):
            out.append(m)
        else:
            out.append(common_pb2.ChatMessage(role=str(m["role"]), content=str(m["content"])))
    return out


class GenerationStream:
    """The pieces of a streamed generation, as they are produced.

    Iterate it for GenerateStreamResponse messages (text deltas; the last one has finish_reason
    and usage); afterwards `text`, `finish_reason` and `usage` hold the totals. `cancel()`, or
    leaving a `with` block early, stops the generation on the server at its next token.
    """

    def __init__(self, call_: Any) -> None:
        self._call = call_
        self._parts: list[str] = []
        self.finish_reason: str = ""
        self.usage: pb.Usage | None = None

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self._parts)

    def __iter__(self) -> Iterator[pb.GenerateStreamResponse]:
        try:
            for message in self._call:
                self._parts.append(message.text)
                if message.finish_reason:
                    self.finish_reason = pb.FinishReason.Name(message.finish_reason)
                    self.usage = message.usage
                yield message
        except grpc.RpcError as exc:
            raise TuneforgeError.from_rpc_error(exc) from None
        finally:
            self._call.cancel()  # a no-op once the server ended the stream

    def cancel(self) -> None:
        self._call.cancel()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Inference:
    """`client.inference`: generation, chat, and the models the inference service holds."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._stub = pb_grpc.InferenceServiceStub(client.channel("inference"))

    def _adapter(self, adapter: str | None) -> str:
        return self._client.model_name(adapter) if adapter else ""

    def _timeout(self, timeout_s: float | None) -> float:
        return timeout_s if timeout_s is not None else self._client.config.long_timeout_s

    @overload
    def generate(
        self,
        model: str,
        prompt: str,
        *,
        adapter: str | None = ...,
        stream: Literal[False] = ...,
        backend: str | None = ...,
        timeout_s: float | None = ...,
        stream_interval_ms: int | None = ...,
        **params: Any,
    ) -> pb.GenerateResponse: ...

    @overload
    def generate(
        self,
        model: str,
        prompt: str,
        *,
        adapter: str | None = ...,
        stream: Literal[True],
        backend: str | None = ...,
        timeout_s: float | None = ...,
        stream_interval_ms: int | None = ...,
        **params: Any,
    ) -> GenerationStream: ...

    def generate(
        self,
        model: str,
        prompt: str,
        *,
        adapter: str | None = None,
        stream: bool = False,
        backend: str | None = None,
        timeout_s: float | None = None,
        stream_interval_ms: int | None = None,
        **params: Any,
    ) -> pb.GenerateResponse | GenerationStream:
        """Completes `prompt` with `model` (and `adapter`). `params` are those of
        `generation_parameters`: max_tokens, temperature, top_p, top_k, stop, seed,
        repetition_penalty. With stream=True, returns a GenerationStream; `stream_interval_ms`
        then asks for at least that long between its messages (joined text, fewer messages;
        None: the service's default, 0: a message per token)."""
        request = pb.GenerateRequest(
            model=self._client.model_name(model),
            adapter=self._adapter(adapter),
            prompt=prompt,
            parameters=generation_parameters(**params),
            backend=backend_value(backend),
            stream_options=stream_options(stream, stream_interval_ms),
        )
        if stream:
            return GenerationStream(
                self._stub.GenerateStream(request, timeout=self._timeout(timeout_s))
            )
        return call(self._stub.Generate, request, self._timeout(timeout_s))

    @overload
    def chat(
        self,
        model: str,
        messages: Sequence[Message],
        *,
        adapter: str | None = ...,
        stream: Literal[False] = ...,
        backend: str | None = ...,
        timeout_s: float | None = ...,
        stream_interval_ms: int | None = ...,
        **params: Any,
    ) -> pb.GenerateResponse: ...

    @overload
    def chat(
        self,
        model: str,
        messages: Sequence[Message],
        *,
        adapter: str | None = ...,
        stream: Literal[True],
        backend: str | None = ...,
        timeout_s: float | None = ...,
        stream_interval_ms: int | None = ...,
        **params: Any,
    ) -> GenerationStream: ...

    def chat(
        self,
        model: str,
        messages: Sequence[Message],
        *,
        adapter: str | None = None,
        stream: bool = False,
        backend: str | None = None,
        timeout_s: float | None = None,
        stream_interval_ms: int | None = None,
        **params: Any,
    ) -> pb.GenerateResponse | GenerationStream:
        """The assistant's next reply to `messages` ({"role", "content"} mappings or
        ChatMessage), rendered with the model's chat template. `stream` and
        `stream_interval_ms` are those of `generate`."""
        request = pb.ChatRequest(
            model=self._client.model_name(model),
            adapter=self._adapter(adapter),
            messages=chat_messages(messages),
            parameters=generation_parameters(**params),
            backend=backend_value(backend),
            stream_options=stream_options(stream, stream_interval_ms),
        )
        if stream:
            return GenerationStream(
                self._stub.ChatStream(request, timeout=self._timeout(timeout_s))
            )
        return call(self._stub.Chat, request, self._timeout(timeout_s))

    def load(
        self, model: str, adapters: Sequence[str] = (), backend: str | None = None
    ) -> pb.ServedModel:
        """Loads `model` (and `adapters` onto it) now instead of on first use."""
        request = pb.LoadModelRequest(
            model=self._client.model_name(model),
            adapters=[self._client.model_name(a) for a in adapters],
            backend=backend_value(backend),
        )
        return call(self._stub.LoadModel, request, self._client.config.long_timeout_s)

    def unload(self, model: str) -> None:
        request = pb.UnloadModelRequest(model=self._client.model_name(model))
        call(self._stub.UnloadModel, request, self._client.config.timeout_s)

    def list(self, page_size: int = 0) -> Iterator[pb.ServedModel]:
        """Every model the inference service holds, with its state and loaded adapters."""
        return pages(
            self._stub.ListServedModels,
            lambda token: pb.ListServedModelsRequest(page_size=page_size, page_token=token),
            "served_models",
            self._client.config.timeout_s,
        )

    def get(self, model: str) -> pb.ServedModel | None:
        """The served model `model`, or None when the service does not hold it."""
        name = self._client.model_name(model)
        return next((m for m in self.list() if m.model == name), None)


__all__ = ["GenerationStream", "Inference", "generation_parameters"]
