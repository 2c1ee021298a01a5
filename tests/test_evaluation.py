"""Evaluations on the tiny Llama, against the real object store: the service's scores equal the
ones computed here from the same model's greedy answers; counts follow the validation split; the
report is stored with its manifest; bad requests name their field; evaluations survive a restart
(an interrupted one runs again); the CLI prints the report as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import scratch_bucket

from services.common.artifact_store import ArtifactStore
from services.common.database import Database
from services.common.manifest import Manifest
from services.common.settings import ServiceSettings, StoreSettings
from services.inference.evaluation import row_from_canonical, score
from services.inference.evaluation_records import (
    PENDING,
    EvaluationRecord,
    EvaluationRecords,
)
from tuneforge import Client, TuneforgeError
from tuneforge.inference.v1 import evaluation_service_pb2 as pb
from tuneforge.inference.v1 import evaluation_service_pb2_grpc as pb_grpc
from tuneforge.inference_client import generation_parameters
from tuneforge.testing import local_services

MAX_TOKENS = 6
QUESTIONS = [f"Question {i}: which colour is the sky at {i} o'clock?" for i in range(16)]
ALL_SCORERS = ["exact_match", "contains", "json_valid"]


def greedy(client: Client, messages: list[dict[str, str]]) -> str:
    return client.inference.chat("tiny", messages, temperature=0.0, max_tokens=MAX_TOKENS).text


def passes(answer: str, reference: str) -> dict[str, bool]:
    """The scorers as the proto defines them, written out here independently."""
    try:
        json.loads(answer)
        valid = True
    except ValueError:
        valid = False
    return {
        "EXACT_MATCH": answer.strip() == reference.strip(),
        "CONTAINS": reference.strip() in answer,
        "JSON_VALID": valid,
    }


@pytest.fixture(scope="module")
def bucket(store_settings: StoreSettings) -> Iterator[StoreSettings]:
    with scratch_bucket(store_settings, "ev") as settings:
        yield settings


@pytest.fixture(scope="module")
def client(bucket: StoreSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    home = tmp_path_factory.mktemp("home")
    with local_services(bucket, home, services=["datasets", "training", "inference"]) as c:
        c.models.import_model("tiny", preset="tiny-llama")
        # References crafted from the model's own greedy answers: a third equal them, a third
        # are a piece of them (contained, not equal), a third are wrong.
        rows = []
        for i, question in enumerate(QUESTIONS):
            prompt = [{"role": "user", "content": question}]
            answer = greedy(c, prompt).strip()
            if i % 3 == 0 and answer:
                reference = answer
            elif i % 3 == 1 and len(answer) > 2:
                reference = answer[: len(answer) // 2].strip() or "zz-absent"
            else:
                reference = "zz-absent"
            rows.append({"messages": [*prompt, {"role": "assistant", "content": reference}]})
        path = home / "qa.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        c.datasets.upload(path, dataset_id="qa", model="tiny", validation_split=0.5, seed=3)
        yield c


def validation_rows(bucket: StoreSettings, client: Client) -> list[dict]:
    """The dataset's validation rows, read from the store (not through the service)."""
    store = ArtifactStore(bucket)
    sha = client.datasets.get("qa").content_sha256
    data = store.get_bytes(f"datasets/content/{sha}/validation.jsonl").decode()
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def test_scorers_and_rows() -> None:
    assert score("EXACT_MATCH", "  Paris\n", "Paris")
    assert not score("EXACT_MATCH", "Paris, France", "Paris")
    assert score("CONTAINS", "It is Paris, France", "Paris")
    assert not score("CONTAINS", "It is Lyon", "Paris")
    assert score("JSON_VALID", ' {"a": [1, 2]} ', "")
    assert score("JSON_VALID", "42", "")
    assert not score("JSON_VALID", "{'a': 1}", "")
    assert not score("JSON_VALID", "", "")
    row = row_from_canonical(
        7,
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris"},
            ]
        },
    )
    assert row is not None and row.line == 7 and row.reference == "Paris"
    assert [m["content"] for m in row.prompt] == ["Be brief.", "Hi", "Hello", "Capital of France?"]
    assert row_from_canonical(1, {"messages": [{"role": "user", "content": "x"}]}) is None
    preference = row_from_canonical(
        2, {"messages": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}
    )
    assert preference is not None and preference.reference == "a"


