"""The inference service on tiny models, against the real object store: adapters chosen per
request and interleaved, each answer equal to plain peft's; streaming, stop sequences and limits;
bounded queues, cancellation and deadlines; manifest checks; ONNX Runtime parity; the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from services.common.artifact_store import ArtifactStore
from services.common.manifest import Manifest
from services.common.resource_names import ResourceName
from services.common.settings import StoreSettings
from services.inference.text_stream import StopSequences, TextAssembler
from services.training.model_catalog import ModelCatalog, ModelSource
from services.training.model_presets import _tiny_dims, build_tokenizer
from services.training.worker.output import COPIED_BASE_ATTRIBUTES, copy_tokenizer
from tuneforge import Client, TuneforgeError
from tuneforge.inference.v1 import inference_service_pb2 as pb
from tuneforge.testing import local_services

PROMPT = "The quick brown fox"
LONG_PROMPT = "Tell me a long story."
# Far more than a test waits for: requests for the "long" model are always cancelled.
ENDLESS = 6000
ENV = "TUNEFORGE_INFERENCE_"


def full(model_id: str) -> str:
    return f"projects/default/models/{model_id}"


# --- the catalog: a base, adapters, a long-context model, another base, an ONNX export -------


@dataclass
class Catalog:
    store: StoreSettings
    base_dir: Path
    adapter_dirs: dict[str, Path]


def _publish(store: ArtifactStore, model_id: str, directory: Path, manifest: Manifest) -> None:
    prefix = f"models/default/{model_id}/"
    files = store.upload_dir(directory, prefix)
    store.write_manifest(prefix, manifest.model_copy(update={"files": files}))


def publish_adapter(
    store: ArtifactStore,
    adapter_id: str,
    directory: Path,
    base: Manifest,
    **attribute_overrides: Any,
) -> None:
    """Registers an adapter the way the training worker's output.publish does."""
    attributes = {k: base.attributes[k] for k in COPIED_BASE_ATTRIBUTES if k in base.attributes}
    attributes.update(
        model_kind="ADAPTER",
        base_model=base.name,
        method="lora",
        display_name=adapter_id,
        source="test",
        source_kind="job",
    )
    attributes.update(attribute_overrides)
    lineage = {
        "base_model": base.name,
        "base_model_sha256": base.sha256(),
        "tokenizer_sha256": attributes.get("tokenizer_sha256", ""),
        "chat_template_sha256": attributes.get("chat_template_sha256", ""),
    }
    manifest = Manifest(
        kind="model",
        name=full(adapter_id),
        format="peft",
        lineage=lineage,
        attributes=attributes,
    )
    _publish(store, adapter_id, directory, manifest)


def make_adapter(base_dir: Path, out: Path, seed: int, targets: list[str]) -> Path:
    """A LoRA adapter with random (not zero) B matrices, so it changes the output."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(out))
    copy_tokenizer(base_dir, out)
    return out


def download(store: ArtifactStore, model_id: str, dest: Path) -> Path:
    manifest = store.read_manifest(f"models/default/{model_id}/")
    assert manifest is not None
    for f in manifest.files:
        store.get_file(f"models/default/{model_id}/{f.path}", dest / f.path)
    return dest


def long_context_model(out: Path) -> Path:
    """The tiny Llama with 8192 positions: room for requests that run until cancelled."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = build_tokenizer()
    dims = _tiny_dims(tokenizer) | {"max_position_embeddings": 8192}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**dims), dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def catalog(
    store_settings: StoreSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Catalog]:
    work = tmp_path_factory.mktemp("inference-catalog")
    settings = store_settings.model_copy(update={"bucket": f"inf-{uuid.uuid4().hex[:12]}"})
    store = ArtifactStore(settings)
    store.ensure_bucket()  # removed with its objects at the end
    models = ModelCatalog(store, work / "work")
    long_src = str(long_context_model(work / "long-src"))
    for model_id, source in (
        ("tiny", ModelSource("preset", "tiny-llama")),
        ("phi", ModelSource("preset", "tiny-phi3")),
        ("long", ModelSource("hf_dir", long_src)),
    ):
        models.import_model(ResourceName("default", "models", model_id), source)
    base = store.read_manifest("models/default/tiny/")
    phi = store.read_manifest("models/default/phi/")
    assert base is not None and phi is not None
    base_dir = download(store, "tiny", work / "tiny")
    phi_dir = download(store, "phi", work / "phi")
    adapters = {
        "a1": make_adapter(base_dir, work / "a1", 1, ["q_proj", "v_proj"]),
        "a2": make_adapter(base_dir, work / "a2", 2, ["q_proj", "o_proj", "down_proj"]),
    }
    for adapter_id, directory in adapters.items():
        publish_adapter(store, adapter_id, directory, base)
    # Trained on another base model (both presets share the tokenizer: only the base differs).
    phi_adapter = make_adapter(phi_dir, work / "phi-lora", 3, ["qkv_proj", "o_proj"])
    publish_adapter(store, "phi-lora", phi_adapter, phi)
    # Claims the right base, but was trained with another tokenizer.
    publish_adapter(store, "a1-other-tokenizer", adapters["a1"], base, tokenizer_sha256="0" * 64)
    torch_threads = torch.get_num_threads()
    try:
        yield Catalog(settings, base_dir, adapters)
    finally:
        torch.set_num_threads(torch_threads)
        with contextlib.suppress(Exception):
            store.remove_bucket()
        store.close()


