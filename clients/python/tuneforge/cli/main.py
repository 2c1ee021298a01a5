"""Entry point of the `tuneforge` command."""

from __future__ import annotations

import typer

from tuneforge.cli import conversions, datasets, evaluate, generate, jobs, models, stack

app = typer.Typer(
    name="tuneforge",
    help="Self-hosted LLM fine-tuning: datasets, training, conversion and serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("up")(stack.up)
app.command("down")(stack.down)
app.command("status")(stack.status)
app.add_typer(models.app, name="models")
app.add_typer(datasets.app, name="datasets")
app.add_typer(jobs.app, name="jobs")
app.command("convert")(conversions.convert)
app.add_typer(conversions.app, name="conversions")
app.command("generate")(generate.generate)
app.command("chat")(generate.chat)
app.add_typer(generate.serve_app, name="serve")
app.command("eval")(evaluate.evaluate)


if __name__ == "__main__":
    app()