def test_scores_equal_the_models_greedy_answers_scored_here(
    client: Client, bucket: StoreSettings
) -> None:
    dataset = client.datasets.get("qa")
    handle = client.evaluations.create(
        "tiny",
        "qa",
        scorers=ALL_SCORERS,
        parameters=generation_parameters(max_tokens=MAX_TOKENS),
        evaluation_id="base",
    )
    assert handle.state in ("PENDING", "RUNNING", "SUCCEEDED")
    evaluation = handle.wait(timeout_s=300)
    assert evaluation.state == pb.Evaluation.SUCCEEDED, evaluation.error.message
    report = evaluation.report
    assert report.row_count == dataset.validation_row_count > 0
    assert report.seconds > 0 and report.tokens_per_second > 0

    expected = {"EXACT_MATCH": 0, "CONTAINS": 0, "JSON_VALID": 0}
    rows = validation_rows(bucket, client)
    assert len(rows) == report.row_count
    for row in rows:
        answer = greedy(client, row["messages"][:-1])
        for name, ok in passes(answer, row["messages"][-1]["content"]).items():
            expected[name] += ok
    # The crafted references make both outcomes occur in the split (the split is seeded).
    assert 0 < expected["EXACT_MATCH"] < len(rows)
    assert expected["CONTAINS"] > expected["EXACT_MATCH"]
    assert dict(report.scores) == pytest.approx({k: v / len(rows) for k, v in expected.items()})

    assert len(report.samples) == min(16, len(rows))
    first = report.samples[0]
    assert first.line == 1 and first.prompt == rows[0]["messages"][-2]["content"]
    assert first.reference == rows[0]["messages"][-1]["content"]
    assert first.answer == greedy(client, rows[0]["messages"][:-1])
    assert set(first.passed) == {"EXACT_MATCH", "CONTAINS", "JSON_VALID"}
    assert evaluation.HasField("create_time") and evaluation.HasField("end_time")
    assert evaluation.model == "projects/default/models/tiny"
    assert evaluation.dataset == "projects/default/datasets/qa"
    assert evaluation.split == "validation"


def test_the_report_is_stored_with_a_manifest(client: Client, bucket: StoreSettings) -> None:
    evaluation = client.evaluations.get("base").evaluation
    assert evaluation.state == pb.Evaluation.SUCCEEDED
    store = ArtifactStore(bucket)
    prefix = "evaluations/default/base/"
    artifact = evaluation.report.artifact
    assert artifact.uri == store.uri(prefix)
    manifest = store.read_manifest(prefix)
    assert manifest is not None and manifest.kind == "evaluation"
    assert manifest.sha256() == artifact.manifest_sha256
    assert [f.path for f in manifest.files] == ["report.json"] == [f.path for f in artifact.files]
    assert manifest.lineage["validation_dataset"] == "projects/default/datasets/qa"
    assert manifest.metrics["exact_match"] == pytest.approx(evaluation.report.scores["EXACT_MATCH"])
    stored = json.loads(store.get_bytes(prefix + "report.json"))
    assert stored["row_count"] == evaluation.report.row_count == len(stored["rows"])
    assert stored["scores"] == pytest.approx(dict(evaluation.report.scores))
    assert stored["source"] == "validation.jsonl"


def test_max_rows_train_split_list_and_request_id(client: Client) -> None:
    handle = client.evaluations.create(
        "tiny",
        "qa",
        split="train",
        max_rows=3,
        parameters=generation_parameters(max_tokens=2),
        evaluation_id="train-three",
        request_id="req-train-three",
    )
    again = client.evaluations.create(
        "tiny",
        "qa",
        split="train",
        max_rows=3,
        parameters=generation_parameters(max_tokens=2),
        request_id="req-train-three",
    )
    assert again.name == handle.name  # a retried create is the same evaluation
    evaluation = handle.wait(timeout_s=300)
    assert evaluation.state == pb.Evaluation.SUCCEEDED, evaluation.error.message
    assert evaluation.report.row_count == 3 and evaluation.split == "train"
    # No scorer given: exact match.
    assert list(evaluation.report.scores) == ["EXACT_MATCH"]
    assert list(evaluation.scorers) == [pb.EXACT_MATCH]

    names = [e.name for e in client.evaluations.list(page_size=1)]
    assert "projects/default/evaluations/base" in names
    assert "projects/default/evaluations/train-three" in names
    done = [e.name for e in client.evaluations.list(filter="state=SUCCEEDED AND dataset=qa")]
    assert "projects/default/evaluations/train-three" in done

    with pytest.raises(TuneforgeError) as info:
        client.evaluations.create("tiny", "qa", max_rows=2, request_id="req-train-three")
    assert info.value.reason == "REQUEST_ID_CONFLICT"


