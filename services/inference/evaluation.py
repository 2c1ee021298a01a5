"""Evaluations: a catalog model (optionally with an adapter) answers a dataset's held-out rows
through the served models and their scheduler, and scorers compare each answer with the row's
reference. Core code: no gRPC here.

- A row's prompt is its messages up to (not including) the last assistant message; the reference
  is that message's content (a preference row's reference is its `chosen` reply).
- Decoding is greedy unless the request sets a temperature; sampling without a seed uses seed 0,
  so running an evaluation again gives the same scores.
- Evaluations run one at a time, each with up to the model's `max_active_requests` rows in
  flight, so they share the model with live traffic instead of filling its queue.
- The report (every row with its answer) is stored at `evaluations/{project}/{id}/report.json`
  with a manifest written last; the database keeps the summary and a few samples.
- A service restart interrupts a RUNNING evaluation; the next start runs it again from the first
  row (greedy decoding makes that deterministic), up to MAX_ATTEMPTS runs, after which it is
  FAILED with reason ABORTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from services.common.artifact_store import ArtifactStore
from services.common.dataset_layout import content_prefix, dataset_prefix
from services.common.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TuneforgeError,
)
from services.common.manifest import FileEntry, Manifest
from services.common.model_files import read_model_manifest
from services.common.resource_names import (
    check_id,
    cut_page,
    decode_page_token,
    page_size,
    parse_filter,
    parse_name,
)
from services.inference.adapters import (
    ADAPTER_KIND,
    adapter_base_model,
    check_adapter_fits,
    model_kind,
)
from services.inference.engine import Backend
from services.inference.evaluation_records import (
    ENDED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    EvaluationRecord,
    EvaluationRecords,
)
from services.inference.generation import Finished, GenerationParams, Usage
from services.inference.served_models import Prompt, ServedModels, backend_of

log = structlog.get_logger("inference.evaluation")

SCORERS = ("EXACT_MATCH", "CONTAINS", "JSON_VALID")
DEFAULT_SCORERS = ("EXACT_MATCH",)
SPLITS = ("validation", "train")
# Rows of the report that the Evaluation resource carries (report.json has them all).
MAX_SAMPLES = 16
MAX_ATTEMPTS = 3
QUEUE_FULL_RETRY_S = 0.2
REPORT_FILE = "report.json"
FILTER_KEYS = {"state", "model", "dataset"}


# --- scorers ------------------------------------------------------------------------------------


def score(scorer: str, answer: str, reference: str) -> bool:
    """Whether `answer` passes `scorer` against `reference` (names of inference.v1.Scorer)."""
    if scorer == "EXACT_MATCH":
        return answer.strip() == reference.strip()
    if scorer == "CONTAINS":
        return reference.strip() in answer
    if scorer == "JSON_VALID":
        try:
            json.loads(answer)
        except ValueError:
            return False
        return True
    raise ValueError(f"unknown scorer {scorer!r}")


# --- rows ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalRow:
    """One row to evaluate; `line` is its 1-based line in the split's canonical file."""

    line: int
    prompt: list[dict[str, Any]]
    reference: str


def row_from_canonical(line: int, data: dict[str, Any]) -> EvalRow | None:
    """The prompt and reference of a canonical row; None when it has nothing to answer."""
    messages = [
        {"role": str(m.get("role", "")), "content": str(m.get("content", ""))}
        for m in data.get("messages") or []
        if isinstance(m, dict)
    ]
    if data.get("chosen") is not None:
        return EvalRow(line, messages, str(data["chosen"])) if messages else None
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if last <= 0:
        return None
    return EvalRow(line, messages[:last], messages[last]["content"])


def dataset_content(store: ArtifactStore, dataset: str) -> str:
    """The content sha256 of a published dataset; NotFound when it is not (or not READY)."""
    ref = parse_name(dataset, "datasets", "evaluation.dataset")
    manifest = store.read_manifest(dataset_prefix(ref.project, ref.id))
    if manifest is None:
        raise NotFound(dataset, f"{dataset} does not exist or is not READY")
    sha = str(manifest.attributes.get("content_sha256") or "")
    if not sha:
        raise FailedPrecondition(
            f"{dataset} records no content",
            reason="DATASET_NOT_READY",
            metadata={"dataset": dataset},
        )
    return sha


