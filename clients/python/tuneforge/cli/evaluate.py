"""`tuneforge eval`: score a model on a dataset's held-out rows, wait, print the scores."""

from __future__ import annotations

from typing import Annotated

import typer

from tuneforge.cli.output import console, err_console, errors_as_exit, print_json, print_table
from tuneforge.client import Client
from tuneforge.inference.v1 import evaluation_service_pb2 as pb
from tuneforge.inference_client import generation_parameters


def _show(evaluation: pb.Evaluation) -> None:
    state = pb.Evaluation.State.Name(evaluation.state)
    colour = {"SUCCEEDED": "green", "FAILED": "red"}.get(state, "cyan")
    console.print(f"[bold]{evaluation.name}[/bold]  [{colour}]{state}[/{colour}]")
    model = evaluation.model + (f" + {evaluation.adapter}" if evaluation.adapter else "")
    console.print(f"  model           {model}", highlight=False)
    console.print(f"  dataset         {evaluation.dataset} ({evaluation.split})", highlight=False)
    if evaluation.error.message:
        console.print(f"  error           {evaluation.error.message}", highlight=False)
    if not evaluation.HasField("report"):
        return
    report = evaluation.report
    console.print(
        f"  rows            {report.row_count} in {report.seconds:.1f} s, "
        f"{report.tokens_per_second:.1f} tokens/s"
    )
    console.print(f"  report          {report.artifact.uri}report.json", highlight=False)
    print_table(
        "scores",
        ["scorer", "passed", "rows", "accuracy"],
        [
            (
                scorer.lower(),
                round(value * report.row_count),
                report.row_count,
                f"{value:.3f}",
            )
            for scorer, value in sorted(report.scores.items())
        ],
    )


def evaluate(
    model: Annotated[str, typer.Option("--model", help="Catalog model: base, merged or ONNX.")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset whose rows are scored.")],
    adapter: Annotated[str, typer.Option("--adapter", help="Adapter applied to --model.")] = "",
    scorers: Annotated[
        list[str] | None,
        typer.Option("--scorer", help="exact_match (default), contains, json_valid (repeatable)."),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="validation (default) or train.")] = "",
    max_rows: Annotated[int, typer.Option("--max-rows", help="Rows to score (0: all).")] = 0,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="Longest answer (0: server default).")
    ] = 0,
    name: Annotated[str, typer.Option("--name", help="Evaluation id (default: generated).")] = "",
    target: Annotated[str | None, typer.Option("--target", help="Host of the services.")] = None,
    project: Annotated[str, typer.Option("--project", envvar="TUNEFORGE_PROJECT")] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Evaluate a model on a dataset's validation rows (greedy decoding) and print its scores."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        handle = client.evaluations.create(
            model,
            dataset,
            adapter=adapter,
            scorers=scorers or [],
            split=split,
            max_rows=max_rows,
            parameters=generation_parameters(max_tokens=max_tokens),
            evaluation_id=name,
        )
        if as_json:
            final = handle.wait()
        else:
            with err_console.status(f"evaluating {handle.name.rsplit('/', 1)[-1]}") as status:
                final = handle.wait(
                    on_update=lambda e: status.update(
                        f"evaluating {e.name.rsplit('/', 1)[-1]}: "
                        f"{pb.Evaluation.State.Name(e.state).lower()}"
                    )
                )
    if as_json:
        print_json(final)
    else:
        _show(final)
    if final.state != pb.Evaluation.SUCCEEDED:
        raise typer.Exit(1)
