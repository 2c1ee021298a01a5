"""The whole pipeline on a tiny model, through the four services as a user drives them: upload
a dataset, fine-tune a LoRA adapter, serve it at once, convert it to ONNX, serve that, and
evaluate both on the held-out rows."""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import scratch_bucket

from services.common.settings import StoreSettings
from tuneforge.conversion.v1 import conversion_service_pb2 as conversion_pb
from tuneforge.inference.v1 import evaluation_service_pb2 as evaluation_pb
from tuneforge.testing import local_services
from tuneforge.training.v1 import training_service_pb2 as training_pb

WORDS = ["apple", "river", "stone", "cloud"]
ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"Item {i}: say the word number {i % 4}."},
            {"role": "assistant", "content": WORDS[i % 4]},
        ]
    }
    for i in range(40)
]


def test_upload_train_serve_convert_serve_evaluate(
    store_settings: StoreSettings, tmp_path: Path
) -> None:
    started = time.monotonic()
    rows = tmp_path / "words.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with (
        scratch_bucket(store_settings, "e2e") as bucket,
        local_services(bucket, tmp_path / "home") as client,
    ):
        client.models.import_model("tiny", preset="tiny-llama")
        dataset = client.datasets.upload(
            rows, dataset_id="words", model="tiny", validation_split=0.2, seed=1
        )
        assert dataset.validation_row_count > 0

        job = client.jobs.create(
            "tiny",
            "words",
            job_id="words-lora",
            suffix="words",
            hyperparameters={
                "max_steps": 8,
                "max_seq_len": 64,
                "batch_size": 4,
                "learning_rate": 1e-2,
                "precision": "fp32",
            },
        ).wait(timeout_s=600)
        assert job.state == training_pb.TrainingJob.SUCCEEDED, job.error.message
        adapter = job.output_model

        # Served at once, on its base, with no restart.
        question = [{"role": "user", "content": "Item 2: say the word number 2."}]
        served = client.inference.chat("tiny", question, adapter=adapter, max_tokens=6)
        assert served.usage.completion_tokens > 0

        conversion = client.conversions.create(
            adapter, precision="fp32", output_model_id="words-onnx", max_rows=4
        ).wait(timeout_s=600)
        assert conversion.state == conversion_pb.ConversionJob.SUCCEEDED, conversion.error.message
        assert conversion.parity_report.passed
        onnx = conversion.output_models[0]
        exported = client.inference.chat(onnx, question, max_tokens=6)
        assert exported.text == served.text  # fp32: the same greedy tokens

        fine_tuned = client.evaluations.create("tiny", "words", adapter=adapter).wait(timeout_s=600)
        on_onnx = client.evaluations.create(onnx, "words").wait(timeout_s=600)
        for evaluation in (fine_tuned, on_onnx):
            assert evaluation.state == evaluation_pb.Evaluation.SUCCEEDED, evaluation.error.message
            assert evaluation.report.row_count == dataset.validation_row_count
        assert on_onnx.report.scores == fine_tuned.report.scores
        answers = {s.line: s.answer for s in fine_tuned.report.samples}
        assert answers == {s.line: s.answer for s in on_onnx.report.samples}
    assert time.monotonic() - started < 300