def split_key(store: ArtifactStore, content_sha256: str, split: str) -> str:
    """The canonical file of a split: validation.jsonl, or train.jsonl when there is no (or an
    empty) validation split."""
    prefix = content_prefix(content_sha256)
    blob = store.read_manifest(prefix)
    sizes = {f.path: f.size_bytes for f in blob.files} if blob is not None else {}
    if split == "validation" and sizes.get("validation.jsonl", 0) > 0:
        return prefix + "validation.jsonl"
    return prefix + "train.jsonl"


def load_rows(store: ArtifactStore, key: str, max_rows: int) -> list[EvalRow]:
    """The rows of a canonical file (at most `max_rows`, 0: all), read by streaming."""
    rows: list[EvalRow] = []
    pending = b""
    line = 0

    def add(raw: bytes) -> bool:
        nonlocal line
        line += 1
        if raw.strip():
            row = row_from_canonical(line, json.loads(raw))
            if row is not None:
                rows.append(row)
        return bool(max_rows) and len(rows) >= max_rows

    for chunk in store.iter_chunks(key, chunk_size=1 << 16):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            if add(raw):
                return rows
    if pending.strip():
        add(pending)
    return rows


# --- the request --------------------------------------------------------------------------------


def _resolve(project: str, value: str, collection: str, field: str) -> str:
    if value.startswith("projects/"):
        return str(parse_name(value, collection, field))
    return f"projects/{project}/{collection}/{check_id(value, field)}"


def params_from_spec(values: dict[str, Any]) -> GenerationParams:
    """The generation parameters of an evaluation: greedy unless a temperature is given, seed 0
    when sampling without one."""
    temperature = values.get("temperature")
    seed = values.get("seed")
    return GenerationParams(
        max_tokens=int(values.get("max_tokens") or 0),
        temperature=0.0 if temperature is None else float(temperature),
        top_p=values.get("top_p"),
        top_k=values.get("top_k"),
        stop=tuple(values.get("stop") or ()),
        seed=0 if seed is None else int(seed),
        repetition_penalty=values.get("repetition_penalty"),
    )


