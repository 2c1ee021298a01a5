"""One conversion job, in a process of its own: fetch, merge, export, check parity, publish.

    python -m services.conversion.worker job.json

Run in the job's work directory with the object store's settings in TUNEFORGE_S3_*; reports
progress on stdout (see worker_config). Every published model's manifest is written last and
names this job as its source, so a job restarted after a crash finds what it already published
and a reader never sees half a model.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

from services.common.artifact_store import ArtifactStore
from services.common.errors import AlreadyExists, FailedPrecondition, TuneforgeError
from services.common.manifest import Manifest
from services.common.model_files import MODEL_CACHE_ENV, ModelFileCache, model_prefix
from services.common.settings import StoreSettings
from services.common.worker_process import format_event
from services.conversion.export import export_onnx
from services.conversion.merge import merge_model
from services.conversion.parity import check_parity
from services.conversion.worker_config import ConversionConfig

PARITY_REPORT_FILE = "parity_report.json"
# Attributes an output model takes over from the model it was made from.
COPIED_ATTRIBUTES = (
    "architecture",
    "model_type",
    "vocab_size",
    "context_length",
    "tokenizer_sha256",
    "chat_template_sha256",
)
# Share of the whole job each stage starts at (export dominates).
STAGE_START = {
    "DOWNLOADING": 0.0,
    "MERGING": 0.1,
    "EXPORTING": 0.25,
    "CHECKING_PARITY": 0.7,
    "PUBLISHING": 0.9,
}


class Reporter:
    def emit(self, kind: str, **payload: Any) -> None:
        sys.stdout.write(format_event(kind, **payload) + "\n")
        sys.stdout.flush()

    def stage(self, stage: str) -> None:
        self.emit("stage", stage=stage, progress=STAGE_START[stage])

    def log(self, message: str, level: str = "info") -> None:
        self.emit("log", level=level, message=message)


def source_of(config: ConversionConfig) -> str:
    return f"conversion:{config.job}"


def published(store: ArtifactStore, config: ConversionConfig, model: str) -> Manifest | None:
    """The model this job already published under `model` (None if none yet); AlreadyExists
    when something else owns the name."""
    manifest = store.read_manifest(model_prefix(model, "output_model_id"))
    if manifest is None:
        return None
    if manifest.attributes.get("source") != source_of(config):
        raise AlreadyExists(model, f"{model} already exists; choose another output_model_id")
    return manifest


def read_rows(store: ArtifactStore, keys: list[str], limit: int, work: Path) -> list[list[dict]]:
    """The first `limit` conversations ("messages") of the canonical JSONL files at `keys`."""
    rows: list[list[dict]] = []
    for i, key in enumerate(keys):
        local = work / "rows" / f"{i}.jsonl"
        store.get_file(key, local)
        with open(local, encoding="utf-8") as fh:
            for line in fh:
                if len(rows) >= limit:
                    return rows
                if line.strip():
                    messages = json.loads(line).get("messages") or []
                    if messages:
                        rows.append(messages)
    return rows


def golden_prompts(conversations: list[list[dict]]) -> list[list[dict]]:
    """Each conversation up to (not including) its last assistant message."""
    prompts = []
    for messages in conversations:
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
        if last > 0:
            prompts.append(messages[:last])
    return prompts


def publish_model(
    store: ArtifactStore,
    config: ConversionConfig,
    *,
    model: str,
    local_dir: Path,
    kind: str,
    fmt: str,
    attributes: dict[str, Any],
    lineage: dict[str, Any],
    metrics: dict[str, float],
) -> Manifest:
    prefix = model_prefix(model, "output_model_id")
    store.delete_prefix(prefix)  # leftovers of an interrupted upload (no manifest: invisible)
    files = store.upload_dir(local_dir, prefix)
    manifest = Manifest(
        kind="model",
        name=model,
        format=fmt,
        files=files,
        lineage=lineage,
        metrics=metrics,
        attributes={
            **attributes,
            "model_kind": kind,
            "display_name": config.display_name or model.rsplit("/", 1)[-1],
            "labels": dict(config.labels),
            "source": source_of(config),
            "source_kind": "conversion",
        },
    )
    store.write_manifest(prefix, manifest)
    return manifest


def run(config: ConversionConfig, store: ArtifactStore, work: Path, report: Reporter) -> None:
    formats = set(config.formats)
    todo = {fmt: config.outputs[fmt] for fmt in formats}
    for fmt, model in list(todo.items()):
        if published(store, config, model) is not None:
            report.log(f"{model} was published before a restart")
            report.emit("output", model=model, format=fmt)
            del todo[fmt]
    if not todo:
        return

    report.stage("DOWNLOADING")
    cache = ModelFileCache(
        store, Path(os.environ.get(MODEL_CACHE_ENV) or work / "cache" / "models")
    )
    base_dir, base_manifest = cache.fetch(config.base_model, field="source_model")
    adapter_dir: Path | None = None
    adapter_manifest: Manifest | None = None
    if config.adapter_model:
        adapter_dir, adapter_manifest = cache.fetch(config.adapter_model, field="adapter_model")
    rows: list[list[dict]] = []
    if "onnx" in todo:
        rows = read_rows(store, config.parity.row_files, config.parity.max_rows, work)
    prompts = config.parity.prompts or golden_prompts(rows)
    if "onnx" in todo and not prompts:
        raise FailedPrecondition(
            "the parity check has no prompts: give parity.golden_prompts or a dataset with "
            "chat rows (parity.dataset)"
        )

    report.stage("MERGING")
    merged_dir = work / "merged"
    merged = merge_model(base_dir, adapter_dir, merged_dir)
    what = f"merged {config.adapter_model} onto " if config.adapter_model else "loaded "
    report.log(f"{what}{config.base_model}: {merged.parameter_count:,} parameters")

    source = adapter_manifest or base_manifest
    attributes = {k: source.attributes[k] for k in COPIED_ATTRIBUTES if k in source.attributes}
    attributes.update(
        base_model=str(source.attributes.get("base_model") or config.base_model),
        method=str(source.attributes.get("method", "")),
        parameter_count=merged.parameter_count,
    )
    lineage = {
        **source.lineage,
        **config.lineage,
        "conversion_job": config.job,
        "source_model_sha256": source.sha256(),
        "config_json": config.model_dump_json(),
    }
    outputs: list[tuple[str, str, Path, str, str, dict[str, Any], dict[str, float]]] = []
    if "merged" in todo:
        outputs.append(
            (
                "merged",
                todo["merged"],
                merged_dir,
                "MERGED",
                "safetensors",
                {**attributes, "dtype": merged.dtype, "precision": merged.dtype},
                {},
            )
        )

    if "onnx" in todo:
        report.stage("EXPORTING")
        onnx_dir = work / "onnx"
        export_onnx(
            merged_dir,
            onnx_dir,
            config.precision,
            work / "cache" / "builder",
            on_line=lambda line: report.log(line, "debug"),
        )
        report.log(f"exported {config.precision} ONNX model")

        report.stage("CHECKING_PARITY")
        thresholds = config.parity.thresholds.model_dump()
        parity = check_parity(
            merged_dir,
            onnx_dir,
            prompts,
            rows,
            config.parity.max_new_tokens,
            thresholds,
            on_progress=lambda f: report.emit(
                "stage", stage="CHECKING_PARITY", progress=0.7 + 0.2 * f
            ),
        )
        parity["forced"] = not parity["passed"] and config.force_publish
        report.emit("parity", report=parity)
        if not parity["passed"] and not config.force_publish:
            raise ParityBelowThreshold(parity)
        (onnx_dir / PARITY_REPORT_FILE).write_text(json.dumps(parity, indent=2) + "\n")
        metrics = {
            "greedy_agreement": float(parity["greedy_agreement"]),
            "max_logit_delta": float(parity["max_logit_delta"]),
            "mean_logit_delta": float(parity["mean_logit_delta"]),
            "reference_perplexity": float(parity["reference_perplexity"]),
            "candidate_perplexity": float(parity["candidate_perplexity"]),
        }
        onnx_attributes = {
            **attributes,
            "dtype": config.precision,
            "precision": config.precision,
            "parity_passed": bool(parity["passed"]),
            "parity_forced": bool(parity["forced"]),
        }
        outputs.append(
            ("onnx", todo["onnx"], onnx_dir, "ONNX", "onnx-genai", onnx_attributes, metrics)
        )

    report.stage("PUBLISHING")
    for out_format, model, local_dir, kind, file_format, attrs, metrics in outputs:
        publish_model(
            store,
            config,
            model=model,
            local_dir=local_dir,
            kind=kind,
            fmt=file_format,
            attributes=attrs,
            lineage=lineage,
            metrics=metrics,
        )
        report.emit("output", model=model, format=out_format)
        report.log(f"published {model}")


class ParityBelowThreshold(TuneforgeError):
    code = "FAILED_PRECONDITION"
    default_reason = "PARITY_BELOW_THRESHOLD"

    def __init__(self, parity: dict[str, Any]) -> None:
        reference = float(parity.get("reference_perplexity") or 0.0)
        candidate = float(parity.get("candidate_perplexity") or 0.0)
        increase = candidate / reference - 1.0 if reference > 0 else float("inf")
        limits = parity.get("thresholds") or {}
        super().__init__(
            "the export is below its parity thresholds: "
            f"greedy agreement {parity.get('greedy_agreement', 0.0):.3f} "
            f"(min {limits.get('min_greedy_agreement', '-')}), "
            f"perplexity {increase:+.2%} (max {limits.get('max_perplexity_increase', '-')}), "
            f"mean logit delta {parity.get('mean_logit_delta', 0.0):.4f} "
            f"(max {limits.get('max_mean_logit_delta', '-')}); the report is in the job",
            metadata={"greedy_agreement": parity.get("greedy_agreement", 0.0)},
        )


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m services.conversion.worker job.json", file=sys.stderr)
        return 2
    report = Reporter()
    work = Path.cwd()
    try:
        config = ConversionConfig.from_file(argv[0])
        run(config, ArtifactStore(StoreSettings()), work, report)
    except TuneforgeError as exc:
        report.emit("error", code=exc.code, reason=exc.reason, message=exc.message)
        return 1
    except Exception as exc:
        traceback.print_exc()
        report.emit(
            "error",
            code="INTERNAL",
            reason="WORKER_FAILED",
            message=f"the conversion failed: {type(exc).__name__}: {exc}",
        )
        return 1
    finally:
        shutil.rmtree(work / "merged", ignore_errors=True)
        shutil.rmtree(work / "onnx", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
