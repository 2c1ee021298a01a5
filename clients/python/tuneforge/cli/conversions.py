"""`tuneforge convert` and `tuneforge conversions get|list|watch|cancel|delete`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tuneforge.cli.output import console, err_console, errors_as_exit, print_json, print_table
from tuneforge.client import Client
from tuneforge.conversion.v1 import conversion_service_pb2 as pb
from tuneforge.conversions import ConversionJobHandle

app = typer.Typer(
    help="Conversion jobs: merged and ONNX (fp32/int8/int4) models with parity reports.",
    no_args_is_help=True,
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ProjectOpt = Annotated[str, typer.Option("--project", envvar="TUNEFORGE_PROJECT")]
TargetOpt = Annotated[str | None, typer.Option("--target", help="Host of the services.")]
NameArg = Annotated[str, typer.Argument(help="Conversion job id or full resource name.")]


def _state(job: pb.ConversionJob) -> str:
    return pb.ConversionJob.State.Name(job.state)


def _show(job: pb.ConversionJob) -> None:
    state = _state(job)
    colour = {"SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "yellow"}.get(state, "cyan")
    formats = ", ".join(pb.OutputFormat.Name(f).lower() for f in job.output_formats)
    console.print(
        f"[bold]{job.name}[/bold]  [{colour}]{state}[/{colour}]  "
        f"{formats}, {pb.Precision.Name(job.precision).lower()}"
    )
    console.print(f"  source          {job.source_model}")
    if job.adapter_model:
        console.print(f"  adapter         {job.adapter_model}")
    if job.state == pb.ConversionJob.RUNNING:
        stage = pb.ConversionJob.Stage.Name(job.stage).lower()
        console.print(f"  progress        {stage}, {job.progress:.0%}")
    if job.HasField("parity_report"):
        r = job.parity_report
        verdict = "passed" if r.passed else ("FORCED" if r.forced else "FAILED")
        increase = (
            f"{r.candidate_perplexity / r.reference_perplexity - 1:+.2%}"
            if r.reference_perplexity
            else "-"
        )
        console.print(
            f"  parity          {verdict}: greedy agreement {r.greedy_agreement:.3f} on "
            f"{r.prompt_count} prompts, perplexity {r.reference_perplexity:.3f} -> "
            f"{r.candidate_perplexity:.3f} ({increase}), mean logit delta "
            f"{r.mean_logit_delta:.4f}"
        )
    for model in job.output_models:
        console.print(f"  output          {model}")
    if job.error.message:
        console.print(f"  error           {job.error.message}", highlight=False)


def _follow(handle: ConversionJobHandle) -> pb.ConversionJob:
    """A progress bar through the job's stages; state changes and errors printed above it."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[stage]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console) as bar:
        task = bar.add_task(handle.name.rsplit("/", 1)[-1], total=1.0, stage="queued")

        def on_event(event: pb.ConversionJobEvent) -> None:
            kind = event.WhichOneof("payload")
            if kind == "progress":
                stage = pb.ConversionJob.Stage.Name(event.progress.stage).lower()
                bar.update(task, completed=event.progress.progress, stage=stage)
            elif kind == "state_change":
                s = event.state_change
                bar.console.print(
                    f"  {pb.ConversionJob.State.Name(s.state)}: {s.reason}", highlight=False
                )
                if s.state == pb.ConversionJob.SUCCEEDED:
                    bar.update(task, completed=1.0, stage="done")
            elif kind == "parity_report":
                r = event.parity_report
                bar.console.print(
                    f"  parity: greedy agreement {r.greedy_agreement:.3f}, "
                    f"{'passed' if r.passed else 'below thresholds'}"
                )
            elif kind == "log" and event.log.level in ("warning", "error"):
                bar.console.print(f"  {event.log.message}", highlight=False)

        return handle.wait(on_event=on_event)


