"""`tuneforge generate`, `tuneforge chat` and `tuneforge serve load|unload|list`.

The reply's text goes to stdout (as it is produced with --stream); how it ended (finish reason,
token counts, speed) goes to stderr, so `tuneforge generate ... > out.txt` keeps only the text.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from tuneforge.cli.output import console, err_console, errors_as_exit, print_json, print_table
from tuneforge.client import Client
from tuneforge.inference.v1 import inference_service_pb2 as pb
from tuneforge.inference_client import GenerationStream

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ProjectOpt = Annotated[str, typer.Option("--project", envvar="TUNEFORGE_PROJECT")]
TargetOpt = Annotated[str | None, typer.Option("--target", help="Host of the services.")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model id or full resource name.")]
AdapterOpt = Annotated[
    str | None, typer.Option("--adapter", "-a", help="Adapter (catalog model) to apply.")
]
BackendOpt = Annotated[
    str | None, typer.Option("--backend", help="pytorch or onnx (default: from the model).")
]
StreamOpt = Annotated[bool, typer.Option("--stream", help="Print the text as it is generated.")]
MaxTokensOpt = Annotated[
    int, typer.Option("--max-tokens", help="Most tokens to generate (0: server default).")
]
TemperatureOpt = Annotated[
    float | None, typer.Option("--temperature", help="0 for greedy decoding.")
]
TopPOpt = Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass.")]
TopKOpt = Annotated[int | None, typer.Option("--top-k", help="Sample among the k likeliest.")]
StopOpt = Annotated[
    list[str] | None, typer.Option("--stop", help="Stop before this text (repeatable).")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed for reproducible sampling.")]
IntervalOpt = Annotated[
    int | None,
    typer.Option(
        "--stream-interval-ms",
        min=0,
        max=10_000,
        help="Streams only: at least this long between messages, text joined (0: every token).",
    ),
]
PenaltyOpt = Annotated[
    float | None, typer.Option("--repetition-penalty", help="Above 1 discourages repeats.")
]

serve_app = typer.Typer(
    help="Models held by the inference service: load, unload, list.", no_args_is_help=True
)


def _params(
    max_tokens: int,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    stop: list[str] | None,
    seed: int | None,
    repetition_penalty: float | None,
) -> dict[str, Any]:
    return {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "stop": stop or [],
        "seed": seed,
        "repetition_penalty": repetition_penalty,
    }


def _summary(finish_reason: str, usage: pb.Usage | None, tokens_per_second: float = 0.0) -> None:
    parts = [finish_reason or "?"]
    if usage is not None:
        parts.append(f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens")
    if tokens_per_second:
        parts.append(f"{tokens_per_second:.1f} tokens/s")
    err_console.print(f"[dim][{' · '.join(parts)}][/dim]", highlight=False)


def _print_stream(stream: GenerationStream, as_json: bool) -> str:
    """Prints a streamed reply (JSON lines with --json) and returns its whole text."""
    for message in stream:
        if as_json:
            print_json(message)
        else:
            sys.stdout.write(message.text)
            sys.stdout.flush()
    if not as_json:
        sys.stdout.write("\n")
        _summary(stream.finish_reason, stream.usage)
    return stream.text


def _print_reply(reply: pb.GenerateResponse, as_json: bool) -> None:
    if as_json:
        print_json(reply)
        return
    sys.stdout.write(reply.text + "\n")
    _summary(pb.FinishReason.Name(reply.finish_reason), reply.usage, reply.tokens_per_second)


def generate(
    prompt: Annotated[str, typer.Argument(help="The text to complete.")],
    model: ModelOpt,
    adapter: AdapterOpt = None,
    stream: StreamOpt = False,
    max_tokens: MaxTokensOpt = 0,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    stop: StopOpt = None,
    seed: SeedOpt = None,
    repetition_penalty: PenaltyOpt = None,
    stream_interval_ms: IntervalOpt = None,
    backend: BackendOpt = None,
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Complete a prompt with a served model (loaded from the catalog on first use)."""
    params = _params(max_tokens, temperature, top_p, top_k, stop, seed, repetition_penalty)
    if stream_interval_ms is not None and not stream:
        raise typer.BadParameter("needs --stream", param_hint="--stream-interval-ms")
    with errors_as_exit(as_json), Client(target, project=project) as client:
        if stream:
            _print_stream(
                client.inference.generate(
                    model,
                    prompt,
                    adapter=adapter,
                    stream=True,
                    stream_interval_ms=stream_interval_ms,
                    backend=backend,
                    **params,
                ),
                as_json,
            )
        else:
            reply = client.inference.generate(
                model, prompt, adapter=adapter, backend=backend, **params
            )
            _print_reply(reply, as_json)


