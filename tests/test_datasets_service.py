"""The datasets service through gRPC: uploads, diagnostics, statistics, splits, storage."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import scratch_bucket

from services.common.artifact_store import ArtifactStore
from services.common.settings import StoreSettings
from tuneforge import Client, TuneforgeError
from tuneforge.datasets.v1 import dataset_service_pb2 as pb
from tuneforge.testing import local_services


def chat(user: str, answer: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def write_jsonl(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def bucket_settings(store_settings: StoreSettings) -> Iterator[StoreSettings]:
    with scratch_bucket(store_settings, "d") as settings:
        yield settings


@pytest.fixture
def client(bucket_settings: StoreSettings, tmp_path: Path) -> Iterator[Client]:
    with local_services(bucket_settings, tmp_path / "home", services=["training", "datasets"]) as c:
        c.models.import_model("tiny", preset="tiny-llama")
        yield c


@pytest.fixture
def store(bucket_settings: StoreSettings) -> ArtifactStore:
    return ArtifactStore(bucket_settings)


def clean_rows(n: int = 40) -> list[dict]:
    return [chat(f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}.") for i in range(n)]


def test_clean_file_is_ready_with_statistics_matching_an_independent_count(
    client: Client, tmp_path: Path, store: ArtifactStore
) -> None:
    from transformers import AutoTokenizer

    rows = [*clean_rows(40), chat("Hi", "Hello!", system="Be brief.")]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    ds = client.datasets.upload(path, dataset_id="arith", model="tiny", validation_split=0.1)
    assert ds.state == pb.Dataset.READY
    assert ds.name == "projects/default/datasets/arith"
    assert ds.format == pb.Dataset.CHAT_JSONL
    assert ds.row_count == 41 and ds.invalid_row_count == 0
    assert ds.train_row_count + ds.validation_row_count == 41
    assert ds.validation_row_count >= 1

    # An independent count with the model's own tokenizer and chat template.
    model_dir = tmp_path / "tiny-model"
    for f in client.models.get("tiny").artifact.files:
        store.get_file(f"models/default/tiny/{f.path}", model_dir / f.path)
    tok = AutoTokenizer.from_pretrained(model_dir)
    lengths = []
    for row in rows:
        ids = tok.apply_chat_template(row["messages"], tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        lengths.append(len(ids))
    stats = ds.statistics
    assert stats.rows == 41
    assert stats.total_tokens == sum(lengths)
    assert stats.max_tokens == max(lengths)
    assert 0 < stats.trainable_tokens < stats.total_tokens
    assert sum(b.count for b in stats.length_histogram) == 41
    assert ds.artifact.uri.endswith(f"datasets/content/{ds.content_sha256}/")

    again = client.datasets.get("arith")
    assert again.state == pb.Dataset.READY and again.statistics == stats


def _strict_error(client: Client, path: Path, **kwargs: object) -> TuneforgeError:
    with pytest.raises(TuneforgeError) as info:
        client.datasets.upload(path, **kwargs)  # type: ignore[arg-type]
    return info.value


# (file content, line, field, code)
BAD_FILES = [
    ('{"messages": [}', 1, "", "INVALID_JSON"),
    (b'{"messages": "\xff\xfe"}', 1, "", "INVALID_UTF8"),
    ('{"other": 1}', 1, "messages", "MISSING_FIELD"),
    ('{"messages": []}', 1, "messages", "EMPTY_FIELD"),
    (json.dumps(chat("", "x")), 1, "messages[0].content", "EMPTY_FIELD"),
    (
        json.dumps(
            {"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}
        ),
        1,
        "messages[0].role",
        "UNKNOWN_ROLE",
    ),
    (
        json.dumps(
            {"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}
        ),
        1,
        "messages[0].role",
        "INVALID_ROLE_ORDER",
    ),
    (
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        1,
        "messages",
        "NO_ASSISTANT_TURN",
    ),
]


@pytest.mark.parametrize(("content", "line", "field", "code"), BAD_FILES)
def test_every_diagnostic_names_line_field_and_code(
    client: Client,
    tmp_path: Path,
    store: ArtifactStore,
    content: str | bytes,
    line: int,
    field: str,
    code: str,
) -> None:
    good = json.dumps(chat("fine", "row")).encode()
    body = content if isinstance(content, bytes) else content.encode()
    path = tmp_path / "bad.jsonl"
    path.write_bytes(good + b"\n" + body + b"\n")
    err = _strict_error(client, path, format="chat")
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.reason == "DATASET_INVALID"
    assert err.metadata["line"] == str(line + 1)
    assert err.metadata["field"] == field
    assert err.metadata["code"] == code
    failed = client.datasets.get(err.metadata["dataset"])
    assert failed.state == pb.Dataset.FAILED
    assert [(d.line, d.field, d.code) for d in failed.diagnostics] == [(line + 1, field, code)]
    assert failed.error.message
    # Strict: nothing of the dataset was published.
    assert store.list_keys("datasets/") == []


def test_row_too_long_duplicates_and_empty_file(
    client: Client, tmp_path: Path, store: ArtifactStore
) -> None:
    long_row = chat("x" * 400, "y")
    path = write_jsonl(tmp_path / "f.jsonl", [chat("a", "b"), long_row, chat("a", "b")])
    err = _strict_error(client, path, model="tiny", max_seq_len=128)
    failed = client.datasets.get(err.metadata["dataset"])
    assert [(d.line, d.code) for d in failed.diagnostics] == [
        (2, "ROW_TOO_LONG"),
        (3, "DUPLICATE_ROW"),
    ]
    assert "line 1" in failed.diagnostics[1].message
    assert dict(failed.diagnostic_counts) == {"ROW_TOO_LONG": 1, "DUPLICATE_ROW": 1}

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    err = _strict_error(client, empty, format="chat")
    assert err.metadata["code"] == "EMPTY_FILE"
    assert store.list_keys("datasets/") == []


def test_skip_invalid_drops_and_counts_bad_rows(client: Client, tmp_path: Path) -> None:
    rows: list = clean_rows(10)
    rows += ["not json", '{"other": 1}', json.dumps(chat("a", "b")), json.dumps(chat("a", "b"))]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    ds = client.datasets.upload(path, skip_invalid=True, model="tiny")
    assert ds.state == pb.Dataset.READY
    assert ds.row_count == 11
    assert ds.invalid_row_count == 3
    assert dict(ds.diagnostic_counts) == {"INVALID_JSON": 1, "MISSING_FIELD": 1, "DUPLICATE_ROW": 1}
    assert ds.statistics.rows == 11


def test_same_content_is_stored_once_and_deleted_with_its_last_dataset(
    client: Client, tmp_path: Path, store: ArtifactStore
) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", clean_rows(12))
    first = client.datasets.upload(path, dataset_id="one", validation_split=0.25, seed=7)
    second = client.datasets.upload(path, dataset_id="two", validation_split=0.25, seed=7)
    assert first.content_sha256 == second.content_sha256
    assert len(store.list_prefixes("datasets/content/")) == 1
    other_seed = client.datasets.upload(path, dataset_id="three", validation_split=0.25, seed=8)
    assert other_seed.content_sha256 != first.content_sha256
    assert len(store.list_prefixes("datasets/content/")) == 2

    client.datasets.delete("one")
    assert store.read_manifest(f"datasets/content/{first.content_sha256}/") is not None
    client.datasets.delete("two")
    assert store.read_manifest(f"datasets/content/{first.content_sha256}/") is None
    with pytest.raises(TuneforgeError) as info:
        client.datasets.get("one")
    assert info.value.code == grpc.StatusCode.NOT_FOUND


def test_formats_land_in_one_canonical_shape(
    client: Client, tmp_path: Path, store: ArtifactStore
) -> None:
    cases = {
        "pc.jsonl": [{"prompt": "2+2?", "completion": "4"}],
        "alpaca.jsonl": [{"instruction": "Add", "input": "2 and 2", "output": "4"}],
        "pref.jsonl": [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}],
    }
    expected_format = {
        "pc.jsonl": pb.Dataset.PROMPT_COMPLETION_JSONL,
        "alpaca.jsonl": pb.Dataset.ALPACA_JSONL,
        "pref.jsonl": pb.Dataset.PREFERENCE_JSONL,
    }
    for name, rows in cases.items():
        ds = client.datasets.upload(write_jsonl(tmp_path / name, rows), model="tiny")
        assert ds.format == expected_format[name], name
        row = json.loads(
            store.get_bytes(f"datasets/content/{ds.content_sha256}/train.jsonl")
            .decode()
            .splitlines()[0]
        )
        assert row["messages"][0]["role"] == "user"
        if name == "pref.jsonl":
            assert (row["chosen"], row["rejected"]) == ("4", "5")
        else:
            assert row["messages"][-1] == {"role": "assistant", "content": "4"}

    csv_path = tmp_path / "qa.csv"
    csv_path.write_text('question,answer\n"2+2?",4\n"3+3?",6\n')
    ds = client.datasets.upload(
        csv_path, format="csv", column_mapping={"prompt": "question", "completion": "answer"}
    )
    assert ds.format == pb.Dataset.CSV and ds.row_count == 2


def test_preview_marks_trained_spans(client: Client, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [chat("Say hi", "hi there", system="Be nice.")])
    client.datasets.upload(path, dataset_id="prev", model="tiny")
    (row,) = client.datasets.preview("prev", rows=1)
    trained = "".join(row.rendered_text[s.start : s.end] for s in row.trained_spans)
    assert trained.startswith("hi there")
    assert "Say hi" not in trained and "Be nice." not in trained
    assert 0 < row.trainable_token_count < row.token_count


def test_list_filters_and_paginates(client: Client, tmp_path: Path) -> None:
    for i in range(3):
        client.datasets.upload(
            write_jsonl(tmp_path / f"{i}.jsonl", clean_rows(3 + i)), dataset_id=f"ds{i}"
        )
    with pytest.raises(TuneforgeError):
        client.datasets.upload(
            write_jsonl(tmp_path / "bad.jsonl", ["{"]), dataset_id="bad", format="chat"
        )
    ready = [
        d.name.rsplit("/", 1)[-1] for d in client.datasets.list(filter="state=READY", page_size=2)
    ]
    assert ready == ["ds0", "ds1", "ds2"]
    failed = [d.name.rsplit("/", 1)[-1] for d in client.datasets.list(filter="state=FAILED")]
    assert failed == ["bad"]


def test_upload_is_idempotent_with_a_request_id(client: Client, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", clean_rows(4))
    first = client.datasets.upload(path, request_id="req-1")
    second = client.datasets.upload(path, request_id="req-1")
    assert first.name == second.name
    assert len(list(client.datasets.list())) == 1


def test_a_trailer_that_does_not_match_rejects_the_upload(
    client: Client, store: ArtifactStore
) -> None:
    body = (json.dumps(chat("a", "b")) + "\n").encode()
    header = pb.UploadDatasetHeader(
        parent="projects/default", dataset_id="t", dataset=pb.Dataset(), file_name="t.jsonl"
    )
    for trailer, reason in [
        (pb.UploadDatasetTrailer(size_bytes=len(body) + 5), "UPLOAD_INTERRUPTED"),
        (pb.UploadDatasetTrailer(size_bytes=len(body), sha256="0" * 64), "ARTIFACT_CORRUPT"),
    ]:
        messages = [
            pb.UploadDatasetRequest(header=header),
            pb.UploadDatasetRequest(chunk=body),
            pb.UploadDatasetRequest(trailer=trailer),
        ]
        with pytest.raises(grpc.RpcError) as info:
            client.datasets._stub.UploadDataset(iter(messages), timeout=30)
        assert TuneforgeError.from_rpc_error(info.value).reason == reason
    assert list(client.datasets.list()) == []
    assert store.list_keys("datasets/") == []


def test_import_from_the_store(client: Client, tmp_path: Path, store: ArtifactStore) -> None:
    store.put_file("incoming/data.jsonl", write_jsonl(tmp_path / "s.jsonl", clean_rows(5)))
    ds = client.datasets.create_from_uri(store.uri("incoming/data.jsonl"), dataset_id="froms3")
    assert ds.state == pb.Dataset.READY and ds.row_count == 5
    assert ds.source == store.uri("incoming/data.jsonl")


def test_bad_requests_name_the_field(client: Client, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", clean_rows(2))
    cases = [
        (dict(validation_split=0.9), "dataset.split.validation_fraction"),
        (dict(max_seq_len=64), "dataset.model"),
        (dict(dataset_id="Bad Id"), "dataset_id"),
    ]
    for kwargs, field in cases:
        err = _strict_error(client, path, **kwargs)
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, kwargs
        assert err.metadata["field"] == field, kwargs
    err = _strict_error(client, path, model="missing-model")
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert list(client.datasets.list()) == []


def _slow_upload(
    rows: int, pause_after: int, hold: threading.Event
) -> Iterator[pb.UploadDatasetRequest]:
    lines = [
        (json.dumps(chat(f"question {i}", f"answer {i}")) + "\n").encode() for i in range(rows)
    ]
    yield pb.UploadDatasetRequest(
        header=pb.UploadDatasetHeader(
            parent="projects/default",
            dataset_id="slow",
            dataset=pb.Dataset(),
            file_name="slow.jsonl",
            # A client that says how much it sends lets the server tell a cut-off stream
            # (gRPC ends it normally on cancel) from a complete one.
            size_bytes=sum(len(line) for line in lines),
        )
    )
    for i, line in enumerate(lines):
        if i == pause_after:
            hold.wait(timeout=30)
        yield pb.UploadDatasetRequest(chunk=line)


def test_progress_is_visible_and_a_cancelled_upload_leaves_nothing(
    client: Client, store: ArtifactStore
) -> None:
    stub = client.datasets._stub
    hold = threading.Event()
    future = stub.UploadDataset.future(_slow_upload(5000, 3000, hold), timeout=60)
    deadline = time.monotonic() + 20
    seen = None
    while time.monotonic() < deadline:
        try:
            seen = client.datasets.get("slow")
            if seen.progress.rows_processed >= 1000:
                break
        except TuneforgeError:
            pass
        time.sleep(0.1)
    assert seen is not None and seen.state == pb.Dataset.PROCESSING
    assert seen.progress.rows_processed >= 1000 and seen.progress.bytes_processed > 0
    future.cancel()
    hold.set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and list(client.datasets.list()):
        time.sleep(0.1)
    assert list(client.datasets.list()) == []
    assert store.list_keys("datasets/") == []


def test_restart_fails_interrupted_uploads_and_resumes_store_imports(
    bucket_settings: StoreSettings, tmp_path: Path, store: ArtifactStore
) -> None:
    from services.common.database import Database
    from services.common.settings import ServiceSettings
    from services.datasets.records import (
        PROCESSING,
        DatasetRecord,
        DatasetRecords,
        DatasetResult,
        DatasetSpec,
    )

    home = tmp_path / "home"
    store.ensure_bucket()
    store.put_file("incoming/rows.jsonl", write_jsonl(tmp_path / "rows.jsonl", clean_rows(6)))
    # The state a service killed mid-work leaves behind: two datasets still PROCESSING.
    records = DatasetRecords(Database(ServiceSettings(home=home).database_url_for("datasets")))
    for dataset_id, source in [
        ("cut", "upload:cut.jsonl"),
        ("imported", store.uri("incoming/rows.jsonl")),
    ]:
        records.create(
            DatasetRecord(
                name=f"projects/default/datasets/{dataset_id}",
                project="default",
                dataset_id=dataset_id,
                state=PROCESSING,
                spec=DatasetSpec(source=source),
                result=DatasetResult(),
            )
        )
    with local_services(bucket_settings, home, services=["datasets"]) as client:
        cut = client.datasets.get("cut")
        assert cut.state == pb.Dataset.FAILED
        assert "upload the file again" in cut.error.message
        deadline = time.monotonic() + 30
        while client.datasets.get("imported").state == pb.Dataset.PROCESSING:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        imported = client.datasets.get("imported")
        assert imported.state == pb.Dataset.READY and imported.row_count == 6
