"""The Open Inference Protocol (KServe V2) on the inference service's port, for KServe and Triton
clients: text in a BYTES tensor "text_input", text out in "text_output".

A request's parameters map onto GenerationParameters (max_tokens, temperature, top_p, top_k, seed,
repetition_penalty, stop) plus `adapter`, a catalog adapter applied for that request. Each element
of "text_input" is one prompt; they are generated concurrently (as separate requests of the
model's queue) and answered in order.
"""

from __future__ import annotations

import asyncio
import struct
from importlib import metadata

import grpc

from services.common.errors import InvalidArgument, TuneforgeError
from services.common.model_files import read_model_manifest
from services.inference.engine import Backend
from services.inference.generation import GenerationParams
from services.inference.served_models import READY, Prompt, ServedModels, backend_of
from services.inference.servicer import collect
from tuneforge.oip.v2 import open_inference_pb2 as pb
from tuneforge.oip.v2 import open_inference_pb2_grpc as pb_grpc

INPUT = "text_input"
OUTPUT = "text_output"
BYTES = "BYTES"
PLATFORMS = {Backend.PYTORCH: "pytorch_peft", Backend.ONNX_RUNTIME: "onnxruntime_genai"}
_INT_PARAMETERS = ("max_tokens", "top_k", "seed")
_FLOAT_PARAMETERS = ("temperature", "top_p", "repetition_penalty")


def decode_bytes_tensor(raw: bytes, field: str) -> list[bytes]:
    """Elements of a raw BYTES tensor: each a 4-byte little-endian length, then its bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidArgument("a BYTES element's length is cut short", field=field)
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InvalidArgument("a BYTES element is shorter than its length", field=field)
        elements.append(raw[offset : offset + size])
        offset += size
    return elements


def encode_bytes_tensor(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _parameter(value: pb.InferParameter) -> bool | int | float | str:
    kind = value.WhichOneof("parameter_choice")
    return getattr(value, kind) if kind else ""


def generation_params(parameters: dict[str, pb.InferParameter]) -> tuple[GenerationParams, str]:
    """GenerationParams and the adapter from a request's parameters."""
    values = {key: _parameter(value) for key, value in parameters.items()}
    known = {*_INT_PARAMETERS, *_FLOAT_PARAMETERS, "stop", "adapter"}
    for key in values:
        if key not in known:
            raise InvalidArgument(
                f"unknown parameter {key!r}; known: {', '.join(sorted(known))}",
                field=f"parameters.{key}",
            )
    try:
        ints = {k: int(values[k]) for k in _INT_PARAMETERS if k in values}
        floats = {k: float(values[k]) for k in _FLOAT_PARAMETERS if k in values}
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"a parameter is not a number: {exc}", field="parameters") from exc
    stop = values.get("stop", "")
    params = GenerationParams(
        max_tokens=ints.get("max_tokens", 0),
        temperature=floats.get("temperature"),
        top_p=floats.get("top_p"),
        top_k=ints.get("top_k"),
        stop=(str(stop),) if stop else (),
        seed=ints.get("seed"),
        repetition_penalty=floats.get("repetition_penalty"),
    )
    return params, str(values.get("adapter", ""))


def prompts_of(request: pb.ModelInferRequest) -> list[str]:
    """The prompts of the request's "text_input" tensor (contents or raw)."""
    for index, tensor in enumerate(request.inputs):
        if tensor.name != INPUT:
            continue
        field = f"inputs[{index}]"
        if tensor.datatype != BYTES:
            raise InvalidArgument(f"{INPUT} must be {BYTES}, not {tensor.datatype}", field=field)
        if request.raw_input_contents:
            if index >= len(request.raw_input_contents):
                raise InvalidArgument("raw_input_contents lacks this input", field=field)
            raw = decode_bytes_tensor(request.raw_input_contents[index], field)
        else:
            raw = list(tensor.contents.bytes_contents)
        if not raw:
            raise InvalidArgument(f"{INPUT} holds no prompt", field=field)
        try:
            return [element.decode("utf-8") for element in raw]
        except UnicodeDecodeError as exc:
            raise InvalidArgument(f"{INPUT} is not UTF-8: {exc}", field=field) from exc
    raise InvalidArgument(f"the request needs a {BYTES} input named {INPUT}", field="inputs")


class OpenInferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, models: ServedModels) -> None:
        self.models = models

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        # Serving requests: models load from the catalog on their first request.
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        try:
            version = metadata.version("tuneforge")
        except metadata.PackageNotFoundError:
            version = ""
        return pb.ServerMetadataResponse(name="tuneforge", version=version, extensions=[])

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        name = self.models.resource_name(request.name, "name")
        loaded = {served.name: served for served in self.models.list()}
        if name not in loaded:
            await asyncio.to_thread(read_model_manifest, self.models.store, name, "name")
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=loaded[name].state == READY)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        name = self.models.resource_name(request.name, "name")
        manifest = await asyncio.to_thread(read_model_manifest, self.models.store, name, "name")
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=[manifest.sha256()[:12]],
            platform=PLATFORMS[backend_of(manifest)],
            inputs=[tensor(name=INPUT, datatype=BYTES, shape=[-1])],
            outputs=[tensor(name=OUTPUT, datatype=BYTES, shape=[-1])],
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        prompts = prompts_of(request)
        params, adapter = generation_params(dict(request.parameters))
        wanted = [o.name for o in request.outputs]
        if any(name != OUTPUT for name in wanted):
            raise InvalidArgument(f"the only output is {OUTPUT}", field="outputs")
        submitted = []
        try:
            for prompt in prompts:
                submitted.append(
                    await self.models.submit(
                        request.model_name, adapter, None, Prompt(text=prompt), params
                    )
                )
            replies = await asyncio.gather(*(collect(job, served) for job, served in submitted))
        except (TuneforgeError, asyncio.CancelledError):
            for job, _ in submitted:
                job.cancel()
            raise
        output = pb.ModelInferResponse.InferOutputTensor(
            name=OUTPUT, datatype=BYTES, shape=[len(replies)]
        )
        return pb.ModelInferResponse(
            model_name=request.model_name,
            model_version=request.model_version,
            id=request.id,
            outputs=[output],
            raw_output_contents=[encode_bytes_tensor([r.text.encode() for r in replies])],
        )