def test_unknown_resources_and_bad_fields(client: Client) -> None:
    def refused(**kwargs: object) -> TuneforgeError:
        args = {"model": "tiny", "dataset": "qa", **kwargs}
        with pytest.raises(TuneforgeError) as info:
            client.evaluations.create(**args)  # type: ignore[arg-type]
        return info.value

    err = refused(model="missing")
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert err.metadata["resource"] == "projects/default/models/missing"
    err = refused(dataset="missing")
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert err.metadata["resource"] == "projects/default/datasets/missing"
    assert refused(adapter="missing").code == grpc.StatusCode.NOT_FOUND

    for kwargs, field in (
        ({"split": "test"}, "evaluation.split"),
        ({"max_rows": -1}, "evaluation.max_rows"),
        (
            {"parameters": generation_parameters(temperature=-1.0)},
            "evaluation.parameters.temperature",
        ),
        ({"backend": "onnx"}, "evaluation.backend"),
        ({"adapter": "tiny"}, "evaluation.adapter"),
        ({"evaluation_id": "Bad_Id"}, "evaluation_id"),
        ({"model": "projects/default/datasets/qa"}, "evaluation.model"),
    ):
        err = refused(**kwargs)
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, kwargs
        assert err.metadata["field"] == field, (kwargs, err.metadata)

    stub = pb_grpc.EvaluationServiceStub(client.channel("inference"))
    with pytest.raises(grpc.RpcError) as raw:
        stub.CreateEvaluation(
            pb.CreateEvaluationRequest(
                parent="projects/default",
                evaluation=pb.Evaluation(
                    model="tiny", dataset="qa", scorers=[pb.SCORER_UNSPECIFIED]
                ),
            ),
            timeout=30,
        )
    err = TuneforgeError.from_rpc_error(raw.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.metadata["field"] == "evaluation.scorers[0]"
    with pytest.raises(grpc.RpcError) as raw:
        stub.CreateEvaluation(
            pb.CreateEvaluationRequest(
                parent="projects/default",
                evaluation=pb.Evaluation(model="tiny", dataset="qa", scorers=[pb.EXACT_MATCH, 7]),  # type: ignore[list-item]
            ),
            timeout=30,
        )
    assert TuneforgeError.from_rpc_error(raw.value).metadata["field"] == "evaluation.scorers[1]"
    with pytest.raises(grpc.RpcError) as raw:
        stub.CreateEvaluation(pb.CreateEvaluationRequest(parent="projects/default"), timeout=30)
    assert TuneforgeError.from_rpc_error(raw.value).metadata["field"] == "evaluation.model"

    with pytest.raises(TuneforgeError) as info:
        client.evaluations.get("never-made")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(TuneforgeError) as info:
        client.evaluations.create("tiny", "qa", evaluation_id="base")
    assert info.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_adapters_and_onnx_models_score_like_they_serve(
    client: Client, bucket: StoreSettings, tmp_path: Path
) -> None:
    """An adapter on the base, and an ONNX export of the base: the evaluation's scores equal
    those of the answers the same model gives through client.inference."""
    from test_inference import download, make_adapter, publish_adapter

    store = ArtifactStore(bucket)
    base = store.read_manifest("models/default/tiny/")
    assert base is not None
    base_dir = download(store, "tiny", tmp_path / "tiny")
    adapter_dir = make_adapter(base_dir, tmp_path / "lora", seed=5, targets=["q_proj", "v_proj"])
    publish_adapter(store, "tiny-lora", adapter_dir, base)
    out = tmp_path / "onnx"
    build = subprocess.run(
        [
            sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(base_dir),
            "-o", str(out), "-p", "fp32", "-e", "cpu", "-c", str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    onnx = Manifest(
        kind="model",
        name="projects/default/models/tiny-onnx",
        format="onnx-genai",
        lineage={"base_model": base.name, "base_model_sha256": base.sha256()},
        attributes=dict(base.attributes, model_kind="ONNX", base_model=base.name, source="test"),
    )
    files = store.upload_dir(out, "models/default/tiny-onnx/")
    store.write_manifest("models/default/tiny-onnx/", onnx.model_copy(update={"files": files}))

    rows = validation_rows(bucket, client)
    for model, adapter in (("tiny", "tiny-lora"), ("tiny-onnx", ""), ("tiny-lora", "")):
        evaluation = client.evaluations.create(
            model,
            "qa",
            adapter=adapter,
            scorers=["exact_match", "contains"],
            parameters=generation_parameters(max_tokens=MAX_TOKENS),
        ).wait(timeout_s=300)
        assert evaluation.state == pb.Evaluation.SUCCEEDED, evaluation.error.message
        expected = {"EXACT_MATCH": 0, "CONTAINS": 0}
        for row in rows:
            answer = client.inference.chat(
                model,
                row["messages"][:-1],
                adapter=adapter or None,
                temperature=0.0,
                max_tokens=MAX_TOKENS,
            ).text
            verdicts = passes(answer, row["messages"][-1]["content"])
            for name in expected:
                expected[name] += verdicts[name]
        scores = {k: v / len(rows) for k, v in expected.items()}
        assert dict(evaluation.report.scores) == pytest.approx(scores), (model, adapter)
    with pytest.raises(TuneforgeError) as info:
        client.evaluations.create("tiny-onnx", "qa", adapter="tiny-lora")
    assert info.value.metadata["field"] == "evaluation.adapter"


def test_evaluations_survive_a_restart_and_interrupted_ones_run_again(
    client: Client, bucket: StoreSettings, tmp_path: Path
) -> None:
    home = tmp_path / "inference-home"
    db_url = ServiceSettings(home=home).database_url_for("inference")
    records = EvaluationRecords(Database(db_url))
    spec = {
        "model": "projects/default/models/tiny",
        "adapter": "",
        "dataset": "projects/default/datasets/qa",
        "split": "validation",
        "scorers": ["EXACT_MATCH"],
        "max_rows": 2,
        "parameters": {"max_tokens": 2},
        "backend": "",
    }
    # One run a restart interrupted, and one interrupted as often as it may be.
    for evaluation_id, attempts in (("interrupted", 1), ("given-up", 3)):
        name = f"projects/default/evaluations/{evaluation_id}"
        records.create(EvaluationRecord(name, "default", evaluation_id, PENDING, spec))
        for _ in range(attempts):
            records.start(name)
    records.db.close()

    with local_services(bucket, home, services=["inference"]) as fresh:
        rerun = fresh.evaluations.get("interrupted").wait(timeout_s=300)
        assert rerun.state == pb.Evaluation.SUCCEEDED, rerun.error.message
        assert rerun.report.row_count == 2
        abandoned = fresh.evaluations.get("given-up").evaluation
        assert abandoned.state == pb.Evaluation.FAILED
        assert "interrupted by 3 service restarts" in abandoned.error.message
        scores = dict(rerun.report.scores)
    with local_services(bucket, home, services=["inference"]) as restarted:
        kept = restarted.evaluations.get("interrupted").evaluation
        assert kept.state == pb.Evaluation.SUCCEEDED and dict(kept.report.scores) == scores


def test_cli_eval_prints_the_report(client: Client, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    env["TUNEFORGE_HOME"] = str(tmp_path / "user-home")
    for service, target in client.targets.items():
        env[f"TUNEFORGE_{service.upper()}_TARGET"] = target

    def tf(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tuneforge.cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    done = tf(
        "eval", "--model", "tiny", "--dataset", "qa", "--scorer", "exact_match",
        "--scorer", "contains", "--max-rows", "2", "--max-tokens", "3", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    evaluation = json.loads(done.stdout)
    assert evaluation["state"] == "SUCCEEDED"
    assert evaluation["report"]["row_count"] == 2
    assert set(evaluation["report"]["scores"]) == {"EXACT_MATCH", "CONTAINS"}
    assert evaluation["report"]["artifact"]["uri"].endswith("/")

    shown = tf("eval", "--model", "tiny", "--dataset", "qa", "--max-rows", "1", "--max-tokens", "2")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "exact_match" in shown.stdout and "SUCCEEDED" in shown.stdout

    refused = tf("eval", "--model", "missing", "--dataset", "qa", "--json")
    assert refused.returncode == 1
    assert "projects/default/models/missing" in json.loads(refused.stdout)["error"]["message"]
