"""`tuneforge models import|list|get|delete`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneforge.cli.output import (
    console,
    errors_as_exit,
    fail,
    human_count,
    human_size,
    print_json,
    print_table,
)
from tuneforge.client import Client
from tuneforge.training.v1 import model_service_pb2 as pb

app = typer.Typer(
    help="The model catalog: import, list, inspect and delete models.", no_args_is_help=True
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ProjectOpt = Annotated[str, typer.Option("--project", envvar="TUNEFORGE_PROJECT")]


def _show(model: pb.Model) -> None:
    kind = pb.Model.Kind.Name(model.kind)
    console.print(f"[bold]{model.name}[/bold]  {kind}  {model.architecture} ({model.model_type})")
    console.print(
        f"  parameters      {model.parameter_count:,} ({human_count(model.parameter_count)})"
    )
    console.print(
        f"  dtype           {model.dtype}   context {model.context_length}   "
        f"vocab {model.vocab_size}"
    )
    console.print(f"  tokenizer       sha256:{model.tokenizer_sha256}")
    console.print(
        "  chat template   "
        + (f"sha256:{model.chat_template_sha256}" if model.chat_template_sha256 else "(none)")
    )
    console.print(f"  source          {model.source}")
    console.print(
        f"  stored at       {model.artifact.uri} "
        f"({len(model.artifact.files)} files, "
        f"{human_size(model.artifact.total_size_bytes)})"
    )


@app.command("import")
def import_(
    name: Annotated[str, typer.Option("--name", help="Model id, e.g. smollm2.")],
    gguf: Annotated[Path | None, typer.Option("--gguf", help="A GGUF file.")] = None,
    hf_dir: Annotated[
        Path | None, typer.Option("--hf-dir", help="A Hugging Face directory.")
    ] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="tiny-llama or tiny-phi3.")] = None,
    uri: Annotated[str | None, typer.Option("--uri", help="s3:// URI in the store.")] = None,
    display_name: Annotated[str, typer.Option("--display-name")] = "",
    seed: Annotated[int, typer.Option("--seed", help="Seed of a preset's weights.")] = 0,
    request_id: Annotated[str, typer.Option("--request-id", help="Idempotency key.")] = "",
    target: Annotated[str | None, typer.Option("--target", help="Host of the services.")] = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Import a base model from a GGUF file, a Hugging Face directory, a preset or the store."""
    given = [s for s in (gguf, hf_dir, preset, uri) if s]
    if len(given) != 1:
        fail("give exactly one of --gguf, --hf-dir, --preset, --uri", as_json)
    with errors_as_exit(as_json), Client(target, project=project) as client:

        def run() -> pb.Model:
            return client.models.import_model(
                name,
                gguf_file=str(gguf) if gguf else None,
                hf_dir=str(hf_dir) if hf_dir else None,
                preset=preset,
                uri=uri,
                display_name=display_name,
                seed=seed,
                request_id=request_id,
            )

        if as_json:
            print_json(run())
            return
        with console.status(f"importing {name} ..."):
            model = run()
    _show(model)


@app.command("get")
def get(
    name: Annotated[str, typer.Argument(help="Model id or full resource name.")],
    target: Annotated[str | None, typer.Option("--target")] = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Show one model and its manifest's files."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        model = client.models.get(name)
    if as_json:
        print_json(model)
        return
    _show(model)
    print_table(
        "files",
        ["path", "size", "sha256"],
        [(f.path, human_size(f.size_bytes), f.sha256) for f in model.artifact.files],
    )


@app.command("list")
def list_(
    filter: Annotated[str, typer.Option("--filter", help="e.g. kind=ADAPTER")] = "",
    target: Annotated[str | None, typer.Option("--target")] = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """List the project's models."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        models = list(client.models.list(filter=filter))
    if as_json:
        print_json({"models": models})
        return
    print_table(
        f"models in projects/{project}",
        ["id", "kind", "architecture", "parameters", "dtype", "size", "source"],
        [
            (
                m.name.rsplit("/", 1)[-1],
                pb.Model.Kind.Name(m.kind),
                m.architecture,
                human_count(m.parameter_count),
                m.dtype,
                human_size(m.artifact.total_size_bytes),
                m.source,
            )
            for m in models
        ],
    )


@app.command("delete")
def delete(
    name: Annotated[str, typer.Argument(help="Model id or full resource name.")],
    target: Annotated[str | None, typer.Option("--target")] = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Delete a model and its stored files."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        full = client.model_name(name)
        client.models.delete(name)
    if as_json:
        print_json({"deleted": full})
    else:
        console.print(f"deleted {full}")


@app.command("download")
def download(
    name: Annotated[str, typer.Argument(help="Model id or full resource name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the files to.")],
    target: Annotated[str | None, typer.Option("--target")] = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Download a model's files (each checked against its sha256), e.g. an ONNX model to run
    with onnxruntime-genai anywhere."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        folder = client.models.download(name, output)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    if as_json:
        print_json({"model": client.model_name(name), "folder": str(folder), "files": files})
    else:
        console.print(f"{len(files)} files in {folder}")
