"""`tuneforge datasets upload|get|list|delete|preview`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.text import Text

from tuneforge.cli.output import (
    console,
    err_console,
    errors_as_exit,
    fail,
    human_size,
    print_json,
    print_table,
)
from tuneforge.client import FORMATS, Client
from tuneforge.datasets.v1 import dataset_service_pb2 as pb
from tuneforge.errors import TuneforgeError

app = typer.Typer(help="Datasets: upload, validate, inspect and preview.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ProjectOpt = Annotated[str, typer.Option("--project", envvar="TUNEFORGE_PROJECT")]
TargetOpt = Annotated[str | None, typer.Option("--target", help="Host of the services.")]


def _show(ds: pb.Dataset) -> None:
    state = pb.Dataset.State.Name(ds.state)
    colour = {"READY": "green", "FAILED": "red"}.get(state, "yellow")
    console.print(
        f"[bold]{ds.name}[/bold]  [{colour}]{state}[/{colour}]  "
        f"{pb.Dataset.Format.Name(ds.format)}  source {ds.source}"
    )
    console.print(
        f"  rows            {ds.row_count:,} (train {ds.train_row_count:,}, "
        f"validation {ds.validation_row_count:,}, invalid {ds.invalid_row_count:,})"
    )
    if ds.content_sha256:
        console.print(f"  content         sha256:{ds.content_sha256}")
    if ds.HasField("statistics") and ds.statistics.rows:
        s = ds.statistics
        console.print(
            f"  tokens          total {s.total_tokens:,}, mean {s.mean_tokens:.1f}, "
            f"p50 {s.p50_tokens}, p95 {s.p95_tokens}, max {s.max_tokens}"
        )
        console.print(
            f"  trainable       {s.trainable_tokens:,} tokens; over the limit: "
            f"{s.rows_over_limit}; per epoch ~{s.estimated_tokens_per_epoch:,}"
        )
        width = max((b.count for b in s.length_histogram), default=1)
        for b in s.length_histogram:
            bar = "#" * max(1, round(30 * b.count / width))
            console.print(f"    {b.lower:>6}-{b.upper:<6} {bar} {b.count}", highlight=False)
    if ds.diagnostics:
        _diagnostics(ds)
    if ds.error.message:
        console.print(f"  error           {ds.error.message}", highlight=False)


def _diagnostics(ds: pb.Dataset, limit: int = 50) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(ds.diagnostic_counts.items()))
    print_table(
        f"diagnostics ({counts})",
        ["line", "field", "code", "message"],
        [(d.line, d.field, d.code, d.message) for d in ds.diagnostics[:limit]],
    )
    if len(ds.diagnostics) > limit:
        console.print(f"  ... {len(ds.diagnostics) - limit} more (use --json for all)")


@app.command("upload")
def upload(
    file: Annotated[
        Path, typer.Argument(help="JSONL, CSV or Parquet file.", exists=True, dir_okay=False)
    ],
    name: Annotated[str, typer.Option("--name", help="Dataset id (default: generated).")] = "",
    format: Annotated[
        str | None,
        typer.Option("--format", help=f"One of {', '.join(FORMATS)} (default: detected)."),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Catalog model whose tokenizer measures the rows.")
    ] = None,
    max_seq_len: Annotated[int, typer.Option("--max-seq-len")] = 0,
    validation_split: Annotated[float, typer.Option("--validation-split")] = 0.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    validation_dataset: Annotated[str | None, typer.Option("--validation-dataset")] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Drop bad rows instead of failing.")
    ] = False,
    column: Annotated[
        list[str] | None,
        typer.Option("--column", help="CSV/Parquet mapping FIELD=COLUMN (repeatable)."),
    ] = None,
    request_id: Annotated[str, typer.Option("--request-id")] = "",
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Upload a file; bad rows are named with their line, field and code."""
    mapping = {}
    for item in column or []:
        field, sep, col = item.partition("=")
        if not sep:
            fail(f"--column expects FIELD=COLUMN, got {item!r}", as_json)
        mapping[field] = col
    with errors_as_exit(as_json), Client(target, project=project) as client:
        kwargs = dict(
            dataset_id=name,
            format=format,
            model=model,
            max_seq_len=max_seq_len,
            validation_split=validation_split,
            seed=seed,
            validation_dataset=validation_dataset,
            skip_invalid=skip_invalid,
            column_mapping=mapping,
            request_id=request_id,
        )
        try:
            if as_json:
                ds = client.datasets.upload(file, **kwargs)  # type: ignore[arg-type]
            else:
                with Progress(
                    TextColumn("uploading {task.description}"),
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    console=err_console,
                    transient=True,
                ) as bar:
                    task = bar.add_task(file.name, total=file.stat().st_size)
                    ds = client.datasets.upload(
                        file,
                        progress=lambda sent, _total: bar.update(task, completed=sent),
                        **kwargs,  # type: ignore[arg-type]
                    )
        except TuneforgeError as exc:
            if exc.reason == "DATASET_INVALID" and exc.metadata.get("dataset"):
                failed = client.datasets.get(exc.metadata["dataset"])
                if as_json:
                    print_json({"error": exc.to_dict(), "dataset": failed})
                    raise typer.Exit(1) from None
                err_console.print(Text(f"error: {exc}"))
                _diagnostics(failed)
                raise typer.Exit(1) from None
            raise
    if as_json:
        print_json(ds)
    else:
        _show(ds)


