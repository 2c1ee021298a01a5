"""`tuneforge up|status|down`: the local stack as a user runs it, in processes of its own."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from services.common.object_store_server import free_port_set


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def stack_env(tmp_path: Path) -> dict[str, str]:
    """Environment of a stack with its own home and ports (so it never meets a dev stack)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    env["TUNEFORGE_HOME"] = str(tmp_path / "home")
    env["HF_HUB_OFFLINE"] = "1"
    for service in ("datasets", "training", "conversion", "inference"):
        env[f"TUNEFORGE_{service.upper()}_PORT"] = str(_free_port())
    env["TUNEFORGE_STORE_PORTS"] = json.dumps(free_port_set())
    return env


def tf(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tuneforge {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _pids(status: dict) -> dict[str, int]:  # type: ignore[type-arg]
    return {name: c["pid"] for name, c in status["components"].items()}


def test_up_status_down_and_data_survives(stack_env: dict[str, str]) -> None:
    started = time.monotonic()
    try:
        up = json.loads(tf(stack_env, "up", "--json").stdout)
        assert time.monotonic() - started < 60
        components = up["components"]
        assert set(components) == {
            "object-store",
            "datasets",
            "training",
            "conversion",
            "inference",
        }
        assert all(c["health"] == "SERVING" for c in components.values()), components
        # `up` again is harmless: the same processes keep running.
        again = json.loads(tf(stack_env, "up", "--json").stdout)
        assert _pids(again) == _pids(up)

        status = json.loads(tf(stack_env, "status", "--json").stdout)
        assert _pids(status) == _pids(up)
        assert status["components"]["training"]["address"].endswith(
            stack_env["TUNEFORGE_TRAINING_PORT"]
        )

        tf(stack_env, "models", "import", "--preset", "tiny-llama", "--name", "keep", "--json")
    finally:
        down = json.loads(tf(stack_env, "down", "--json").stdout)
    assert set(down["stopped"]) == set(components)
    for pid in _pids(up).values():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    status = json.loads(tf(stack_env, "status", "--json").stdout)
    assert status["components"] == {}

    # Data survives down/up.
    tf(stack_env, "up", "--json")
    try:
        model = json.loads(tf(stack_env, "models", "get", "keep", "--json").stdout)
        assert model["name"] == "projects/default/models/keep"
    finally:
        tf(stack_env, "down", "--json")


def test_a_taken_port_is_named(stack_env: dict[str, str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", int(stack_env["TUNEFORGE_INFERENCE_PORT"])))
        sock.listen()
        try:
            proc = tf(stack_env, "up", "--json", check=False)
        finally:
            tf(stack_env, "down", "--json")
    assert proc.returncode == 1
    error = json.loads(proc.stdout)["error"]["message"]
    assert "inference" in error and stack_env["TUNEFORGE_INFERENCE_PORT"] in error
    assert "already in use" in error
