"""The docs under docs/ match the code: no network, no services, a few seconds.

- docs/api.md and docs/configuration.md are what their generators write now (`--check`), and the
  descriptor set for an Envoy transcoder can be written;
- every `tuneforge ...` command in docs/walkthrough.md exists, with the options it is given
  (each one's `--help` runs), and every `client.<namespace>.<method>(...)` call of its Python
  snippets exists on the SDK with the keyword arguments it is given.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import shlex
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from typer.main import get_command
from typer.testing import CliRunner

import tuneforge
from tuneforge.cli.main import app
from tuneforge.inference_client import generation_parameters

ROOT = Path(__file__).resolve().parent.parent
WALKTHROUGH = ROOT / "docs" / "walkthrough.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", ["gen_api_docs", "gen_config_docs"])
def test_generated_docs_are_current(script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_script(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--check"])
    assert module.main() == 0, f"{module.OUTPUT} is stale: run scripts/{script}.py"


def test_descriptor_set_holds_every_service(tmp_path: Path) -> None:
    module = load_script("gen_api_docs")
    out = tmp_path / "tuneforge.protoset"
    module.compile_descriptor_set(out)
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    services = {f"{f.package}.{s.name}" for f in fds.file for s in f.service}
    assert {
        "tuneforge.datasets.v1.DatasetService",
        "tuneforge.training.v1.ModelService",
        "tuneforge.training.v1.TrainingService",
        "tuneforge.conversion.v1.ConversionService",
        "tuneforge.inference.v1.InferenceService",
        "tuneforge.inference.v1.EvaluationService",
        "inference.GRPCInferenceService",
    } <= services
    # Envoy needs the imports (google.api, google.rpc, well-known types) in the same set.
    names = {f.name for f in fds.file}
    assert {"google/api/field_behavior.proto", "google/protobuf/timestamp.proto"} <= names
    assert all(f.source_code_info.location for f in fds.file if f.name.startswith("tuneforge/"))


def shell_commands(markdown: str) -> list[list[str]]:
    """The argument lists after `tuneforge` in shell blocks and inline code of `markdown`."""
    snippets: list[str] = []
    for language, body in FENCE.findall(markdown):
        if language not in SHELL_LANGUAGES:
            continue
        body = body.replace("\\\n", " ")
        for line in body.splitlines():
            if language == "console":
                if not line.startswith("$ "):
                    continue  # output, not a command
                line = line[2:]
            snippets.append(line)
    prose = FENCE.sub("", markdown)
    snippets += re.findall(r"`((?:\S*/)?tuneforge [^`]+)`", prose)
    commands = []
    for snippet in snippets:
        # One segment per simple command: pipes, lists and command substitutions split them.
        for segment in re.split(r"\||&&|;|\$\(|\)", snippet):
            if not re.search(r"(^|\s)(\S*/)?tuneforge(\s|$)", segment):
                continue
            words = shlex.split(segment, comments=True)
            start = next(i for i, w in enumerate(words) if w.rsplit("/", 1)[-1] == "tuneforge")
            commands.append(words[start + 1 :])
    return commands


def resolve(words: list[str]) -> tuple[list[str], Any, list[str]]:
    """(command path, click command, the remaining words) of `tuneforge WORDS`."""
    command: Any = get_command(app)
    path: list[str] = []
    rest = list(words)
    while hasattr(command, "commands"):
        assert rest, f"`tuneforge {' '.join(words)}` names a group, not a command"
        name = rest.pop(0)
        assert name in command.commands, (
            f"`tuneforge {' '.join(words)}`: no command {name!r} in `tuneforge {' '.join(path)}` "
            f"(it has {sorted(command.commands)})"
        )
        path.append(name)
        command = command.commands[name]
    return path, command, rest


def test_walkthrough_commands_exist() -> None:
    commands = shell_commands(WALKTHROUGH.read_text())
    paths = set()
    for words in commands:
        path, command, rest = resolve(words)
        paths.add(tuple(path))
        known = {"--help"}
        for param in command.params:
            known.update(getattr(param, "opts", []))
            known.update(getattr(param, "secondary_opts", []))
        for word in rest:
            if word.startswith("-") and word != "-":
                option = word.split("=", 1)[0]
                assert option in known, (
                    f"`tuneforge {' '.join(words)}`: `tuneforge {' '.join(path)}` has no {option}"
                )
    # The flow the walkthrough promises is all there (and the parser found it).
    for expected in [
        ("up",),
        ("models", "import"),
        ("datasets", "upload"),
        ("jobs", "create"),
        ("eval",),
        ("chat",),
        ("convert",),
        ("conversions", "get"),
        ("down",),
    ]:
        assert expected in paths, f"the walkthrough lost `tuneforge {' '.join(expected)}`"
    runner = CliRunner()
    for shown in sorted(paths):
        result = runner.invoke(app, [*shown, "--help"])
        assert result.exit_code == 0, f"`tuneforge {' '.join(shown)} --help`: {result.output}"
        assert "Usage" in result.output


def sdk_calls(markdown: str) -> list[tuple[list[str], list[str], int]]:
    """(attribute chain after `client`, keyword names, line) of each client call in the Python
    blocks of `markdown`; every block must parse."""
    calls = []
    for language, body in FENCE.findall(markdown):
        if language != "python":
            continue
        tree = ast.parse(body)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            chain: list[str] = []
            target: ast.expr = node.func
            while isinstance(target, ast.Attribute):
                chain.insert(0, target.attr)
                target = target.value
            if isinstance(target, ast.Name) and target.id == "client" and chain:
                keywords = [k.arg for k in node.keywords if k.arg]
                calls.append((chain, keywords, node.lineno))
    return calls


def test_walkthrough_sdk_calls_exist() -> None:
    calls = sdk_calls(WALKTHROUGH.read_text())
    assert len(calls) > 20
    # Channels connect lazily: nothing listens on these addresses and nothing is called.
    with tuneforge.Client("127.0.0.1") as client:
        for chain, keywords, _line in calls:
            target: Any = client
            for attr in chain:
                assert hasattr(target, attr), f"client.{'.'.join(chain)} does not exist"
                target = getattr(target, attr)
            parameters = inspect.signature(target).parameters
            accepted = set(parameters)
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
                # generate() and chat() pass their other keywords to generation_parameters().
                accepted |= set(inspect.signature(generation_parameters).parameters)
            for keyword in keywords:
                assert keyword in accepted, f"client.{'.'.join(chain)}() takes no {keyword}="
