"""`tuneforge jobs create|watch|get|list|cancel|delete|events|checkpoints|plot`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from tuneforge.cli.output import (
    console,
    err_console,
    errors_as_exit,
    fail,
    print_json,
    print_table,
)
from tuneforge.client import Client, TrainingJobHandle
from tuneforge.training.v1 import training_service_pb2 as pb

app = typer.Typer(help="Fine-tuning jobs: create, watch, inspect, cancel.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ProjectOpt = Annotated[str, typer.Option("--project", envvar="TUNEFORGE_PROJECT")]
TargetOpt = Annotated[str | None, typer.Option("--target", help="Host of the services.")]
NameArg = Annotated[str, typer.Argument(help="Job id or full resource name.")]


def _state(job: pb.TrainingJob) -> str:
    return pb.TrainingJob.State.Name(job.state)


def _show(job: pb.TrainingJob) -> None:
    state = _state(job)
    colour = {"SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "yellow"}.get(state, "cyan")
    console.print(
        f"[bold]{job.name}[/bold]  [{colour}]{state}[/{colour}]  "
        f"{pb.Method.Name(job.method).lower()}"
    )
    console.print(f"  model           {job.base_model}")
    console.print(
        f"  dataset         {job.training_dataset}"
        + (f" (validation {job.validation_dataset})" if job.validation_dataset else "")
    )
    hp = job.resolved_hyperparameters
    console.print(
        f"  hyperparameters epochs {hp.epochs:g}, lr {hp.learning_rate:g}, batch "
        f"{hp.batch_size}x{hp.gradient_accumulation_steps}, seq {hp.max_seq_len}, "
        f"packing {hp.packing}, {hp.precision}"
    )
    if job.HasField("resolved_lora"):
        lora = job.resolved_lora
        console.print(
            f"  lora            r={lora.rank} alpha={lora.alpha:g} "
            f"dropout={lora.dropout:g} on {', '.join(lora.target_modules)}"
        )
    d = job.distribution
    console.print(
        f"  distribution    {d.processes_per_node or 'auto'} process(es), ZeRO-{d.zero_stage}"
    )
    p = job.progress
    if p.total_steps:
        console.print(
            f"  progress        step {p.step}/{p.total_steps}, epoch {p.epoch:.2f}, "
            f"{p.trained_tokens:,} tokens"
        )
    if job.HasField("latest_metrics"):
        m = job.latest_metrics
        console.print(
            f"  last step       loss {m.loss:.4f}, lr {m.learning_rate:.2e}, "
            f"{m.tokens_per_second:.0f} tokens/s"
        )
    if job.HasField("latest_eval"):
        e = job.latest_eval
        console.print(f"  last eval       loss {e.loss:.4f}, token accuracy {e.token_accuracy:.3f}")
    if job.output_model:
        console.print(f"  output          {job.output_model}")
    if job.error.message:
        console.print(f"  error           {job.error.message}", highlight=False)


def _hyperparameters(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@app.command("create")
def create(
    model: Annotated[str, typer.Option("--model", help="Base model (catalog id).")],
    dataset: Annotated[str, typer.Option("--dataset", help="READY training dataset.")],
    validation_dataset: Annotated[str | None, typer.Option("--validation-dataset")] = None,
    method: Annotated[str, typer.Option("--method", help="lora, qlora, dora or full.")] = "lora",
    epochs: Annotated[float | None, typer.Option("--epochs")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps")] = None,
    learning_rate: Annotated[float | None, typer.Option("--learning-rate", "--lr")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    grad_accum: Annotated[int | None, typer.Option("--grad-accum")] = None,
    max_seq_len: Annotated[int | None, typer.Option("--max-seq-len")] = None,
    warmup_ratio: Annotated[float | None, typer.Option("--warmup-ratio")] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay")] = None,
    lr_scheduler: Annotated[str | None, typer.Option("--lr-scheduler")] = None,
    packing: Annotated[bool | None, typer.Option("--packing/--no-packing")] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="fp32, bf16, fp16")] = None,
    eval_every: Annotated[int | None, typer.Option("--eval-every", help="Steps.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option("--checkpoint-every")] = None,
    lora_rank: Annotated[int | None, typer.Option("--lora-rank")] = None,
    lora_alpha: Annotated[float | None, typer.Option("--lora-alpha")] = None,
    lora_dropout: Annotated[float | None, typer.Option("--lora-dropout")] = None,
    target_modules: Annotated[list[str] | None, typer.Option("--target-module")] = None,
    nproc: Annotated[int, typer.Option("--nproc", help="Processes per node (0: auto).")] = 0,
    zero_stage: Annotated[int, typer.Option("--zero-stage", help="DeepSpeed ZeRO 0-3.")] = 0,
    offload_optimizer: Annotated[bool, typer.Option("--offload-optimizer")] = False,
    offload_parameters: Annotated[bool, typer.Option("--offload-parameters")] = False,
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes (>1: --launcher kubernetes).")] = 0,
    launcher: Annotated[
        str, typer.Option("--launcher", help="local, or kubernetes (a Kubeflow TrainJob).")
    ] = "",
    k8s_namespace: Annotated[str, typer.Option("--k8s-namespace")] = "",
    k8s_runtime: Annotated[str, typer.Option("--k8s-runtime", help="e.g. torch-distributed")] = "",
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node")] = 0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    suffix: Annotated[str, typer.Option("--suffix", help="Part of the output model's id.")] = "",
    priority: Annotated[int, typer.Option("--priority")] = 0,
    name: Annotated[str, typer.Option("--name", help="Job id (default: generated).")] = "",
    request_id: Annotated[str, typer.Option("--request-id")] = "",
    watch: Annotated[bool, typer.Option("--watch", help="Follow the job to its end.")] = False,
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Queue a fine-tuning job; unset hyperparameters are chosen from the model and data."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        handle = client.jobs.create(
            model,
            dataset,
            validation_dataset=validation_dataset,
            method=method,
            hyperparameters=_hyperparameters(
                epochs=epochs,
                max_steps=max_steps,
                learning_rate=learning_rate,
                batch_size=batch_size,
                gradient_accumulation_steps=grad_accum,
                max_seq_len=max_seq_len,
                warmup_ratio=warmup_ratio,
                weight_decay=weight_decay,
                lr_scheduler=lr_scheduler,
                packing=packing,
                precision=precision,
                eval_interval_steps=eval_every,
                checkpoint_interval_steps=checkpoint_every,
            ),
            lora=_hyperparameters(
                rank=lora_rank,
                alpha=lora_alpha,
                dropout=lora_dropout,
                target_modules=target_modules,
            ),
            processes_per_node=nproc,
            zero_stage=zero_stage,
            offload_optimizer=offload_optimizer,
            offload_parameters=offload_parameters,
            nodes=nodes,
            launcher=launcher,
            kubernetes={
                k: v
                for k, v in {
                    "namespace": k8s_namespace,
                    "runtime": k8s_runtime,
                    "gpus_per_node": gpus_per_node,
                }.items()
                if v
            },
            seed=seed,
            suffix=suffix,
            priority=priority,
            job_id=name,
            request_id=request_id,
        )
        if watch:
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
        console.print(f"follow it with: tuneforge jobs watch {handle.name.rsplit('/', 1)[-1]}")


def _follow(handle: TrainingJobHandle) -> pb.TrainingJob:
    """A live progress bar with loss and ETA; evaluations, checkpoints and state changes are
    printed above it."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("step {task.completed:.0f}/{task.fields[steps]}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console) as bar:
        task = bar.add_task(
            handle.name.rsplit("/", 1)[-1], total=None, loss="-", speed="", steps="?"
        )

        def on_event(event: pb.TrainingJobEvent) -> None:
            kind = event.WhichOneof("payload")
            if kind == "metrics":
                m = event.metrics
                bar.update(
                    task,
                    completed=m.step,
                    total=m.total_steps or None,
                    steps=m.total_steps or "?",
                    loss=f"{m.loss:.4f}",
                    speed=f"{m.tokens_per_second:.0f} tok/s",
                )
            elif kind == "eval":
                e = event.eval
                bar.console.print(
                    f"  eval at step {e.step}: loss {e.loss:.4f}, "
                    f"token accuracy {e.token_accuracy:.3f}"
                )
            elif kind == "checkpoint":
                bar.console.print(f"  checkpoint at step {event.checkpoint.step}")
            elif kind == "state_change":
                s = event.state_change
                bar.console.print(
                    f"  {pb.TrainingJob.State.Name(s.state)}: {s.reason}", highlight=False
                )
            elif kind == "log" and event.log.level == "error":
                bar.console.print(f"  [red]{event.log.message}[/red]", highlight=False)

        return handle.wait(on_event=on_event)