@contextmanager
def inference_service(catalog: Catalog, home: Path, **limits: int) -> Iterator[Client]:
    """The inference service alone, with its TUNEFORGE_INFERENCE_* settings from `limits`.

    One torch thread: tiny models decode ~15x faster that way on a busy 2-core machine (and the
    setting is process-wide, so the catalog fixture restores torch's own afterwards).
    """
    values = {"TORCH_THREADS": 1} | {k.upper(): v for k, v in limits.items()}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(ENV + key, str(value))
        with local_services(catalog.store, home, services=["inference"]) as client:
            yield client


@pytest.fixture(scope="module")
def client(catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    with inference_service(catalog, tmp_path_factory.mktemp("inference-home")) as c:
        yield c


@pytest.fixture
def narrow(catalog: Catalog, tmp_path: Path) -> Callable[..., AbstractContextManager[Client]]:
    """Starts a service of its own with small limits (max_active_requests=1, ...)."""

    def start(**limits: int) -> AbstractContextManager[Client]:
        return inference_service(catalog, tmp_path / uuid.uuid4().hex[:8], **limits)

    return start


# --- what plain transformers + peft produce ---------------------------------------------------


@dataclass(frozen=True)
class Expected:
    text: str
    completion_tokens: int
    finish_reason: str


_REFERENCES: dict[tuple[Any, ...], Expected] = {}


def reference(
    catalog: Catalog,
    adapter: str | None,
    *,
    prompt: str | None = None,
    messages: list[dict[str, str]] | None = None,
    max_tokens: int,
    **generate_kwargs: Any,
) -> Expected:
    """Greedy output of `model.generate()` with plain peft, decoded by transformers."""
    key = (adapter, prompt, json.dumps(messages), max_tokens, json.dumps(generate_kwargs))
    if key in _REFERENCES:
        return _REFERENCES[key]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(catalog.base_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(catalog.base_dir).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, catalog.adapter_dirs[adapter]).eval()
    if messages is not None:
        encoded: Any = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        ids = list(encoded["input_ids"])
    else:
        ids = tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False, **generate_kwargs
        )
    new = out[0, len(ids) :].tolist()
    ended = new[-1] == tokenizer.eos_token_id
    expected = Expected(
        text=str(tokenizer.decode(new, skip_special_tokens=True)),
        completion_tokens=len(new),
        finish_reason="STOP" if ended else "LENGTH",
    )
    _REFERENCES[key] = expected
    return expected


def finish(reply: Any) -> str:
    return pb.FinishReason.Name(reply.finish_reason)


def json_documents(text: str) -> list[dict[str, Any]]:
    """The JSON documents printed one after the other (--json with --stream)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        document, at = decoder.raw_decode(text, at)
        found.append(document)
    return found


def served(client: Client, model: str) -> Any:
    found = client.inference.get(model)
    assert found is not None, f"{model} is not served"
    return found


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> float:
    """Seconds until `predicate()` held (fails the test after `timeout_s`)."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, "condition not reached in time"
        time.sleep(0.02)
    return time.monotonic() - started


