"""`tuneforge up|down|status`: the local stack (object store + four services)."""

from __future__ import annotations

from typing import Annotated

import typer

from services.common.settings import StackSettings, StoreSettings
from services.stack.local_stack import LocalStack, StackError, StackState
from tuneforge.cli.output import console, fail, print_json, print_table

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _stack() -> LocalStack:
    store = StoreSettings()
    # An endpoint set in the environment means an external store (e.g. MinIO): do not start one.
    return LocalStack(StackSettings(), store, external_store="endpoint" in store.model_fields_set)


def _state_json(state: StackState) -> dict[str, object]:
    return {
        "components": {
            name: {
                "address": c.address,
                "pid": c.pid or None,
                "alive": c.alive,
                "health": c.health,
                "managed": c.managed,
                "log": c.log or None,
            }
            for name, c in state.components.items()
        }
    }


def _print_state(state: StackState) -> None:
    rows = [
        (name, c.address, c.pid or "-", c.health, c.log or ("external" if not c.managed else ""))
        for name, c in state.components.items()
    ]
    print_table("tuneforge stack", ["component", "address", "pid", "health", "log"], rows)


def up(
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for SERVING.")] = 60,
    as_json: JsonOpt = False,
) -> None:
    """Start the object store (unless TUNEFORGE_S3_ENDPOINT is set) and the four services."""
    stack = _stack()
    say = (lambda _m: None) if as_json else (lambda m: console.print(f"  {m}", highlight=False))
    try:
        state = stack.up(timeout_s=timeout, progress=say)
    except StackError as exc:
        fail(str(exc), as_json)
    if as_json:
        print_json(_state_json(state))
        return
    _print_state(state)
    unhealthy = [n for n, c in state.components.items() if c.health != "SERVING"]
    if unhealthy:
        fail(f"not serving: {', '.join(unhealthy)}", False)


def down(
    grace: Annotated[float, typer.Option("--grace", help="Seconds to drain before SIGKILL.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Stop exactly what `tuneforge up` started."""
    stack = _stack()
    say = (lambda _m: None) if as_json else (lambda m: console.print(f"  {m}", highlight=False))
    stopped = stack.down(grace_s=grace, progress=say)
    if as_json:
        print_json({"stopped": stopped})
    elif not stopped:
        console.print("nothing was running")


def status(as_json: JsonOpt = False) -> None:
    """Each component's address, pid and health."""
    state = _stack().status()
    if as_json:
        print_json(_state_json(state))
        return
    if not state.components:
        console.print("the stack is not running (start it with `tuneforge up`)")
        return
    _print_state(state)