def convert(
    model: Annotated[str, typer.Option("--model", help="Catalog model: base, merged or adapter.")],
    adapter: Annotated[str, typer.Option("--adapter", help="Adapter to merge onto --model.")] = "",
    precision: Annotated[
        str, typer.Option("--precision", help="ONNX weights: fp32, int8 or int4.")
    ] = "int4",
    formats: Annotated[
        list[str] | None, typer.Option("--format", help="onnx and/or merged (repeatable).")
    ] = None,
    prompts: Annotated[
        list[str] | None, typer.Option("--prompt", help="Golden prompt for the parity check.")
    ] = None,
    parity_dataset: Annotated[
        str, typer.Option("--parity-dataset", help="Dataset whose rows the parity check uses.")
    ] = "",
    max_rows: Annotated[int, typer.Option("--max-rows", help="Parity rows (default 16).")] = 0,
    min_agreement: Annotated[float | None, typer.Option("--min-greedy-agreement")] = None,
    max_ppl_increase: Annotated[float | None, typer.Option("--max-perplexity-increase")] = None,
    max_logit_delta: Annotated[float | None, typer.Option("--max-mean-logit-delta")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Publish even below the parity thresholds.")
    ] = False,
    output: Annotated[str, typer.Option("--output", help="Output model id.")] = "",
    name: Annotated[str, typer.Option("--name", help="Job id (default: generated).")] = "",
    request_id: Annotated[str, typer.Option("--request-id")] = "",
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job to its end.")] = False,
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Convert a model: merge an adapter, export ONNX Runtime GenAI, check parity."""
    thresholds = {
        "min_greedy_agreement": min_agreement,
        "max_perplexity_increase": max_ppl_increase,
        "max_mean_logit_delta": max_logit_delta,
    }
    with errors_as_exit(as_json), Client(target, project=project) as client:
        handle = client.conversions.create(
            model,
            adapter=adapter,
            formats=formats or ["onnx"],
            precision=precision,
            golden_prompts=prompts or [],
            parity_dataset=parity_dataset,
            max_rows=max_rows,
            thresholds={k: v for k, v in thresholds.items() if v is not None},
            force_publish=force,
            output_model_id=output,
            job_id=name,
            request_id=request_id,
        )
        if wait:
            final = handle.wait() if as_json else _follow(handle)
            if as_json:
                print_json(final)
            else:
                _show(final)
            if _state(final) != "SUCCEEDED":
                raise typer.Exit(1)
            return
    if as_json:
        print_json(handle.job)
    else:
        _show(handle.job)
        console.print(
            f"follow it with: tuneforge conversions watch {handle.name.rsplit('/', 1)[-1]}"
        )


@app.command("watch")
def watch(
    name: NameArg,
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Follow a conversion to its end (JSON events with --json)."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        handle = client.conversions.get(name)
        if as_json:
            for event in handle.events():
                print_json(event)
            final = handle.refresh()
        else:
            final = _follow(handle)
            _show(final)
    if _state(final) != "SUCCEEDED":
        raise typer.Exit(1)


@app.command("get")
def get(
    name: NameArg,
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Show a conversion job with its parity report."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        job = client.conversions.get(name).job
    if as_json:
        print_json(job)
    else:
        _show(job)


@app.command("list")
def list_(
    filter: Annotated[str, typer.Option("--filter", help="e.g. state=RUNNING")] = "",
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """List the project's conversion jobs."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        jobs = list(client.conversions.list(filter=filter))
    if as_json:
        print_json({"conversion_jobs": jobs})
        return
    print_table(
        f"conversion jobs in projects/{project}",
        ["id", "state", "source", "precision", "agreement", "outputs"],
        [
            (
                j.name.rsplit("/", 1)[-1],
                _state(j),
                (j.adapter_model or j.source_model).rsplit("/", 1)[-1],
                pb.Precision.Name(j.precision).lower(),
                f"{j.parity_report.greedy_agreement:.3f}" if j.HasField("parity_report") else "-",
                ", ".join(m.rsplit("/", 1)[-1] for m in j.output_models),
            )
            for j in jobs
        ],
    )


@app.command("cancel")
def cancel(
    name: NameArg,
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Cancel a queued or running conversion (nothing of it is published)."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        job = client.conversions.cancel(name).job
    if as_json:
        print_json(job)
    else:
        console.print(f"{job.name}: {_state(job)}")


@app.command("delete")
def delete(
    name: NameArg,
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Delete an ended conversion job and its events (not the models it published)."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        full = client.conversions.job_name(name)
        client.conversions.delete(name)
    if as_json:
        print_json({"deleted": full})
    else:
        console.print(f"deleted {full}")