# --- text assembly, without a server ---------------------------------------------------------


def test_streamed_text_never_splits_a_character_and_cuts_stop_sequences() -> None:
    tokenizer = build_tokenizer()
    text = "héllo wörld ✓ done"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) > len(text)  # byte-level: multi-byte characters span several tokens

    def decode(seq: Any) -> str:
        return str(tokenizer.decode(list(seq), skip_special_tokens=True))

    plain = TextAssembler(decode, [])
    deltas = [plain.push(i) for i in ids] + [plain.flush()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)

    stopping = TextAssembler(decode, ["rld ✓", "zzz"])
    out = ""
    for i in ids:
        out += stopping.push(i)
        if stopping.stopped:
            break
    assert stopping.stopped and out == "héllo wö"

    held = StopSequences(["xyz"])
    assert held.push("abcx") == "abc"  # "x" may begin "xyz"
    assert held.push("y") == ""
    assert held.push("q") == "xyq"
    assert held.flush() == "" and not held.stopped


# --- generation --------------------------------------------------------------------------------


def test_two_adapters_interleave_and_each_matches_plain_peft(
    client: Client, catalog: Catalog
) -> None:
    max_tokens = 120
    targets: list[str | None] = [None, "a1", "a2"]
    expected = {t: reference(catalog, t, prompt=PROMPT, max_tokens=max_tokens) for t in targets}
    assert len({e.text for e in expected.values()}) == 3  # the adapters do change the output
    client.inference.load("tiny", adapters=["a1", "a2"])

    timelines: dict[str | None, list[tuple[float, str]]] = {t: [] for t in targets}
    finals: dict[str | None, Any] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def consume(adapter: str | None) -> None:
        try:
            barrier.wait()
            stream = client.inference.generate(
                "tiny", PROMPT, adapter=adapter, stream=True, max_tokens=max_tokens, temperature=0
            )
            for message in stream:
                timelines[adapter].append((time.monotonic(), message.text))
            finals[adapter] = stream
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for adapter in targets:
        stream = finals[adapter]
        assert stream.text == expected[adapter].text, adapter
        assert stream.usage.completion_tokens == expected[adapter].completion_tokens
        assert stream.finish_reason == expected[adapter].finish_reason
    # Interleaved, not one after the other: every stream began before any of them ended.
    starts = [timelines[t][0][0] for t in targets]
    ends = [timelines[t][-1][0] for t in targets]
    assert max(starts) < min(ends)

    # Unary answers agree too, and the model reports both adapters loaded.
    for adapter in targets:
        reply = client.inference.generate(
            "tiny", PROMPT, adapter=adapter, max_tokens=max_tokens, temperature=0
        )
        assert reply.text == expected[adapter].text
        assert reply.adapter == (full(adapter) if adapter else "")
    assert set(served(client, "tiny").adapters) == {full("a1"), full("a2")}


def test_streamed_text_equals_the_unary_text_and_the_last_message_ends_it(
    client: Client,
) -> None:
    params: dict[str, Any] = {"max_tokens": 40, "temperature": 0.8, "top_k": 40, "seed": 11}
    unary = client.inference.generate("tiny", PROMPT, adapter="a1", **params)
    again = client.inference.generate("tiny", PROMPT, adapter="a1", **params)
    assert again.text == unary.text  # same seed, same text
    stream = client.inference.generate("tiny", PROMPT, adapter="a1", stream=True, **params)
    messages = list(stream)
    assert "".join(m.text for m in messages) == unary.text
    assert [bool(m.finish_reason) for m in messages] == [False] * (len(messages) - 1) + [True]
    assert messages[-1].usage == unary.usage
    assert unary.usage.total_tokens == unary.usage.prompt_tokens + unary.usage.completion_tokens
    assert unary.time_to_first_token_seconds > 0 and unary.tokens_per_second > 0
    assert len(messages) > 10  # a message per token (or a few joined, if the reader lagged)

    # A stream interval longer than the whole generation: the first text comes at once, the
    # rest joined with the end, which is never held.
    paced = client.inference.generate(
        "tiny", PROMPT, adapter="a1", stream=True, stream_interval_ms=10_000, **params
    )
    started = time.monotonic()
    messages = list(paced)
    assert time.monotonic() - started < 5
    assert len(messages) <= 2 and messages[-1].finish_reason
    assert "".join(m.text for m in messages) == unary.text
    chat = client.inference.chat(
        "tiny", [{"role": "user", "content": "hi"}], stream=True, stream_interval_ms=10_000
    )
    assert len(list(chat)) <= 2 and chat.finish_reason


