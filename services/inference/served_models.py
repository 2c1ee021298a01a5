"""The models this server holds: loaded from the catalog on first use (or by LoadModel), each with
its engine and worker; adapters resolved, checked against their base and fetched on first use.

Everything here runs on the service's event loop; store reads, downloads, model loading and
tokenizing go to threads, generation to the model's worker thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from services.common.artifact_store import ArtifactStore
from services.common.chat_template import ChatTemplateError
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, TuneforgeError
from services.common.manifest import Manifest
from services.common.model_files import ModelFileCache, read_model_manifest
from services.common.resource_names import parse_name
from services.inference.adapters import (
    ADAPTER_KIND,
    adapter_base_model,
    check_adapter_fits,
    model_kind,
)
from services.inference.engine import GENAI_CONFIG, AdapterFiles, Backend, Engine, encode
from services.inference.generation import GenerationParams, resolve_sampling
from services.inference.scheduler import GenerationJob, ModelWorker, PreparedRequest
from services.inference.settings import MAX_STREAM_INTERVAL_MS, InferenceSettings

log = structlog.get_logger("inference.models")

LOADING, READY, FAILED = "LOADING", "READY", "FAILED"


@dataclass(eq=False)
class ServedModel:
    """One model held by the server, whatever its state."""

    name: str
    backend: Backend
    state: str = LOADING
    error: TuneforgeError | None = None
    load_time: datetime | None = None
    manifest: Manifest | None = None
    engine: Engine | None = None
    worker: ModelWorker | None = None
    loading: asyncio.Task[None] | None = None
    # Adapters checked and downloaded, by catalog name.
    adapters: dict[str, AdapterFiles] = field(default_factory=dict)

    def loaded_adapters(self) -> list[str]:
        return self.engine.loaded_adapters() if self.engine is not None else []

    def counts(self) -> tuple[int, int]:
        """(running, waiting) requests."""
        return self.worker.counts() if self.worker is not None else (0, 0)


@dataclass(frozen=True)
class Prompt:
    """A raw prompt, or chat messages to render through the model's chat template."""

    text: str | None = None
    messages: Sequence[dict[str, Any]] | None = None


def backend_of(manifest: Manifest) -> Backend:
    if model_kind(manifest) == "ONNX" or manifest.file(GENAI_CONFIG) is not None:
        return Backend.ONNX_RUNTIME
    return Backend.PYTORCH


def _check_backend(name: str, actual: Backend, requested: Backend | None) -> None:
    if requested is not None and requested != actual:
        hint = "convert it to ONNX first" if actual is Backend.PYTORCH else "it is an ONNX model"
        raise InvalidArgument(
            f"{name} runs on the {actual} backend, not {requested}: {hint}",
            field="backend",
            metadata={"model": name, "backend": actual.value},
        )


