"""The Open Inference Protocol (KServe V2) on the inference service's port: what a KServe or
Triton client sends (raw or typed BYTES tensors) gets the same text as the native API."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import scratch_bucket

from services.common.settings import StoreSettings
from tuneforge import Client
from tuneforge.oip.v2 import open_inference_pb2 as oip
from tuneforge.oip.v2 import open_inference_pb2_grpc as oip_grpc
from tuneforge.testing import local_services

PROMPTS = ["The capital of France is", "One, two, three,"]


@pytest.fixture(scope="module")
def served(
    store_settings: StoreSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Client, oip_grpc.GRPCInferenceServiceStub]]:
    home = tmp_path_factory.mktemp("oip")
    with (
        scratch_bucket(store_settings, "oip") as bucket,
        local_services(bucket, home, services=["training", "inference"]) as client,
    ):
        client.models.import_model("tiny", preset="tiny-llama")
        with grpc.insecure_channel(client.targets["inference"]) as channel:
            yield client, oip_grpc.GRPCInferenceServiceStub(channel)


def raw_bytes(*elements: str) -> bytes:
    """A BYTES tensor as Triton's client serializes it: length-prefixed elements."""
    return b"".join(struct.pack("<I", len(e.encode())) + e.encode() for e in elements)


def parse_raw(raw: bytes) -> list[str]:
    out, offset = [], 0
    while offset < len(raw):
        (size,) = struct.unpack_from("<I", raw, offset)
        out.append(raw[offset + 4 : offset + 4 + size].decode())
        offset += 4 + size
    return out


def max_tokens(n: int) -> dict[str, oip.InferParameter]:
    return {"max_tokens": oip.InferParameter(int64_param=n)}


def test_raw_and_typed_bytes_requests_answer_like_the_native_api(served) -> None:  # type: ignore[no-untyped-def]
    client, stub = served
    expected = [client.inference.generate("tiny", p, max_tokens=8).text for p in PROMPTS]

    raw = stub.ModelInfer(
        oip.ModelInferRequest(
            model_name="tiny",
            id="req-1",
            parameters=max_tokens(8),
            inputs=[
                oip.ModelInferRequest.InferInputTensor(
                    name="text_input", datatype="BYTES", shape=[len(PROMPTS)]
                )
            ],
            raw_input_contents=[raw_bytes(*PROMPTS)],
        ),
        timeout=120,
    )
    assert raw.id == "req-1" and raw.model_name == "tiny"
    assert raw.outputs[0].name == "text_output" and raw.outputs[0].datatype == "BYTES"
    assert list(raw.outputs[0].shape) == [2]
    assert parse_raw(raw.raw_output_contents[0]) == expected

    typed = stub.ModelInfer(
        oip.ModelInferRequest(
            model_name="projects/default/models/tiny",
            parameters=max_tokens(8),
            inputs=[
                oip.ModelInferRequest.InferInputTensor(
                    name="text_input",
                    datatype="BYTES",
                    shape=[1],
                    contents=oip.InferTensorContents(bytes_contents=[PROMPTS[0].encode()]),
                )
            ],
        ),
        timeout=120,
    )
    assert parse_raw(typed.raw_output_contents[0]) == expected[:1]


def test_health_readiness_and_metadata(served) -> None:  # type: ignore[no-untyped-def]
    client, stub = served
    assert stub.ServerLive(oip.ServerLiveRequest(), timeout=5).live
    assert stub.ServerReady(oip.ServerReadyRequest(), timeout=5).ready
    assert stub.ServerMetadata(oip.ServerMetadataRequest(), timeout=5).name == "tuneforge"

    client.inference.unload("tiny")
    assert not stub.ModelReady(oip.ModelReadyRequest(name="tiny"), timeout=5).ready
    client.inference.load("tiny")
    assert stub.ModelReady(oip.ModelReadyRequest(name="tiny"), timeout=5).ready

    meta = stub.ModelMetadata(oip.ModelMetadataRequest(name="tiny"), timeout=5)
    assert meta.platform == "pytorch_peft" and len(meta.versions) == 1
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("text_input", "BYTES", [-1])
    ]
    assert [t.name for t in meta.outputs] == ["text_output"]


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (oip.ModelInferRequest(model_name="missing"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            oip.ModelInferRequest(
                model_name="missing",
                inputs=[
                    oip.ModelInferRequest.InferInputTensor(
                        name="text_input",
                        datatype="BYTES",
                        shape=[1],
                        contents=oip.InferTensorContents(bytes_contents=[b"hi"]),
                    )
                ],
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            oip.ModelInferRequest(
                model_name="tiny",
                inputs=[
                    oip.ModelInferRequest.InferInputTensor(
                        name="text_input",
                        datatype="FP32",
                        shape=[1],
                        contents=oip.InferTensorContents(fp32_contents=[1.0]),
                    )
                ],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            oip.ModelInferRequest(
                model_name="tiny",
                parameters={"beam_width": oip.InferParameter(int64_param=4)},
                inputs=[
                    oip.ModelInferRequest.InferInputTensor(
                        name="text_input",
                        datatype="BYTES",
                        shape=[1],
                        contents=oip.InferTensorContents(bytes_contents=[b"hi"]),
                    )
                ],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
    ids=["no-input", "unknown-model", "not-bytes", "unknown-parameter"],
)
def test_bad_requests_get_clear_errors(served, request_, code) -> None:  # type: ignore[no-untyped-def]
    _client, stub = served
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request_, timeout=30)
    assert caught.value.code() == code


def test_nothing_is_left_in_the_queue(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client, _ = served
    listed = {m.model: m for m in client.inference.list()}
    tiny = listed["projects/default/models/tiny"]
    assert tiny.active_requests == 0 and tiny.queued_requests == 0