def test_chat_renders_the_template_like_transformers(client: Client, catalog: Catalog) -> None:
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Name a colour."},
    ]
    expected = reference(catalog, "a2", messages=messages, max_tokens=30)
    reply = client.inference.chat("tiny", messages, adapter="a2", max_tokens=30, temperature=0)
    assert reply.text == expected.text
    assert reply.usage.completion_tokens == expected.completion_tokens
    stream = client.inference.chat(
        "tiny", messages, adapter="a2", stream=True, max_tokens=30, temperature=0
    )
    assert "".join(m.text for m in stream) == reply.text


def test_repetition_penalty_matches_transformers(client: Client, catalog: Catalog) -> None:
    expected = reference(catalog, None, prompt=PROMPT, max_tokens=40, repetition_penalty=1.5)
    reply = client.inference.generate(
        "tiny", PROMPT, max_tokens=40, temperature=0, repetition_penalty=1.5
    )
    assert reply.text == expected.text


def test_max_tokens_and_stop_sequences_end_the_reply(client: Client, catalog: Catalog) -> None:
    short = client.inference.generate("tiny", PROMPT, adapter="a1", max_tokens=5, temperature=0)
    assert finish(short) == "LENGTH" and short.usage.completion_tokens == 5

    whole = reference(catalog, "a1", prompt=PROMPT, max_tokens=60).text
    # A stop sequence of two characters: it spans two byte tokens, so it is held back across a
    # token boundary before it is recognised.
    start = next(i for i in range(4, len(whole) - 2) if "\ufffd" not in whole[i : i + 2])
    stop = whole[start : start + 2]
    cut = whole[: whole.index(stop)]
    reply = client.inference.generate(
        "tiny", PROMPT, adapter="a1", max_tokens=60, temperature=0, stop=[stop, "never-seen"]
    )
    assert finish(reply) == "STOP_SEQUENCE"
    assert reply.text == cut and stop not in reply.text
    stream = client.inference.generate(
        "tiny", PROMPT, adapter="a1", stream=True, max_tokens=60, temperature=0, stop=stop
    )
    assert "".join(m.text for m in stream) == cut
    assert stream.finish_reason == "STOP_SEQUENCE"


