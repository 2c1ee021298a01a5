"""Dataset formats: every format reads into canonical rows, and every bad line is named.

Micro-benchmark (by hand, not a test): ``python tests/test_dataset_formats.py [rows]`` prints
the rows/s of read_canonical on synthetic chat JSONL.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from services.common.errors import InvalidArgument
from services.datasets.formats import (
    DIAGNOSTIC_CODES,
    CanonicalRow,
    DatasetFormat,
    Diagnostic,
    detect_format,
    iter_records,
    read_canonical,
    to_canonical,
)

CHAT = DatasetFormat.CHAT_JSONL
GOOD_CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def problems(path: Path, fmt: DatasetFormat, **kw: Any) -> list[tuple[int, str, str]]:
    return [
        (d.line, d.field, d.code) for _, _, diags in read_canonical(path, fmt, **kw) for d in diags
    ]


def rows(path: Path, fmt: DatasetFormat, **kw: Any) -> list[CanonicalRow]:
    out = []
    for line, row, diags in read_canonical(path, fmt, **kw):
        assert not diags, diags
        assert row is not None and row.line == line
        out.append(row)
    return out


def chat(*msgs: Any) -> dict[str, Any]:
    return {"messages": list(msgs)}


def m(role: Any, content: Any = "text", **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **extra}


# --- every diagnostic code, with its line and field ---------------------------------------------


def test_invalid_json_and_utf8_name_their_lines(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_bytes(
        json.dumps(GOOD_CHAT).encode()
        + b"\n"
        + b'{"messages": [\n'  # 2: truncated JSON
        + b"[1, 2]\n"  # 3: JSON, not an object
        + b'{"messages": "\xff\xfe"}\n'  # 4: not UTF-8
        + b'{"messages": [{"role": "user", "content": "\\ud800"}]}\n'  # 5: lone surrogate
        + b"\n   \n"  # 6, 7: blank lines are skipped
        + json.dumps(GOOD_CHAT).encode()  # 8: no trailing newline
    )
    results = list(read_canonical(p, CHAT))
    assert [(line, row is not None) for line, row, _ in results] == [
        (1, True),
        (2, False),
        (3, False),
        (4, False),
        (5, False),
        (8, True),
    ]
    diags = [d for _, _, ds in results for d in ds]
    assert [(d.line, d.field, d.code) for d in diags] == [
        (2, "", "INVALID_JSON"),
        (3, "", "INVALID_JSON"),
        (4, "", "INVALID_UTF8"),
        (5, "", "INVALID_UTF8"),
    ]
    assert "expected a JSON object, got an array" in diags[1].message
    assert "0xff" in diags[2].message


def test_valid_surrogate_pairs_and_unicode_pass(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text(
        json.dumps(chat(m("user", "emoji \U0001f600 é"), m("assistant", "ok ✓")))  # ascii escapes
        + "\n"
        + json.dumps(chat(m("user", "😀"), m("assistant", "ok")), ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    got = rows(p, CHAT)
    assert got[0].messages[0]["content"] == "emoji \U0001f600 é"
    assert got[1].messages[0]["content"] == "😀"


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"msgs": []}, [("", "MISSING_FIELD")] * 0 + [("messages", "MISSING_FIELD")]),
        ({"messages": []}, [("messages", "EMPTY_FIELD")]),
        ({"messages": "hi"}, [("messages", "INVALID_TYPE")]),
        (chat("hi", m("assistant")), [("messages[0]", "INVALID_TYPE")]),
        (chat(m("user"), {"content": "x"}), [("messages[1].role", "MISSING_FIELD")]),
        (chat(m("user"), m("assistant", None)), [("messages[1].content", "MISSING_FIELD")]),
        (chat(m("user"), m("assistant", "  \n")), [("messages[1].content", "EMPTY_FIELD")]),
        (
            chat(m("user", [{"type": "text"}]), m("assistant")),
            [("messages[0].content", "INVALID_TYPE")],
        ),
        (chat(m("user"), m(7)), [("messages[1].role", "INVALID_TYPE")]),
        (chat(m("user"), m("bot")), [("messages[1].role", "UNKNOWN_ROLE")]),
        (chat(m("assistant")), [("messages[0].role", "INVALID_ROLE_ORDER")]),
        (
            chat(m("user"), m("assistant"), m("system"), m("user"), m("assistant")),
            [("messages[2].role", "INVALID_ROLE_ORDER")],
        ),
        (chat(m("user"), m("user"), m("assistant")), [("messages[1].role", "INVALID_ROLE_ORDER")]),
        (chat(m("user"), m("tool"), m("assistant")), [("messages[1].role", "INVALID_ROLE_ORDER")]),
        (
            chat(m("user"), m("assistant"), m("tool"), m("user")),
            [("messages[3].role", "INVALID_ROLE_ORDER")],
        ),
        (chat(m("system"), m("user")), [("messages", "NO_ASSISTANT_TURN")]),
        (chat(m("user"), m("assistant", weight=0)), [("messages", "NO_ASSISTANT_TURN")]),
        (chat(m("user"), m("assistant", weight=2)), [("messages[1].weight", "INVALID_WEIGHT")]),
        (chat(m("user"), m("assistant", weight=True)), [("messages[1].weight", "INVALID_WEIGHT")]),
        (
            chat(m("user", weight=1), m("assistant")),
            [("messages[0].weight", "INVALID_WEIGHT")],
        ),
    ],
)
def test_chat_diagnostics(
    tmp_path: Path, record: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [GOOD_CHAT, record])
    assert problems(p, CHAT) == [(2, field, code) for field, code in expected]


def test_valid_chat_shapes(tmp_path: Path) -> None:
    p = write_jsonl(
        tmp_path / "d.jsonl",
        [
            chat(m("user"), m("assistant"), m("tool"), m("tool"), m("assistant"), m("user")),
            chat(m("user"), m("assistant", weight=0), m("user"), m("assistant", weight=1)),
            chat(m("user"), m("assistant", "x", weight=None, name="bob", tool_calls=[])),
        ],
    )
    got = rows(p, CHAT)
    assert got[1].messages[1] == {"role": "assistant", "content": "text", "weight": 0}
    # Only role, content and weight are kept.
    assert got[2].messages[1] == {"role": "assistant", "content": "x"}


def test_messages_are_clear(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [chat(m("user"), m("assistant"), m("bot"))])
    [(_, _, [diag])] = list(read_canonical(p, CHAT))
    assert diag == Diagnostic(
        1,
        "messages[2].role",
        "UNKNOWN_ROLE",
        'messages[2].role is "bot"; expected one of system, user, assistant, tool',
    )


def test_a_row_with_several_problems_reports_all(tmp_path: Path) -> None:
    record = chat(
        m("system", "   "),
        m("bot"),
        m("user", 3),
        m("user"),
        m("assistant", weight=5),
        m("system"),
        "oops",
    )
    p = write_jsonl(tmp_path / "d.jsonl", [record])
    assert problems(p, CHAT) == [
        (1, "messages[0].content", "EMPTY_FIELD"),
        (1, "messages[1].role", "UNKNOWN_ROLE"),
        (1, "messages[2].content", "INVALID_TYPE"),
        (1, "messages[3].role", "INVALID_ROLE_ORDER"),
        (1, "messages[4].weight", "INVALID_WEIGHT"),
        (1, "messages[5].role", "INVALID_ROLE_ORDER"),
        (1, "messages[6]", "INVALID_TYPE"),
    ]


def test_simple_format_diagnostics(tmp_path: Path) -> None:
    pc = write_jsonl(
        tmp_path / "pc.jsonl",
        [{"prompt": "q", "completion": "a"}, {"prompt": "", "completion": 3}, {"prompt": "q"}],
    )
    assert problems(pc, DatasetFormat.PROMPT_COMPLETION_JSONL) == [
        (2, "prompt", "EMPTY_FIELD"),
        (2, "completion", "INVALID_TYPE"),
        (3, "completion", "MISSING_FIELD"),
    ]
    alpaca = write_jsonl(
        tmp_path / "a.jsonl", [{"instruction": "x", "input": 1, "output": ""}, {"output": "y"}]
    )
    assert problems(alpaca, DatasetFormat.ALPACA_JSONL) == [
        (1, "input", "INVALID_TYPE"),
        (1, "output", "EMPTY_FIELD"),
        (2, "instruction", "MISSING_FIELD"),
    ]
    pref = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "q", "chosen": {"role": "user", "content": "a"}, "rejected": None},
            {"prompt": [m("user"), m("assistant")], "chosen": ["a", "b"], "rejected": "r"},
        ],
    )
    assert problems(pref, DatasetFormat.PREFERENCE_JSONL) == [
        (1, "chosen.role", "INVALID_ROLE_ORDER"),
        (1, "rejected", "MISSING_FIELD"),
        (2, "prompt[1].role", "INVALID_ROLE_ORDER"),
        (2, "chosen", "INVALID_TYPE"),
    ]


def test_overlong_line_is_skipped_not_held(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    long_row = chat(m("user", "x" * 5000), m("assistant"))
    write_jsonl(p, [GOOD_CHAT, long_row, GOOD_CHAT])
    results = list(read_canonical(p, CHAT, max_line_bytes=1000))
    assert [(line, row is not None) for line, row, _ in results] == [
        (1, True),
        (2, False),
        (3, True),
    ]
    assert results[1][2][0].code == "ROW_TOO_LONG"


def test_codes_are_documented() -> None:
    import services.datasets.formats as formats

    assert formats.__doc__ is not None
    for code in DIAGNOSTIC_CODES:
        assert code in formats.__doc__
    assert {"ROW_TOO_LONG", "DUPLICATE_ROW", "EMPTY_FILE"} <= DIAGNOSTIC_CODES


# --- every format round-trips into canonical rows -----------------------------------------------

EXPECTED_PC = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


def test_chat_round_trip_with_bom_and_crlf(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    line = json.dumps(GOOD_CHAT).encode()
    p.write_bytes(b"\xef\xbb\xbf" + line + b"\r\n" + line + b"\r\n\r\n")
    got = rows(p, CHAT)
    assert [r.line for r in got] == [1, 2]
    assert got[0].messages == GOOD_CHAT["messages"]


def test_prompt_completion_round_trip(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "2+2?", "completion": "4", "extra": 1}])
    [row] = rows(p, DatasetFormat.PROMPT_COMPLETION_JSONL)
    assert row.messages == EXPECTED_PC


def test_alpaca_round_trip(tmp_path: Path) -> None:
    p = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"instruction": "Add", "input": "2+2", "output": "4"},
            {"instruction": "Say hi", "input": "", "output": "hi"},
        ],
    )
    got = rows(p, DatasetFormat.ALPACA_JSONL)
    assert got[0].messages == [
        {"role": "user", "content": "Add\n\n2+2"},
        {"role": "assistant", "content": "4"},
    ]
    assert got[1].messages[0] == {"role": "user", "content": "Say hi"}


def test_preference_round_trip(tmp_path: Path) -> None:
    p = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
            {
                "prompt": [m("system", "Be brief."), m("user", "2+2?")],
                "chosen": {"role": "assistant", "content": "4"},
                "rejected": [{"role": "assistant", "content": "5"}],
            },
        ],
    )
    got = rows(p, DatasetFormat.PREFERENCE_JSONL)
    assert (got[0].messages, got[0].chosen, got[0].rejected) == (
        [{"role": "user", "content": "2+2?"}],
        "4",
        "5",
    )
    assert got[1].messages[0] == {"role": "system", "content": "Be brief."}
    assert (got[1].chosen, got[1].rejected) == ("4", "5")


def test_csv_with_column_mapping(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_bytes(
        b'\xef\xbb\xbfid,question,answer\r\n1,2+2?,4\r\n2,"multi\r\nline","say ""hi"""\r\n'
        b"3,,x\r\n4,\xff,x\r\n5,only\r\n6,2+2?,4"
    )
    mapping = {"prompt": "question", "completion": "answer"}
    results = list(read_canonical(p, DatasetFormat.CSV, mapping))
    assert [line for line, _, _ in results] == [2, 3, 5, 6, 7, 8]
    assert results[0][1] is not None and results[0][1].messages == EXPECTED_PC
    assert results[1][1] is not None
    assert results[1][1].messages[0]["content"] == "multi\r\nline"
    assert results[1][1].messages[1]["content"] == 'say "hi"'
    assert [(d.line, d.field, d.code) for _, _, ds in results for d in ds] == [
        (5, "question", "EMPTY_FIELD"),
        (6, "", "INVALID_UTF8"),
        (7, "answer", "MISSING_FIELD"),
    ]
    assert results[5][1] is not None and results[5][1].messages == EXPECTED_PC