@app.command("get")
def get(
    name: Annotated[str, typer.Argument(help="Dataset id or full resource name.")],
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Show a dataset: state, counts, token statistics, diagnostics."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        ds = client.datasets.get(name)
    if as_json:
        print_json(ds)
    else:
        _show(ds)


@app.command("list")
def list_(
    filter: Annotated[str, typer.Option("--filter", help="e.g. state=READY")] = "",
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """List the project's datasets."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        found = list(client.datasets.list(filter=filter))
    if as_json:
        print_json({"datasets": found})
        return
    print_table(
        f"datasets in projects/{project}",
        ["id", "state", "format", "rows", "train", "validation", "tokens", "size", "source"],
        [
            (
                d.name.rsplit("/", 1)[-1],
                pb.Dataset.State.Name(d.state),
                pb.Dataset.Format.Name(d.format),
                d.row_count,
                d.train_row_count,
                d.validation_row_count,
                d.statistics.total_tokens or "-",
                human_size(d.artifact.total_size_bytes),
                d.source,
            )
            for d in found
        ],
    )


@app.command("delete")
def delete(
    name: Annotated[str, typer.Argument(help="Dataset id or full resource name.")],
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Delete a dataset (its stored content goes when no other dataset shares it)."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        full = client.dataset_name(name)
        client.datasets.delete(name)
    if as_json:
        print_json({"deleted": full})
    else:
        console.print(f"deleted {full}")


@app.command("preview")
def preview(
    name: Annotated[str, typer.Argument(help="Dataset id or full resource name.")],
    rows: Annotated[int, typer.Option("--rows", "-n")] = 3,
    split: Annotated[str, typer.Option("--split")] = "train",
    model: Annotated[str | None, typer.Option("--model")] = None,
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Render rows through the model's chat template; trained spans are highlighted."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        found = client.datasets.preview(name, rows=rows, split=split, model=model)
    if as_json:
        print_json({"rows": found})
        return
    for i, row in enumerate(found, 1):
        console.rule(f"row {i}: {row.token_count} tokens, {row.trainable_token_count} trained")
        text = Text(row.rendered_text)
        for span in row.trained_spans:
            text.stylize("bold green", span.start, span.end)
        console.print(text)
    console.print("[bold green]green[/bold green]: tokens the loss is computed on")