def plan(store: ArtifactStore, project: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Checks an evaluation request (blocking: reads manifests) and returns its normalized spec.

    Raises InvalidArgument naming the field, NotFound for a missing model, adapter or dataset."""
    model_value = str(spec.get("model") or "")
    if not model_value:
        raise InvalidArgument("evaluation.model is required", field="evaluation.model")
    model = _resolve(project, model_value, "models", "evaluation.model")
    dataset_value = str(spec.get("dataset") or "")
    if not dataset_value:
        raise InvalidArgument("evaluation.dataset is required", field="evaluation.dataset")
    dataset = _resolve(project, dataset_value, "datasets", "evaluation.dataset")
    adapter_value = str(spec.get("adapter") or "")
    adapter = (
        _resolve(project, adapter_value, "models", "evaluation.adapter") if adapter_value else ""
    )

    split = str(spec.get("split") or "validation")
    if split not in SPLITS:
        raise InvalidArgument(
            f"evaluation.split must be 'validation' or 'train', got {split!r}",
            field="evaluation.split",
        )
    scorers: list[str] = []
    for i, name in enumerate(spec.get("scorers") or DEFAULT_SCORERS):
        if name not in SCORERS:
            raise InvalidArgument(
                f"evaluation.scorers[{i}] must be one of {', '.join(SCORERS)}, got {name}",
                field=f"evaluation.scorers[{i}]",
            )
        if name not in scorers:
            scorers.append(name)
    max_rows = int(spec.get("max_rows") or 0)
    if max_rows < 0:
        raise InvalidArgument(
            "evaluation.max_rows must not be negative (0: every row)", field="evaluation.max_rows"
        )
    parameters = dict(spec.get("parameters") or {})
    try:
        params_from_spec(parameters).validated()
    except InvalidArgument as exc:
        raise InvalidArgument(f"evaluation.{exc.message}", field=f"evaluation.{exc.field}") from exc
    backend = str(spec.get("backend") or "")
    if backend and backend not in {b.value for b in Backend}:
        raise InvalidArgument(f"unknown backend {backend!r}", field="evaluation.backend")

    manifest = read_model_manifest(store, model, "evaluation.model")
    base = manifest
    if model_kind(manifest) == ADAPTER_KIND:
        if adapter:
            raise InvalidArgument(
                f"{model} is an adapter: give its base model as model and it as adapter",
                field="evaluation.adapter",
            )
        base_name = adapter_base_model(manifest)
        if not base_name:
            raise FailedPrecondition(
                f"{model} records no base model", reason="ADAPTER_BASE_MISMATCH"
            )
        base = read_model_manifest(store, base_name, "evaluation.model")
        try:
            check_adapter_fits(base, manifest)
        except InvalidArgument as exc:
            raise InvalidArgument(exc.message, field="evaluation.model") from exc
    actual = backend_of(base)
    if backend and backend != actual.value:
        raise InvalidArgument(
            f"{base.name} runs on the {actual.value} backend, not {backend}",
            field="evaluation.backend",
            metadata={"model": base.name, "backend": actual.value},
        )
    if adapter:
        if actual is Backend.ONNX_RUNTIME:
            raise InvalidArgument(
                f"{model} is an ONNX model: adapters run on the PYTORCH backend",
                field="evaluation.adapter",
            )
        adapter_manifest = read_model_manifest(store, adapter, "evaluation.adapter")
        try:
            check_adapter_fits(base, adapter_manifest)
        except InvalidArgument as exc:
            raise InvalidArgument(exc.message, field="evaluation.adapter") from exc
    dataset_content(store, dataset)
    return {
        "model": model,
        "adapter": adapter,
        "dataset": dataset,
        "split": split,
        "scorers": scorers,
        "max_rows": max_rows,
        "parameters": parameters,
        "backend": backend,
    }


def error_dict(exc: TuneforgeError, **metadata: object) -> dict[str, Any]:
    return {
        "code": exc.code,
        "reason": exc.reason,
        "message": exc.message,
        "metadata": {**exc.metadata, **{k: str(v) for k, v in metadata.items()}},
    }


# --- running ------------------------------------------------------------------------------------


@dataclass
class Answer:
    text: str
    usage: Usage
    finish_reason: str


class RowFailed(Exception):
    """A row could not be generated; carries its line for the evaluation's error."""

    def __init__(self, line: int, error: TuneforgeError) -> None:
        super().__init__(error.message)
        self.line = line
        self.error = error


Generate = Callable[[list[dict[str, Any]]], Awaitable[Answer]]


async def generate_rows(rows: list[EvalRow], generate: Generate, concurrency: int) -> list[Answer]:
    """The answers of `rows` in order, at most `concurrency` generating at once."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(row: EvalRow) -> Answer:
        async with gate:
            try:
                return await generate(row.prompt)
            except TuneforgeError as exc:
                raise RowFailed(row.line, exc) from exc

    tasks = [asyncio.ensure_future(one(row)) for row in rows]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def build_report(
    name: str,
    spec: dict[str, Any],
    source: str,
    content_sha256: str,
    rows: list[EvalRow],
    answers: list[Answer],
    generation_s: float,
) -> dict[str, Any]:
    """The full report (every row); the summary is this without "rows"."""
    scorers = list(spec["scorers"])
    results = []
    passed = dict.fromkeys(scorers, 0)
    for row, answer in zip(rows, answers, strict=True):
        verdicts = {s: score(s, answer.text, row.reference) for s in scorers}
        for s, ok in verdicts.items():
            passed[s] += int(ok)
        results.append(
            {
                "line": row.line,
                # The sample's prompt is the last message before the answer (the question).
                "prompt": row.prompt[-1]["content"] if row.prompt else "",
                "messages": row.prompt,
                "reference": row.reference,
                "answer": answer.text,
                "passed": verdicts,
                "completion_tokens": answer.usage.completion_tokens,
                "finish_reason": answer.finish_reason,
            }
        )
    n = len(rows)
    completion = sum(a.usage.completion_tokens for a in answers)
    return {
        "evaluation": name,
        "model": spec["model"],
        "adapter": spec["adapter"],
        "dataset": spec["dataset"],
        "dataset_content_sha256": content_sha256,
        "split": spec["split"],
        "source": source,
        "scorers": scorers,
        "parameters": spec["parameters"],
        "row_count": n,
        "passed": passed,
        "scores": {s: (passed[s] / n if n else 0.0) for s in scorers},
        "prompt_tokens": sum(a.usage.prompt_tokens for a in answers),
        "completion_tokens": completion,
        "tokens_per_second": completion / generation_s if generation_s > 0 else 0.0,
        "rows": results,
    }


def evaluation_prefix(name: str) -> str:
    ref = parse_name(name, "evaluations")
    return f"evaluations/{ref.project}/{ref.id}/"


def publish_report(store: ArtifactStore, report: dict[str, Any]) -> dict[str, Any]:
    """Stores report.json, then its manifest (last); returns the ArtifactRef as a dict."""
    name = report["evaluation"]
    prefix = evaluation_prefix(name)
    store.delete_prefix(prefix)  # an interrupted earlier run's files
    data = (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode()
    entry = store.put_bytes(prefix + REPORT_FILE, data, content_type="application/json")
    files = [FileEntry(path=REPORT_FILE, sha256=entry.sha256, size_bytes=entry.size_bytes)]
    model = read_model_manifest(store, report["model"], "evaluation.model")
    manifest = Manifest(
        kind="evaluation",
        name=name,
        format="json",
        files=files,
        lineage={
            "base_model": report["model"],
            "base_model_sha256": model.sha256(),
            "adapter": report["adapter"],
            "validation_dataset": report["dataset"],
            "validation_dataset_sha256": report["dataset_content_sha256"],
        },
        metrics={
            **{s.lower(): float(v) for s, v in report["scores"].items()},
            "tokens_per_second": float(report["tokens_per_second"]),
            "seconds": float(report["seconds"]),
        },
        attributes={
            "row_count": report["row_count"],
            "split": report["split"],
            "source": report["source"],
            "scorers": report["scorers"],
            "parameters": report["parameters"],
        },
    )
    sha = store.write_manifest(prefix, manifest)
    return {
        "uri": store.uri(prefix),
        "manifest_sha256": sha,
        "files": [f.model_dump() for f in files],
        "total_size_bytes": manifest.total_bytes,
    }


class Evaluations:
    """Creates, lists and runs evaluations (on the service's event loop; blocking calls go to
    threads)."""

    def __init__(
        self,
        records: EvaluationRecords,
        store: ArtifactStore,
        models: ServedModels,
        concurrency: int,
    ) -> None:
        self.records = records
        self.store = store
        self.models = models
        self.concurrency = concurrency
        self._turn = asyncio.Lock()  # one evaluation generates at a time
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def create(
        self, project: str, evaluation_id: str, spec: dict[str, Any], request_id: str
    ) -> EvaluationRecord:
        resolved = await asyncio.to_thread(plan, self.store, project, spec)
        existing = await asyncio.to_thread(self.records.find_by_request_id, project, request_id)
        if existing is not None:
            if existing.spec != resolved or (
                evaluation_id and evaluation_id != existing.evaluation_id
            ):
                raise FailedPrecondition(
                    f"request_id {request_id!r} was used for {existing.name} with other fields",
                    reason="REQUEST_ID_CONFLICT",
                    metadata={"request_id": request_id, "resource": existing.name},
                )
            return existing
        if evaluation_id:
            check_id(evaluation_id, "evaluation_id")
        else:
            evaluation_id = "ev-" + uuid.uuid4().hex[:12]
        record = EvaluationRecord(
            name=f"projects/{project}/evaluations/{evaluation_id}",
            project=project,
            evaluation_id=evaluation_id,
            state=PENDING,
            spec=resolved,
            request_id=request_id,
        )
        created = await asyncio.to_thread(self.records.create, record)
        log.info("evaluation_created", evaluation=created.name, model=resolved["model"])
        self._start(created.name)
        return created

    async def get(self, name: str) -> EvaluationRecord:
        parse_name(name, "evaluations")
        return await asyncio.to_thread(self.records.get, name)

    async def list(
        self, project: str, size: int, token: str, filter_text: str
    ) -> tuple[list[EvaluationRecord], str]:
        limit = page_size(size)
        after = str(decode_page_token(token).get("after", ""))
        where = parse_filter(filter_text, FILTER_KEYS)
        for key in ("model", "dataset"):
            if key in where:
                collection = "models" if key == "model" else "datasets"
                where[key] = _resolve(project, where[key], collection, "filter")
        found = await asyncio.to_thread(self.records.list, project, after, limit + 1, where)
        return cut_page(found, limit, lambda r: r.evaluation_id)

    async def recover(self) -> None:
        """After a restart: runs interrupted and queued evaluations again (see module doc)."""
        for record in await asyncio.to_thread(self.records.in_states, PENDING, RUNNING):
            if record.state == RUNNING and record.attempts >= MAX_ATTEMPTS:
                error = Aborted(
                    f"{record.name} was interrupted by {record.attempts} service restarts; "
                    "create it again to retry"
                )
                await asyncio.to_thread(
                    self.records.finish, record.name, FAILED, error=error_dict(error)
                )
                log.warning("evaluation_abandoned", evaluation=record.name)
                continue
            if record.state == RUNNING:
                await asyncio.to_thread(self.records.requeue, record.name)
                log.info("evaluation_rerun_after_restart", evaluation=record.name)
            self._start(record.name)

    async def close(self) -> None:
        """Stops running evaluations; they stay RUNNING or PENDING and run again on restart."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def _start(self, name: str) -> None:
        task = asyncio.create_task(self._run(name))
        self._tasks[name] = task
        task.add_done_callback(lambda _: self._tasks.pop(name, None))

    async def _run(self, name: str) -> None:
        async with self._turn:
            record = await asyncio.to_thread(self.records.get, name)
            if record.state in ENDED:
                return
            record = await asyncio.to_thread(self.records.start, name)
            structlog.contextvars.bind_contextvars(evaluation=name)
            log.info("evaluation_running", attempt=record.attempts)
            try:
                report = await self._evaluate(record)
            except asyncio.CancelledError:
                raise
            except RowFailed as exc:
                error = error_dict(exc.error, line=exc.line)
                error["message"] = f"line {exc.line}: {exc.error.message}"
                await self._fail(name, error)
            except TuneforgeError as exc:
                await self._fail(name, error_dict(exc))
            except Exception:
                log.exception("evaluation_crashed")
                await self._fail(
                    name,
                    {
                        "code": "INTERNAL",
                        "reason": "INTERNAL_ERROR",
                        "message": "the evaluation failed with an internal error; see the "
                        "inference service's log",
                        "metadata": {},
                    },
                )
            else:
                await asyncio.to_thread(self.records.finish, name, SUCCEEDED, report=report)
                log.info("evaluation_succeeded", scores=report["scores"])

    async def _fail(self, name: str, error: dict[str, Any]) -> None:
        await asyncio.to_thread(self.records.finish, name, FAILED, error=error)
        log.warning("evaluation_failed", error=error["message"])

    async def _evaluate(self, record: EvaluationRecord) -> dict[str, Any]:
        spec = record.spec
        started = time.monotonic()
        content = await asyncio.to_thread(dataset_content, self.store, spec["dataset"])
        key = await asyncio.to_thread(split_key, self.store, content, spec["split"])
        rows = await asyncio.to_thread(load_rows, self.store, key, int(spec["max_rows"]))
        if not rows:
            raise FailedPrecondition(
                f"{spec['dataset']} has no rows with an assistant answer to evaluate",
                metadata={"dataset": spec["dataset"]},
            )
        params = params_from_spec(spec["parameters"])
        backend = Backend(spec["backend"]) if spec["backend"] else None

        async def generate(prompt: list[dict[str, Any]]) -> Answer:
            while True:
                try:
                    job, _ = await self.models.submit(
                        spec["model"], spec["adapter"], backend, Prompt(messages=prompt), params
                    )
                    break
                except ResourceExhausted:  # live traffic filled the queue: wait for room
                    await asyncio.sleep(QUEUE_FULL_RETRY_S)
            parts: list[str] = []
            final: Finished | None = None
            try:
                async for event in job.events():
                    parts.append(event.text)
                    if isinstance(event, Finished):
                        final = event
            finally:
                job.cancel()
            assert final is not None
            return Answer("".join(parts), final.usage, final.reason.value)

        # Loaded first, so tokens/s measures generation only.
        adapters = [spec["adapter"]] if spec["adapter"] else []
        await self.models.load(spec["model"], adapters, backend)
        generating = time.monotonic()
        answers = await generate_rows(rows, generate, self.concurrency)
        generation_s = time.monotonic() - generating
        report = build_report(
            record.name, spec, key.rsplit("/", 1)[-1], content, rows, answers, generation_s
        )
        report["seconds"] = time.monotonic() - started
        artifact = await asyncio.to_thread(publish_report, self.store, report)
        summary = {k: v for k, v in report.items() if k != "rows"}
        summary["samples"] = report["rows"][:MAX_SAMPLES]
        summary["artifact"] = artifact
        return summary