class ServedModels:
    """Loads, serves and unloads catalog models."""

    def __init__(
        self,
        store: ArtifactStore,
        cache_dir: Path,
        settings: InferenceSettings,
        project: str,
    ) -> None:
        self.store = store
        self.files = ModelFileCache(store, cache_dir)
        self.settings = settings
        self.project = project
        self._models: dict[str, ServedModel] = {}

    def resource_name(self, value: str, field_name: str) -> str:
        """A catalog model name from a full name or a short id in the default project."""
        if not value:
            raise InvalidArgument(f"{field_name} is required", field=field_name)
        full = value if value.startswith("projects/") else f"projects/{self.project}/models/{value}"
        return str(parse_name(full, "models", field_name))

    def list(self) -> list[ServedModel]:
        return [self._models[name] for name in sorted(self._models)]

    # --- generation ------------------------------------------------------------------------

    async def submit(
        self,
        model: str,
        adapter: str,
        backend: Backend | None,
        prompt: Prompt,
        params: GenerationParams,
        arrival: float | None = None,
        stream_interval_ms: int | None = None,
    ) -> tuple[GenerationJob, ServedModel]:
        """Queues one generation; raises before queueing if anything about it is wrong, or
        ResourceExhausted if the model's queue is full. `stream_interval_ms` paces the job's
        events (None: the service's setting)."""
        arrival = time.monotonic() if arrival is None else arrival
        params = params.validated()
        interval_ms = self._stream_interval_ms(stream_interval_ms)
        name, adapter_name, manifest = await self._resolve(model, adapter)
        served = await self._ready(name, backend, manifest)
        adapter_files = await self._adapter(served, adapter_name) if adapter_name else None
        engine, worker = self._engine(served), served.worker
        assert worker is not None  # set together with the engine
        request = await asyncio.to_thread(
            self._prepare, name, engine, prompt, params, adapter_files, arrival
        )
        job = GenerationJob(request, asyncio.get_running_loop(), interval_ms / 1000)
        worker.submit(job)
        return job, served

    def _stream_interval_ms(self, requested: int | None) -> float:
        if requested is None:
            return self.settings.stream_interval_ms
        if not 0 <= requested <= MAX_STREAM_INTERVAL_MS:
            raise InvalidArgument(
                f"stream_options.interval_ms must be 0 to {MAX_STREAM_INTERVAL_MS} "
                f"(milliseconds), not {requested}",
                field="stream_options.interval_ms",
            )
        return float(requested)

    def _prepare(
        self,
        name: str,
        engine: Engine,
        prompt: Prompt,
        params: GenerationParams,
        adapter: AdapterFiles | None,
        arrival: float,
    ) -> PreparedRequest:
        """Tokens, sampling and length limit of one request (in a thread: tokenizing blocks)."""
        tokenizer = engine.tokenizer
        if prompt.messages is not None:
            field_name = "messages"
            try:
                text = tokenizer.render_prompt(list(prompt.messages))
            except ChatTemplateError as exc:
                raise InvalidArgument(exc.message, field=exc.field or field_name) from exc
            ids = encode(tokenizer, text, add_special_tokens=False)
        else:
            field_name = "prompt"
            ids = encode(tokenizer, prompt.text or "", add_special_tokens=True)
        if not ids:
            raise InvalidArgument("the prompt is empty", field=field_name)
        room = engine.context_length - len(ids)
        if room <= 0:
            raise InvalidArgument(
                f"the prompt has {len(ids)} tokens; {name} reads at most "
                f"{engine.context_length - 1} to leave room for a reply",
                field=field_name,
                metadata={"prompt_tokens": len(ids), "context_length": engine.context_length},
            )
        max_new = min(params.max_tokens or self.settings.default_max_tokens, room)
        return PreparedRequest(
            prompt_ids=ids,
            sampling=resolve_sampling(params, engine.generation_defaults),
            max_new_tokens=max_new,
            stop=params.stop,
            adapter=adapter,
            arrival=arrival,
        )

    # --- loading ---------------------------------------------------------------------------

    async def load(
        self, model: str, adapters: Sequence[str], backend: Backend | None
    ) -> ServedModel:
        """Loads `model` (a no-op when it is READY) and the given adapters onto it."""
        name, adapter_name, manifest = await self._resolve(model, "")
        served = await self._ready(name, backend, manifest)
        wanted = [adapter_name] if adapter_name else []
        wanted += [self.resource_name(a, f"adapters[{i}]") for i, a in enumerate(adapters)]
        for adapter in wanted:
            files = await self._adapter(served, adapter)
            await asyncio.to_thread(self._engine(served).load_adapter, files)
        return served

    @staticmethod
    def _engine(served: ServedModel) -> Engine:
        if served.engine is None:  # unloaded while this call was under way
            raise FailedPrecondition(
                f"{served.name} was unloaded",
                reason="MODEL_NOT_READY",
                metadata={"model": served.name},
            )
        return served.engine

    async def unload(self, model: str) -> None:
        """Stops serving `model`: its queued and running requests end with ABORTED."""
        name = self.resource_name(model, "model")
        served = self._models.pop(name, None)
        if served is None:
            raise NotFound(name, f"{name} is not served")
        await self._close(served)
        log.info("model_unloaded", model=name)

    async def close(self) -> None:
        served, self._models = list(self._models.values()), {}
        for model in served:
            await self._close(model)

    async def _close(self, served: ServedModel) -> None:
        if served.loading is not None:
            await asyncio.gather(asyncio.shield(served.loading), return_exceptions=True)
        if served.worker is not None:
            await asyncio.to_thread(served.worker.close)
        if served.engine is not None:
            await asyncio.to_thread(served.engine.close)
        served.engine, served.worker = None, None

    async def _resolve(self, model: str, adapter: str) -> tuple[str, str, Manifest | None]:
        """(base model, adapter or "", the base's manifest when it had to be read).

        A request may name an adapter as its model: it then runs on the adapter's base.
        """
        name = self.resource_name(model, "model")
        adapter_name = self.resource_name(adapter, "adapter") if adapter else ""
        served = self._models.get(name)
        if served is not None and served.state != FAILED:
            return name, adapter_name, None
        manifest = await asyncio.to_thread(read_model_manifest, self.store, name, "model")
        if model_kind(manifest) != ADAPTER_KIND:
            return name, adapter_name, manifest
        if adapter_name:
            raise InvalidArgument(
                f"{name} is an adapter: give its base model as model and it as adapter",
                field="model",
            )
        base = adapter_base_model(manifest)
        if not base:
            raise FailedPrecondition(
                f"{name} records no base model", reason="ADAPTER_BASE_MISMATCH"
            )
        return base, name, None

    async def _ready(
        self, name: str, backend: Backend | None, manifest: Manifest | None
    ) -> ServedModel:
        """The READY served model `name`, loading it first if needed (concurrent callers share
        one load; a FAILED model is tried again)."""
        served = self._models.get(name)
        if served is None or (served.state == FAILED and served.loading is None):
            if manifest is None:
                manifest = await asyncio.to_thread(read_model_manifest, self.store, name, "model")
            if model_kind(manifest) == ADAPTER_KIND:
                raise InvalidArgument(
                    f"{name} is an adapter, not a model that can be loaded on its own",
                    field="model",
                )
            _check_backend(name, backend_of(manifest), backend)
            served = self._models.get(name)  # another request may have started it meanwhile
            if served is None or (served.state == FAILED and served.loading is None):
                served = ServedModel(name=name, backend=backend_of(manifest))
                self._models[name] = served
                served.loading = asyncio.create_task(self._load(served, manifest))
                served.loading.add_done_callback(_retrieve_exception)
        if served.loading is not None:
            await asyncio.shield(served.loading)
        if served.state != READY:
            assert served.error is not None
            raise served.error
        _check_backend(name, served.backend, backend)
        return served

    async def _load(self, served: ServedModel, manifest: Manifest) -> None:
        name = served.name
        log.info("model_loading", model=name, backend=served.backend.value)
        started = time.monotonic()
        try:
            directory, manifest = await asyncio.to_thread(self.files.fetch, name)
            served.manifest = manifest
            engine = await asyncio.to_thread(
                self._create_engine, served.backend, directory, manifest
            )
            served.engine = engine
            served.worker = ModelWorker(
                name,
                engine,
                max_active=self.settings.max_active_requests,
                max_queued=self.settings.max_queued_requests,
            )
            served.state, served.error = READY, None
            served.load_time = datetime.now(UTC)
            log.info("model_ready", model=name, seconds=round(time.monotonic() - started, 2))
        except TuneforgeError as exc:
            served.state, served.error = FAILED, exc
            log.warning("model_load_failed", model=name, error=exc.message)
            raise
        except Exception as exc:
            log.error("model_load_failed", model=name, exc_info=exc)
            error = FailedPrecondition(
                f"{name} could not be loaded: {type(exc).__name__}: {exc}",
                reason="MODEL_NOT_READY",
                metadata={"model": name},
            )
            served.state, served.error = FAILED, error
            raise error from exc
        finally:
            served.loading = None

    def _create_engine(self, backend: Backend, directory: Path, manifest: Manifest) -> Engine:
        # Imported here: a server that only runs ONNX models never pays for importing the other.
        if backend is Backend.ONNX_RUNTIME:
            from services.inference.onnx_engine import OnnxEngine

            return OnnxEngine(directory, manifest.attributes, self.settings)
        from services.inference.pytorch_engine import PyTorchEngine

        return PyTorchEngine(directory, manifest.attributes, self.settings)

    async def _adapter(self, served: ServedModel, name: str) -> AdapterFiles:
        """The adapter `name`, checked against the served base and downloaded. A loaded adapter
        is reused; one that is not loaded (new, or evicted) is looked up in the catalog again."""
        if served.backend is Backend.ONNX_RUNTIME:
            raise InvalidArgument(
                f"{served.name} is an ONNX model: adapters run on the PYTORCH backend",
                field="adapter",
            )
        known = served.adapters.get(name)
        if known is not None and name in served.loaded_adapters():
            return known
        assert served.manifest is not None
        manifest = await asyncio.to_thread(read_model_manifest, self.store, name, "adapter")
        check_adapter_fits(served.manifest, manifest)
        directory, fetched = await asyncio.to_thread(self.files.fetch, name, ("*",), "adapter")
        if fetched.sha256() != manifest.sha256():  # replaced in between: check what we got
            check_adapter_fits(served.manifest, fetched)
        files = AdapterFiles(name=name, directory=directory, manifest_sha256=fetched.sha256())
        served.adapters[name] = files
        return files


def _retrieve_exception(task: asyncio.Task[None]) -> None:
    # A load whose callers all went away must not log "exception was never retrieved".
    if not task.cancelled():
        task.exception()