@app.command("watch")
def watch(
    name: NameArg,
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Follow a job: a live progress bar with loss and ETA (or JSON events with --json)."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        handle = client.jobs.get(name)
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
    """Show a job."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        job = client.jobs.get(name).job
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
    """List the project's jobs."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        jobs = list(client.jobs.list(filter=filter))
    if as_json:
        print_json({"training_jobs": jobs})
        return
    print_table(
        f"training jobs in projects/{project}",
        ["id", "state", "method", "model", "dataset", "step", "loss", "output"],
        [
            (
                j.name.rsplit("/", 1)[-1],
                _state(j),
                pb.Method.Name(j.method).lower(),
                j.base_model.rsplit("/", 1)[-1],
                j.training_dataset.rsplit("/", 1)[-1],
                f"{j.progress.step}/{j.progress.total_steps}",
                f"{j.latest_metrics.loss:.4f}" if j.HasField("latest_metrics") else "-",
                j.output_model.rsplit("/", 1)[-1],
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
    """Cancel a queued or running job (its checkpoints are kept)."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        job = client.jobs.cancel(name).job
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
    """Delete an ended job with its events and checkpoints (not its output model)."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        full = client.jobs.job_name(name)
        client.jobs.delete(name)
    if as_json:
        print_json({"deleted": full})
    else:
        console.print(f"deleted {full}")


@app.command("events")
def events(
    name: NameArg,
    type: Annotated[
        str, typer.Option("--type", help="state_change, metrics, eval, log, checkpoint")
    ] = "",
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """The job's history of events."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        found = list(client.jobs.events(name, filter=f"type={type}" if type else ""))
    if as_json:
        print_json({"events": found})
        return
    rows = []
    for e in found:
        kind = e.WhichOneof("payload")
        if kind == "metrics":
            text = (
                f"step {e.metrics.step} loss {e.metrics.loss:.4f} "
                f"lr {e.metrics.learning_rate:.2e} {e.metrics.tokens_per_second:.0f} tok/s"
            )
        elif kind == "eval":
            text = f"step {e.eval.step} eval loss {e.eval.loss:.4f} acc {e.eval.token_accuracy:.3f}"
        elif kind == "state_change":
            text = f"{pb.TrainingJob.State.Name(e.state_change.state)}: {e.state_change.reason}"
        elif kind == "checkpoint":
            text = f"checkpoint at step {e.checkpoint.step}: {e.checkpoint.artifact.uri}"
        else:
            text = e.log.message
        rows.append((e.sequence, e.time.ToDatetime().strftime("%H:%M:%S"), kind, text))
    print_table(f"events of {name}", ["#", "time", "type", "event"], rows)


@app.command("checkpoints")
def checkpoints(
    name: NameArg,
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """The job's checkpoints in the object store."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        found = client.jobs.checkpoints(name)
    if as_json:
        print_json({"checkpoints": found})
        return
    print_table(
        f"checkpoints of {name}",
        ["step", "epoch", "loss", "files", "uri"],
        [
            (
                c.step,
                f"{c.epoch:.2f}",
                f"{c.metrics.get('loss', float('nan')):.4f}",
                len(c.artifact.files),
                c.artifact.uri,
            )
            for c in found
        ],
    )


@app.command("plot")
def plot(
    name: NameArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.")] = Path(
        "loss.png"
    ),
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Plot the training loss and the evaluation loss against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with errors_as_exit(as_json), Client(target, project=project) as client:
        found = list(client.jobs.events(name))
    train = [
        (e.metrics.step, e.metrics.loss) for e in found if e.WhichOneof("payload") == "metrics"
    ]
    evals = [(e.eval.step, e.eval.loss) for e in found if e.WhichOneof("payload") == "eval"]
    if not train:
        fail(f"{name} has no training metrics yet", as_json)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot(*zip(*train, strict=True), label="training loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="evaluation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(name.rsplit("/", 1)[-1])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(output)
    plt.close(fig)
    if as_json:
        print_json({"output": str(output), "points": len(train), "eval_points": len(evals)})
    else:
        console.print(f"wrote {output} ({len(train)} steps, {len(evals)} evaluations)")