def test_csv_unparsable_and_overlong_records(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_bytes(b"prompt,completion\nq,a\rb\nq,a\nq," + b"x" * 2000 + b"\nq,a\n")
    assert problems(p, DatasetFormat.CSV, max_line_bytes=1000) == [
        (2, "", "INVALID_CSV"),
        (4, "", "ROW_TOO_LONG"),
    ]


def test_csv_chat_and_identity_mapping(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    cell = json.dumps(GOOD_CHAT["messages"]).replace('"', '""')
    p.write_text(f'messages\n"{cell}"\nnot json\n"[{{""role"": ""bot""}}]"\n', encoding="utf-8")
    results = list(read_canonical(p, DatasetFormat.CSV))
    assert results[0][1] is not None and results[0][1].messages == GOOD_CHAT["messages"]
    assert [(d.line, d.field, d.code) for _, _, ds in results for d in ds] == [
        (3, "messages", "INVALID_JSON"),
        (4, "messages[0].role", "UNKNOWN_ROLE"),
        (4, "messages[0].content", "MISSING_FIELD"),
    ]
    # With a mapping, diagnostics name the user's column.
    q = tmp_path / "e.csv"
    q.write_text('conv\n"[]"\n', encoding="utf-8")
    assert problems(q, DatasetFormat.CSV, column_mapping={"messages": "conv"}) == [
        (2, "conv", "EMPTY_FIELD")
    ]


def test_csv_without_usable_columns_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(InvalidArgument) as err:
        list(iter_records(p, DatasetFormat.CSV))
    assert "'a', 'b'" in err.value.message
    with pytest.raises(InvalidArgument) as err:
        list(iter_records(p, DatasetFormat.CSV, {"prompt": "question", "completion": "b"}))
    assert err.value.field == "dataset.column_mapping[prompt]"


def test_parquet_round_trip(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    p = tmp_path / "d.parquet"
    pq.write_table(
        pa.table({"q": ["2+2?", None, "x", "2+2?"], "a": ["4", "4", "", "4"]}), p, row_group_size=2
    )
    results = list(read_canonical(p, DatasetFormat.PARQUET, {"prompt": "q", "completion": "a"}))
    assert [line for line, _, _ in results] == [1, 2, 3, 4]
    assert results[0][1] is not None and results[0][1].messages == EXPECTED_PC
    assert [(d.line, d.field, d.code) for _, _, ds in results for d in ds] == [
        (2, "q", "MISSING_FIELD"),
        (3, "a", "EMPTY_FIELD"),
    ]
    # Chat as a native list<struct> column (weight null where absent) and as JSON text.
    c = tmp_path / "c.parquet"
    msgs = [
        {"role": "user", "content": "Hi", "weight": None},
        {"role": "assistant", "content": "Hello", "weight": 1},
    ]
    pq.write_table(pa.table({"messages": [msgs]}), c)
    [row] = rows(c, DatasetFormat.PARQUET)
    assert row.messages == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "weight": 1},
    ]
    t = tmp_path / "t.parquet"
    pq.write_table(pa.table({"messages": [json.dumps(GOOD_CHAT["messages"])]}), t)
    assert rows(t, DatasetFormat.PARQUET)[0].messages == GOOD_CHAT["messages"]


def test_not_parquet_is_rejected(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    p = tmp_path / "d.parquet"
    p.write_bytes(b"PAR1 not really")
    with pytest.raises(InvalidArgument):
        list(iter_records(p, DatasetFormat.PARQUET))


# --- detection and the canonical form -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "head", "fmt"),
    [
        ("d.jsonl", json.dumps(GOOD_CHAT).encode(), DatasetFormat.CHAT_JSONL),
        ("d.jsonl", b'{"prompt": "a", "completion": "b"}', DatasetFormat.PROMPT_COMPLETION_JSONL),
        ("d.json", b'{"instruction": "a", "input": "", "output": "b"}', DatasetFormat.ALPACA_JSONL),
        (
            "d.jsonl",
            b'{"prompt": "a", "chosen": "b", "rejected": "c"}',
            DatasetFormat.PREFERENCE_JSONL,
        ),
        ("D.CSV", b"prompt,completion\n", DatasetFormat.CSV),
        ("d.parquet", b"", DatasetFormat.PARQUET),
        ("upload", b"PAR1\x15\x04", DatasetFormat.PARQUET),
        # BOM, blank and broken lines before the first object; a truncated last line.
        (
            "d",
            b'\xef\xbb\xbf\n[1]\nnot json\n{"prompt": "a", "completion": "b"}\n{"pro',
            DatasetFormat.PROMPT_COMPLETION_JSONL,
        ),
    ],
)
def test_detect_format(name: str, head: bytes, fmt: DatasetFormat) -> None:
    assert detect_format(name, head) == fmt


def test_detect_format_undecidable() -> None:
    with pytest.raises(InvalidArgument) as err:
        detect_format("d.jsonl", b'{"question": "a", "answer": "b"}\n')
    assert err.value.field == "dataset.format"
    assert err.value.reason == "DATASET_INVALID"
    assert "answer, question" in err.value.message
    with pytest.raises(InvalidArgument):
        detect_format("d.txt", b"hello world\n")


def test_to_json_is_deterministic() -> None:
    a = CanonicalRow([{"content": "é", "role": "user"}, {"role": "assistant", "content": "x"}])
    b = CanonicalRow(
        [{"role": "user", "content": "é"}, {"content": "x", "role": "assistant"}], line=9
    )
    assert a.to_json() == b.to_json()
    assert a.to_json() == (
        '{"messages":[{"content":"é","role":"user"},{"content":"x","role":"assistant"}]}'
    )
    pref = CanonicalRow([{"role": "user", "content": "q"}], chosen="a", rejected="b")
    assert pref.to_json() == (
        '{"chosen":"a","messages":[{"content":"q","role":"user"}],"rejected":"b"}'
    )


def test_to_canonical_directly() -> None:
    row, diags = to_canonical(GOOD_CHAT, CHAT, 3)
    assert diags == [] and row is not None and row.line == 3
    row, diags = to_canonical({"q": "x"}, DatasetFormat.CSV, 4)
    assert row is None and [(d.line, d.code) for d in diags] == [(4, "MISSING_FIELD")]


# --- micro-benchmark, by hand -------------------------------------------------------------------


def _benchmark(n: int) -> None:  # pragma: no cover
    import random
    import tempfile
    import time

    rnd = random.Random(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "tuning"]
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "chat.jsonl"
        with p.open("w", encoding="utf-8") as f:
            for i in range(n):
                msgs = [{"role": "system", "content": "You are a helpful assistant."}]
                for _ in range(rnd.choice([1, 1, 2, 3])):
                    msgs.append({"role": "user", "content": " ".join(rnd.choices(words, k=20))})
                    msgs.append(
                        {
                            "role": "assistant",
                            "content": f"{i} " + " ".join(rnd.choices(words, k=40)),
                        }
                    )
                f.write(json.dumps({"messages": msgs}) + "\n")
        size = p.stat().st_size
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            count = sum(1 for _, row, _ in read_canonical(p, CHAT) if row is not None)
            best = min(best, time.perf_counter() - start)
        print(
            f"{count} rows, {size / n:.0f} B/row: {count / best:,.0f} rows/s,"
            f" {size / best / 1e6:.0f} MB/s"
        )


if __name__ == "__main__":  # pragma: no cover
    _benchmark(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