def chat(
    model: ModelOpt,
    adapter: AdapterOpt = None,
    message: Annotated[
        list[str] | None,
        typer.Option("--message", help="One-shot: send this user message, print the reply."),
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="A system message.")] = None,
    max_tokens: MaxTokensOpt = 0,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    stop: StopOpt = None,
    seed: SeedOpt = None,
    repetition_penalty: PenaltyOpt = None,
    stream_interval_ms: IntervalOpt = None,
    backend: BackendOpt = None,
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Chat with a model through its chat template: an interactive conversation over stdin
    (one line per turn; /reset forgets it, /exit or end of input leaves), or one reply with
    --message (several --message options make a multi-turn user history)."""
    params = _params(max_tokens, temperature, top_p, top_k, stop, seed, repetition_penalty)
    if stream_interval_ms is not None and message:
        raise typer.BadParameter(
            "paces the interactive chat's streamed replies, not a --message reply",
            param_hint="--stream-interval-ms",
        )
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    with errors_as_exit(as_json), Client(target, project=project) as client:
        if message:
            turns = history + [{"role": "user", "content": m} for m in message]
            reply = client.inference.chat(model, turns, adapter=adapter, backend=backend, **params)
            _print_reply(reply, as_json)
            return
        _repl(client, model, adapter, backend, history, params, stream_interval_ms, as_json)


def _repl(
    client: Client,
    model: str,
    adapter: str | None,
    backend: str | None,
    history: list[dict[str, str]],
    params: dict[str, Any],
    stream_interval_ms: int | None,
    as_json: bool,
) -> None:
    """Reads user turns from stdin and streams each reply; the conversation grows turn by turn.
    Ctrl-C during a reply stops it (the server stops generating) and drops that turn."""
    interactive = sys.stdin.isatty()
    if interactive and not as_json:
        err_console.print(
            f"[dim]chatting with {model}; /reset to start over, /exit or Ctrl-D to leave, "
            "Ctrl-C to stop a reply[/dim]"
        )
    start = list(history)
    while True:
        if interactive and not as_json:
            console.print("[bold]>[/bold] ", end="")
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            return
        if not line:
            return
        text = line.rstrip("\n")
        if text.strip() in ("/exit", "/quit"):
            return
        if text.strip() == "/reset":
            history[:] = start
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        stream = client.inference.chat(
            model,
            history,
            adapter=adapter,
            stream=True,
            stream_interval_ms=stream_interval_ms,
            backend=backend,
            **params,
        )
        try:
            reply = _print_stream(stream, as_json)
        except KeyboardInterrupt:
            stream.cancel()
            history.pop()
            err_console.print("\n[dim][stopped][/dim]")
            continue
        history.append({"role": "assistant", "content": reply})


@serve_app.command("load")
def load(
    model: Annotated[str, typer.Argument(help="Model id or full resource name.")],
    adapter: Annotated[
        list[str] | None, typer.Option("--adapter", "-a", help="Adapter to load too.")
    ] = None,
    backend: BackendOpt = None,
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Load a model (and adapters) now instead of on first use."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        served = client.inference.load(model, adapter or [], backend=backend)
    if as_json:
        print_json(served)
    else:
        _print_served([served], f"loaded {served.model}")


@serve_app.command("unload")
def unload(
    model: Annotated[str, typer.Argument(help="Model id or full resource name.")],
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Unload a model; its running and queued requests end with ABORTED."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        name = client.model_name(model)
        client.inference.unload(model)
    if as_json:
        print_json({"unloaded": name})
    else:
        console.print(f"unloaded {name}")


@serve_app.command("list")
def list_(
    target: TargetOpt = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """The models the inference service holds, their state, adapters and load."""
    with errors_as_exit(as_json), Client(target, project=project) as client:
        served = list(client.inference.list())
    if as_json:
        print_json({"served_models": served})
    else:
        _print_served(served, "served models")


def _print_served(served: list[pb.ServedModel], title: str) -> None:
    print_table(
        title,
        ["model", "backend", "state", "adapters", "running", "queued", "error"],
        [
            (
                s.model.rsplit("/", 1)[-1],
                pb.Backend.Name(s.backend),
                pb.ServedModel.State.Name(s.state),
                ", ".join(a.rsplit("/", 1)[-1] for a in s.adapters) or "-",
                s.active_requests,
                s.queued_requests,
                s.error.message or "",
            )
            for s in served
        ],
    )