def test_new_adapters_merged_models_and_adapters_named_as_the_model(
    client: Client, catalog: Catalog, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    expected = reference(catalog, "a1", prompt=PROMPT, max_tokens=20).text
    reply = client.inference.generate("a1", PROMPT, max_tokens=20, temperature=0)
    assert reply.model == full("tiny") and reply.adapter == full("a1")
    assert reply.text == expected

    # Published while the service runs: found on first use, no restart.
    store = ArtifactStore(catalog.store)
    base = store.read_manifest("models/default/tiny/")
    assert base is not None
    publish_adapter(store, "a1-copy", catalog.adapter_dirs["a1"], base)
    copy = client.inference.generate(
        "tiny", PROMPT, adapter="a1-copy", max_tokens=20, temperature=0
    )
    assert copy.text == expected

    # The adapter merged into full weights is served as a base model of its own.
    merged_dir = tmp_path / "merged"
    model = AutoModelForCausalLM.from_pretrained(catalog.base_dir)
    PeftModel.from_pretrained(model, catalog.adapter_dirs["a1"]).merge_and_unload().save_pretrained(
        merged_dir
    )
    copy_tokenizer(catalog.base_dir, merged_dir)
    attributes = dict(base.attributes, model_kind="MERGED", base_model=base.name)
    merged_manifest = Manifest(
        kind="model", name=full("a1-merged"), format="safetensors", attributes=attributes
    )
    _publish(store, "a1-merged", merged_dir, merged_manifest)
    store.close()
    merged = client.inference.generate("a1-merged", PROMPT, max_tokens=20, temperature=0)
    assert merged.model == full("a1-merged") and merged.adapter == ""
    assert merged.text == expected


# --- errors ------------------------------------------------------------------------------------


def test_an_adapter_for_another_base_or_tokenizer_is_refused(client: Client) -> None:
    with pytest.raises(TuneforgeError) as wrong_base:
        client.inference.generate("tiny", PROMPT, adapter="phi-lora", max_tokens=3)
    assert wrong_base.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert wrong_base.value.reason == "ADAPTER_BASE_MISMATCH"
    assert wrong_base.value.metadata["adapter_base_model"] == full("phi")
    assert "trained on projects/default/models/phi" in wrong_base.value.message

    with pytest.raises(TuneforgeError) as wrong_tokenizer:
        client.inference.chat(
            "tiny", [{"role": "user", "content": "hi"}], adapter="a1-other-tokenizer"
        )
    assert wrong_tokenizer.value.reason == "ADAPTER_BASE_MISMATCH"
    assert "tokenizer" in wrong_tokenizer.value.message


def test_unknown_models_and_bad_parameters(client: Client) -> None:
    with pytest.raises(TuneforgeError) as unknown:
        client.inference.generate("no-such-model", PROMPT)
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND
    assert unknown.value.reason == "RESOURCE_NOT_FOUND"
    assert unknown.value.metadata["resource"] == full("no-such-model")

    with pytest.raises(TuneforgeError) as unknown_adapter:
        client.inference.generate("tiny", PROMPT, adapter="no-such-adapter")
    assert unknown_adapter.value.code == grpc.StatusCode.NOT_FOUND

    with pytest.raises(TuneforgeError) as bad:
        client.inference.generate("tiny", PROMPT, top_p=1.5)
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.value.metadata["field"] == "parameters.top_p"

    with pytest.raises(TuneforgeError) as bad_interval:
        list(client.inference.generate("tiny", PROMPT, stream=True, stream_interval_ms=10_001))
    assert bad_interval.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_interval.value.metadata["field"] == "stream_options.interval_ms"
    with pytest.raises(ValueError, match="stream=True"):
        client.inference.generate("tiny", PROMPT, stream_interval_ms=50)  # not a stream

    with pytest.raises(TuneforgeError) as too_long:
        client.inference.generate("tiny", "x" * 600)  # the tiny model has 512 positions
    assert too_long.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert too_long.value.metadata["field"] == "prompt"
    assert too_long.value.metadata["context_length"] == "512"

    with pytest.raises(TuneforgeError) as not_served:
        client.inference.unload("no-such-model")
    assert not_served.value.code == grpc.StatusCode.NOT_FOUND


def test_a_model_that_cannot_load_is_failed_with_its_reason(
    client: Client, catalog: Catalog, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(catalog.base_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    store = ArtifactStore(catalog.store)
    base = store.read_manifest("models/default/tiny/")
    assert base is not None
    manifest = Manifest(
        kind="model", name=full("broken"), format="safetensors", attributes=base.attributes
    )
    _publish(store, "broken", broken, manifest)
    store.close()
    with pytest.raises(TuneforgeError) as failed:
        client.inference.generate("broken", PROMPT, max_tokens=2)
    assert failed.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failed.value.reason == "MODEL_NOT_READY"
    state = served(client, "broken")
    assert state.state == state.FAILED and "could not be loaded" in state.error.message
    client.inference.unload("broken")


def test_the_service_stream_interval_and_a_request_that_overrides_it(
    narrow: Callable[..., Any],
) -> None:
    params: dict[str, Any] = {"max_tokens": 40, "temperature": 0}
    with narrow(stream_interval_ms=10_000) as c:
        paced = list(c.inference.generate("tiny", PROMPT, adapter="a1", stream=True, **params))
        assert len(paced) <= 2 and paced[-1].finish_reason  # the setting holds the text
        # A request's 0 (set, not unset) is a message per token despite the setting.
        every = list(
            c.inference.generate(
                "tiny", PROMPT, adapter="a1", stream=True, stream_interval_ms=0, **params
            )
        )
        assert len(every) > 10
        assert "".join(m.text for m in every) == "".join(m.text for m in paced)


# --- limits: queue, cancellation, deadlines, adapter cache -----------------------------------


def test_a_full_queue_answers_resource_exhausted(narrow: Callable[..., Any]) -> None:
    with narrow(max_active_requests=1, max_queued_requests=1) as c:
        running = c.inference.generate(
            "long", LONG_PROMPT, stream=True, max_tokens=ENDLESS, temperature=0
        )
        chunks = iter(running)  # kept: dropping a half-read iterator cancels the stream
        next(chunks)
        waiting = c.inference.generate(
            "long", LONG_PROMPT, stream=True, max_tokens=ENDLESS, temperature=0
        )
        wait_until(lambda: served(c, "long").queued_requests == 1)
        with pytest.raises(TuneforgeError) as full_queue:
            c.inference.generate("long", LONG_PROMPT, max_tokens=3)
        assert full_queue.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert full_queue.value.reason == "QUEUE_FULL"
        assert full_queue.value.metadata["max_queued_requests"] == "1"
        running.cancel()
        waiting.cancel()
        wait_until(lambda: served(c, "long").active_requests == 0)
        assert served(c, "long").queued_requests == 0


def test_a_cancelled_stream_or_an_expired_deadline_frees_the_slot_at_once(
    narrow: Callable[..., Any],
) -> None:
    with narrow(max_active_requests=1, max_queued_requests=0) as c:
        stream = c.inference.generate(
            "long", LONG_PROMPT, stream=True, max_tokens=ENDLESS, temperature=0
        )
        chunks = iter(stream)
        next(chunks)
        assert served(c, "long").active_requests == 1
        stream.cancel()
        # The request would run for thousands of tokens; its slot is free well before.
        assert wait_until(lambda: served(c, "long").active_requests == 0) < 2.0
        reply = c.inference.generate("long", LONG_PROMPT, max_tokens=3, temperature=0)
        assert reply.usage.completion_tokens == 3

        with pytest.raises(TuneforgeError) as late:
            c.inference.generate("long", LONG_PROMPT, max_tokens=ENDLESS, timeout_s=0.5)
        assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_until(lambda: served(c, "long").active_requests == 0) < 2.0
        assert c.inference.generate("long", LONG_PROMPT, max_tokens=2).usage.completion_tokens


def test_load_unload_and_least_recently_used_adapters(
    narrow: Callable[..., Any], catalog: Catalog
) -> None:
    with narrow(max_adapters_per_model=1) as c:
        loaded = c.inference.load("tiny", adapters=["a1"])
        assert loaded.state == loaded.READY and list(loaded.adapters) == [full("a1")]
        c.inference.generate("tiny", PROMPT, adapter="a2", max_tokens=2)
        assert list(served(c, "tiny").adapters) == [full("a2")]  # a1 evicted
        again = c.inference.generate("tiny", PROMPT, adapter="a1", max_tokens=20, temperature=0)
        assert again.text == reference(catalog, "a1", prompt=PROMPT, max_tokens=20).text
        assert list(served(c, "tiny").adapters) == [full("a1")]

        c.inference.unload("tiny")
        assert c.inference.get("tiny") is None
        with pytest.raises(TuneforgeError) as gone:
            c.inference.unload("tiny")
        assert gone.value.code == grpc.StatusCode.NOT_FOUND


# --- ONNX Runtime GenAI ---------------------------------------------------------------------


def test_onnx_fp32_greedy_output_equals_pytorch(
    client: Client, catalog: Catalog, tmp_path: Path
) -> None:
    out = tmp_path / "onnx"
    build = subprocess.run(
        [
            sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(catalog.base_dir),
            "-o", str(out), "-p", "fp32", "-e", "cpu", "-c", str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    store = ArtifactStore(catalog.store)
    base = store.read_manifest("models/default/tiny/")
    assert base is not None
    attributes = dict(base.attributes, model_kind="ONNX", base_model=base.name, source="test")
    manifest = Manifest(
        kind="model",
        name=full("tiny-onnx"),
        format="onnx-genai",
        lineage={"base_model": base.name, "base_model_sha256": base.sha256()},
        attributes=attributes,
    )
    _publish(store, "tiny-onnx", out, manifest)
    store.close()

    torch_reply = client.inference.generate("tiny", PROMPT, max_tokens=60, temperature=0)
    onnx_reply = client.inference.generate("tiny-onnx", PROMPT, max_tokens=60, temperature=0)
    assert onnx_reply.text == torch_reply.text
    assert onnx_reply.usage == torch_reply.usage
    assert onnx_reply.backend == pb.ONNX_RUNTIME and torch_reply.backend == pb.PYTORCH
    chat = [{"role": "user", "content": "Hello"}]
    assert (
        client.inference.chat("tiny-onnx", chat, max_tokens=20, temperature=0).text
        == client.inference.chat("tiny", chat, max_tokens=20, temperature=0).text
    )
    assert [m.model for m in client.inference.list(page_size=1)] == [
        m.model for m in client.inference.list()
    ]
    assert len(list(client.inference.list())) >= 2
    with pytest.raises(TuneforgeError) as wrong_backend:
        client.inference.generate("tiny-onnx", PROMPT, backend="pytorch")
    assert wrong_backend.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert wrong_backend.value.metadata["field"] == "backend"


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_generate_and_serve_list(client: Client, catalog: Catalog, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    env["TUNEFORGE_HOME"] = str(tmp_path / "user-home")
    env["TUNEFORGE_INFERENCE_TARGET"] = client.targets["inference"]

    def tf(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tuneforge.cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            input=stdin,
        )

    expected = reference(catalog, "a1", prompt=PROMPT, max_tokens=12)
    result = tf(
        "generate", "--model", "tiny", "--adapter", "a1", PROMPT,
        "--max-tokens", "12", "--temperature", "0", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["text"] == expected.text
    assert reply["finish_reason"] == expected.finish_reason
    assert reply["usage"]["completion_tokens"] == expected.completion_tokens

    streamed = tf(
        "generate", "-m", "tiny", "-a", "a1", PROMPT, "--max-tokens", "12",
        "--temperature", "0", "--stream",
    )  # fmt: skip
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == expected.text + "\n"
    assert "completion tokens" in streamed.stderr
    paced = tf(
        "generate", "-m", "tiny", "-a", "a1", PROMPT, "--max-tokens", "12",
        "--temperature", "0", "--stream", "--stream-interval-ms", "5000", "--json",
    )  # fmt: skip
    assert paced.returncode == 0, paced.stderr
    messages = json_documents(paced.stdout)
    assert len(messages) <= 2 and "".join(m.get("text", "") for m in messages) == expected.text
    unpaced = tf("generate", "-m", "tiny", PROMPT, "--stream-interval-ms", "50")
    assert unpaced.returncode == 2 and "needs --stream" in unpaced.stderr

    chat = tf(
        "chat", "-m", "tiny", "--max-tokens", "4", "--temperature", "0", "--json",
        stdin="hello\nagain\n/exit\n",
    )  # fmt: skip
    assert chat.returncode == 0, chat.stderr
    lasts = [m for m in json_documents(chat.stdout) if m.get("finish_reason")]
    assert len(lasts) == 2  # one reply per line of input
    # The second turn is sent with the first one and its reply: the conversation is kept.
    assert lasts[1]["usage"]["prompt_tokens"] > lasts[0]["usage"]["prompt_tokens"]
    paced_chat = tf(
        "chat", "-m", "tiny", "--max-tokens", "12", "--temperature", "0", "--json",
        "--stream-interval-ms", "10000", stdin="hello\n/exit\n",
    )  # fmt: skip
    assert paced_chat.returncode == 0, paced_chat.stderr
    assert len(json_documents(paced_chat.stdout)) <= 2  # the reply's first text, then the rest

    listed = json.loads(tf("serve", "list", "--json").stdout)
    assert full("tiny") in [m["model"] for m in listed["served_models"]]

    missing = tf("generate", "-m", "nothing-here", "hi")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "error: NOT_FOUND (RESOURCE_NOT_FOUND): projects/default/models/nothing-here not found"
    ]
