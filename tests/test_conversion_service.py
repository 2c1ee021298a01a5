"""The conversion service through its API: a trained adapter becomes a merged model and an ONNX
model, each registered in the catalog, with a stored parity report and a working gate."""

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

from services.common.settings import StoreSettings
from tuneforge import Client
from tuneforge.conversion.v1 import conversion_service_pb2 as pb
from tuneforge.errors import TuneforgeError
from tuneforge.testing import local_services
from tuneforge.training.v1 import model_service_pb2 as models_pb

ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"Item {i}: say the word number {i % 4}."},
            {"role": "assistant", "content": ["apple", "river", "stone", "cloud"][i % 4]},
        ]
    }
    for i in range(40)
]


@pytest.fixture(scope="module")
def bucket(store_settings: StoreSettings) -> Iterator[StoreSettings]:
    with scratch_bucket(store_settings, "cv") as settings:
        yield settings


@pytest.fixture(scope="module")
def client(bucket: StoreSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    home = tmp_path_factory.mktemp("home")
    with local_services(
        bucket, home, services=["datasets", "training", "conversion", "inference"]
    ) as c:
        c.models.import_model("tiny", preset="tiny-llama")
        rows = home / "words.jsonl"
        rows.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
        c.datasets.upload(rows, dataset_id="words", model="tiny", validation_split=0.2, seed=1)
        job = c.jobs.create(
            "tiny",
            "words",
            job_id="adapter",
            suffix="words",
            hyperparameters={
                "max_steps": 6,
                "max_seq_len": 64,
                "batch_size": 4,
                "learning_rate": 1e-2,
                "precision": "fp32",
            },
        ).wait(timeout_s=600)
        assert job.state == job.SUCCEEDED, job.error.message
        yield c


def adapter_name(client: Client) -> str:
    return client.jobs.get("adapter").job.output_model


def test_an_adapter_becomes_a_merged_and_an_onnx_model_with_a_parity_report(
    client: Client, bucket: StoreSettings, tmp_path: Path
) -> None:
    import onnxruntime_genai as og

    adapter = adapter_name(client)
    stages: list[str] = []
    handle = client.conversions.create(
        adapter, formats=["onnx", "merged"], precision="fp32", job_id="fp32", max_rows=4
    )
    job = handle.wait(
        on_event=lambda e: (
            stages.append(pb.ConversionJob.Stage.Name(e.progress.stage))
            if e.HasField("progress")
            else None
        ),
        timeout_s=600,
    )
    assert job.state == pb.ConversionJob.SUCCEEDED, job.error.message
    assert job.progress == 1.0
    for stage in ("DOWNLOADING", "MERGING", "EXPORTING", "CHECKING_PARITY", "PUBLISHING"):
        assert stage in stages
    report = job.parity_report
    assert report.passed and not report.forced
    # Prompts are the training job's validation rows (at most max_rows of them).
    assert 1 <= report.prompt_count <= 4 and report.greedy_agreement >= 0.95
    assert report.thresholds.HasField("min_greedy_agreement")

    assert len(job.output_models) == 2
    by_kind = {m.kind: m for m in map(client.models.get, job.output_models)}
    onnx_model, merged = by_kind[models_pb.Model.ONNX], by_kind[models_pb.Model.MERGED]
    onnx_name = onnx_model.name
    assert onnx_model.kind == models_pb.Model.ONNX and onnx_model.precision == "fp32"
    assert merged.kind == models_pb.Model.MERGED
    for model in (onnx_model, merged):
        assert model.base_model == "projects/default/models/tiny"
        assert model.lineage.conversion_job == job.name
        assert model.lineage.training_job == "projects/default/trainingJobs/adapter"
    assert onnx_model.metrics["greedy_agreement"] == pytest.approx(report.greedy_agreement)

    # The stored model runs under plain onnxruntime-genai, and its report sits beside it.
    local = client.models.download(onnx_name, tmp_path / "onnx")
    stored = json.loads((local / "parity_report.json").read_text())
    assert stored["passed"] is True and stored["prompt_count"] == report.prompt_count
    model = og.Model(str(local))
    tokenizer = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=64)
    generator = og.Generator(model, params)
    generator.append_tokens(tokenizer.encode("Item 3: say the word number 3."))
    while not generator.is_done():
        generator.generate_next_token()
    assert len(generator.get_sequence(0)) > 0
    # examples/ask_onnx.py, which imports onnxruntime-genai only, answers as the service does.
    question = "Item 3: say the word number 3."
    asked = subprocess.run(
        [sys.executable, "examples/ask_onnx.py", str(local), question, "--max-tokens", "6"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert asked.returncode == 0, asked.stderr
    served = client.inference.chat(onnx_name, [{"role": "user", "content": question}], max_tokens=6)
    assert asked.stdout.strip() == served.text.strip()


def test_the_gate_fails_a_conversion_below_its_thresholds_unless_forced(client: Client) -> None:
    adapter = adapter_name(client)
    # An fp32 export is never bit-identical, so a zero logit delta is out of reach.
    strict = {"max_mean_logit_delta": 0.0}
    job = client.conversions.create(
        adapter, precision="fp32", thresholds=strict, max_rows=2, output_model_id="strict"
    ).wait(timeout_s=600)
    assert job.state == pb.ConversionJob.FAILED
    assert job.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "parity" in job.error.message and not job.parity_report.passed
    assert 1 <= job.parity_report.prompt_count <= 2
    assert list(job.output_models) == []
    with pytest.raises(TuneforgeError) as missing:
        client.models.get("strict")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND

    forced = client.conversions.create(
        adapter,
        precision="fp32",
        thresholds=strict,
        max_rows=2,
        force_publish=True,
        output_model_id="forced",
    ).wait(timeout_s=600)
    assert forced.state == pb.ConversionJob.SUCCEEDED, forced.error.message
    assert forced.parity_report.forced and not forced.parity_report.passed
    assert client.models.get("forced").kind == models_pb.Model.ONNX


def test_bad_requests_are_refused_with_the_field_and_nothing_is_queued(client: Client) -> None:
    def refused(**kwargs: object) -> TuneforgeError:
        model = str(kwargs.pop("model", adapter_name(client)))
        with pytest.raises(TuneforgeError) as caught:
            client.conversions.create(model, **kwargs)  # type: ignore[arg-type]
        return caught.value

    before = len(list(client.conversions.list()))
    error = refused(model="missing")
    assert error.code == grpc.StatusCode.NOT_FOUND and "source_model" in error.message
    error = refused(max_rows=100000)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field == "conversion_job.parity.max_rows"
    error = refused(model="tiny", adapter="tiny")
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field == "conversion_job.adapter_model"
    error = refused(thresholds={"min_greedy_agreement": 2.0}, golden_prompts=[" "])
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field == "conversion_job.parity.golden_prompts[0]"
    error = refused(model="tiny", formats=["merged"], output_model_id="tiny")
    assert error.code == grpc.StatusCode.ALREADY_EXISTS

    client.models.import_model("other", preset="tiny-phi3")
    error = refused(model="other", adapter=adapter_name(client))
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "ADAPTER_BASE_MISMATCH"
    assert len(list(client.conversions.list())) == before


def test_cancel_stops_a_running_conversion_and_publishes_nothing(client: Client) -> None:
    handle = client.conversions.create(
        adapter_name(client), precision="int8", output_model_id="cancelled"
    )
    for event in handle.events():
        if event.HasField("progress") and event.progress.stage >= pb.ConversionJob.MERGING:
            break
    handle.cancel()
    job = handle.wait(timeout_s=120)
    assert job.state == pb.ConversionJob.CANCELLED
    with pytest.raises(TuneforgeError) as missing:
        client.models.get("cancelled")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    listed = [j.name for j in client.conversions.list(filter="state=CANCELLED")]
    assert handle.name in listed
    client.conversions.delete(handle.name)
    with pytest.raises(TuneforgeError) as gone:
        client.conversions.get(handle.name)
    assert gone.value.code == grpc.StatusCode.NOT_FOUND


def test_the_cli_converts_with_wait_and_shows_the_report(client: Client, tmp_path: Path) -> None:
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
            timeout=600,
        )

    adapter = adapter_name(client).rsplit("/", 1)[-1]
    done = tf(
        "convert", "--model", adapter, "--precision", "int4", "--max-rows", "2",
        # A random tiny model's near-flat logits flip greedy tokens under int4.
        "--min-greedy-agreement", "0", "--name", "cli", "--wait", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "SUCCEEDED" and job["precision"] == "INT4"
    assert job["output_models"] == [f"projects/default/models/{adapter}-int4"]
    assert job["parity_report"]["passed"] and job["parity_report"]["prompt_count"] >= 1

    shown = tf("conversions", "get", "cli")
    assert shown.returncode == 0 and "parity          passed" in shown.stdout
    listed = tf("conversions", "list")
    assert "cli" in listed.stdout and "int4" in listed.stdout
    refused = tf("convert", "--model", "missing", "--json")
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["error"]["code"] == "NOT_FOUND"


def test_a_conversion_interrupted_by_a_service_restart_completes(
    client: Client, bucket: StoreSettings, tmp_path: Path
) -> None:
    adapter = adapter_name(client)
    home = tmp_path / "conversion-home"
    with local_services(bucket, home, services=["conversion"]) as first:
        handle = first.conversions.create(
            adapter, precision="fp32", max_rows=2, job_id="restart", output_model_id="restarted"
        )
        for event in handle.events():
            if event.HasField("progress") and event.progress.stage >= pb.ConversionJob.EXPORTING:
                break
    # The service stopped mid-job: the job went back to the queue, with nothing published.
    with pytest.raises(TuneforgeError):
        client.models.get("restarted")

    with local_services(bucket, home, services=["conversion"]) as second:
        job = second.conversions.get("restart").wait(timeout_s=600)
        assert job.state == pb.ConversionJob.SUCCEEDED, job.error.message
        reasons = [
            e.state_change.reason
            for e in second.conversions.watch("restart")
            if e.HasField("state_change")
        ]
    assert any("stopping" in r for r in reasons), reasons
    assert client.models.get("restarted").kind == models_pb.Model.ONNX
