"""Dataset file formats: stream a user's file into canonical chat rows, naming every bad line.

Pure Python (no grpc, no object store, no tokenizer), so the ingest worker, the CLI and the tests
share it. Files are streamed line by line (JSONL, CSV) or batch by batch (Parquet); no function
here holds a whole file.

Diagnostic codes (``Diagnostic.code``; ``field`` uses the user's own names, for CSV and Parquet
the mapped column name, and is empty for whole-line problems):

==================== ======================================================================
Code                 Meaning
==================== ======================================================================
INVALID_UTF8         The line is not valid UTF-8 (or a JSON string holds a lone surrogate
                     escape such as ``"\\ud800"``, which cannot be stored as UTF-8).
INVALID_JSON         The line (or a CSV/Parquet ``messages`` cell) is not JSON, or is JSON
                     but not an object.
INVALID_CSV          The CSV parser rejected the record.
MISSING_FIELD        A required field is absent or null: ``messages``, ``completion``,
                     ``messages[2].role``.
EMPTY_FIELD          An empty list, or an empty / whitespace-only string:
                     ``messages[1].content``.
INVALID_TYPE         A value has the wrong JSON type: ``messages`` not an array, a message
                     not an object, ``content`` not a string.
UNKNOWN_ROLE         A role outside system, user, assistant, tool: ``messages[2].role``.
INVALID_ROLE_ORDER   Roles out of order: system only first; the first other message is from
                     the user; user and assistant alternate; tool messages only follow an
                     assistant or another tool message (and are followed by a tool or an
                     assistant message); a preference prompt ends with a user message.
NO_ASSISTANT_TURN    Nothing to train on: no assistant message with weight 1 (the default).
INVALID_WEIGHT       ``messages[i].weight`` is not 0 or 1, or sits on a non-assistant message.
ROW_TOO_LONG         Emitted by ingest when a row has more tokens than ``max_seq_len``; also
                     here when a line exceeds ``max_line_bytes`` before it is even parsed.
DUPLICATE_ROW        Emitted by ingest: the canonical row (``CanonicalRow.to_json``) was
                     already seen.
EMPTY_FILE           Emitted by ingest: the file holds no rows at all.
CHAT_TEMPLATE_ERROR  Emitted by ingest: the model's chat template refused to render the row.
==================== ======================================================================
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

from services.common.errors import InvalidArgument

DIAGNOSTIC_CODES: frozenset[str] = frozenset(
    {
        "INVALID_UTF8",
        "INVALID_JSON",
        "INVALID_CSV",
        "MISSING_FIELD",
        "EMPTY_FIELD",
        "INVALID_TYPE",
        "UNKNOWN_ROLE",
        "INVALID_ROLE_ORDER",
        "NO_ASSISTANT_TURN",
        "INVALID_WEIGHT",
        "ROW_TOO_LONG",
        "DUPLICATE_ROW",
        "EMPTY_FILE",
        "CHAT_TEMPLATE_ERROR",
    }
)

# A single line above this is reported (ROW_TOO_LONG) and skipped without being held in memory.
DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024
# How many bytes detect_format needs to see; callers read this much of the file's start.
DETECT_HEAD_BYTES = 64 * 1024
# Parquet rows per batch: bounds memory together with the file's row-group size.
PARQUET_BATCH_ROWS = 4096

_BOM = codecs.BOM_UTF8
_ROLES = ("system", "user", "assistant", "tool")
_ROLE_SET = frozenset(_ROLES)
_ROLE_LIST = ", ".join(_ROLES)
_DATASET_INVALID = "DATASET_INVALID"
_NO_MAPPING: Mapping[str, str] = {}
# A JSON escape of a UTF-16 surrogate; only then can a parsed string hold a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_STR = re.compile(r"\\u[dD][89a-fA-F]")


class DatasetFormat(StrEnum):
    """The file formats a dataset is uploaded in; names equal ``Dataset.Format`` in the proto."""

    CHAT_JSONL = "CHAT_JSONL"
    PROMPT_COMPLETION_JSONL = "PROMPT_COMPLETION_JSONL"
    ALPACA_JSONL = "ALPACA_JSONL"
    PREFERENCE_JSONL = "PREFERENCE_JSONL"
    CSV = "CSV"
    PARQUET = "PARQUET"


_JSONL_FORMATS = frozenset(
    {
        DatasetFormat.CHAT_JSONL,
        DatasetFormat.PROMPT_COMPLETION_JSONL,
        DatasetFormat.ALPACA_JSONL,
        DatasetFormat.PREFERENCE_JSONL,
    }
)

# Row kinds (a JSONL format's shape) and the canonical fields each reads, required first.
_KIND_FIELDS: dict[DatasetFormat, tuple[str, ...]] = {
    DatasetFormat.CHAT_JSONL: ("messages",),
    DatasetFormat.PREFERENCE_JSONL: ("prompt", "chosen", "rejected"),
    DatasetFormat.ALPACA_JSONL: ("instruction", "output", "input"),
    DatasetFormat.PROMPT_COMPLETION_JSONL: ("prompt", "completion"),
}
_CANONICAL_FIELDS = frozenset(f for fields in _KIND_FIELDS.values() for f in fields)


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem in one row; mirrors ``tuneforge.datasets.v1.Diagnostic``."""

    line: int
    field: str
    code: str
    message: str


@dataclass(slots=True)
class CanonicalRow:
    """A row as training reads it: chat messages, plus the two replies for preference rows."""

    messages: list[dict[str, Any]]
    chosen: str | None = None
    rejected: str | None = None
    line: int = 0

    def to_json(self) -> str:
        """The stored canonical JSONL line, also the dedupe key: compact, sorted, UTF-8."""
        obj: dict[str, Any] = {"messages": self.messages}
        if self.chosen is not None:
            obj["chosen"] = self.chosen
        if self.rejected is not None:
            obj["rejected"] = self.rejected
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# Format detection


def _kind_from_keys(keys: Iterable[str]) -> DatasetFormat | None:
    present = set(keys)
    if "messages" in present:
        return DatasetFormat.CHAT_JSONL
    if "chosen" in present and "rejected" in present:
        return DatasetFormat.PREFERENCE_JSONL
    if "instruction" in present and "output" in present:
        return DatasetFormat.ALPACA_JSONL
    if "prompt" in present and "completion" in present:
        return DatasetFormat.PROMPT_COMPLETION_JSONL
    return None


_SHAPES = (
    '"messages" (chat), "chosen"+"rejected" (preference), "instruction"+"output" (alpaca) '
    'or "prompt"+"completion"'
)


def detect_format(file_name: str, head: bytes) -> DatasetFormat:
    """Guess the format from the file name and its first bytes (``DETECT_HEAD_BYTES`` suffice).

    CSV and Parquet by extension (and Parquet's ``PAR1`` magic); JSONL by the keys of the first
    line that parses as a JSON object. Raises InvalidArgument when it cannot tell.
    """
    name = file_name.lower()
    if head.startswith(b"PAR1") or name.endswith((".parquet", ".pq")):
        return DatasetFormat.PARQUET
    if name.endswith(".csv"):
        return DatasetFormat.CSV
    if head.startswith(_BOM):
        head = head[len(_BOM) :]
    for raw in head.splitlines():
        try:
            obj = json.loads(raw.decode())
        except ValueError:  # also a line cut off at the end of `head`
            continue
        if not isinstance(obj, dict):
            continue
        kind = _kind_from_keys(obj)
        if kind is None:
            seen = ", ".join(sorted(map(str, obj))) or "none"
            raise InvalidArgument(
                f"cannot tell the format of {file_name!r}: the first JSON object has keys "
                f"{seen}; expected {_SHAPES}. Set the format and check the field names",
                field="dataset.format",
                reason=_DATASET_INVALID,
            )
        return kind
    raise InvalidArgument(
        f"cannot tell the format of {file_name!r}: no line in its first {len(head)} bytes is a "
        "JSON object, and the name does not end in .csv or .parquet. Set the format",
        field="dataset.format",
        reason=_DATASET_INVALID,
    )


# --------------------------------------------------------------------------------------------
# Reading records


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: object, limit: int = 40) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _has_lone_surrogate(obj: object) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def _surrogate_diag(line: int, field: str) -> Diagnostic:
    return Diagnostic(
        line,
        field,
        "INVALID_UTF8",
        "holds a lone UTF-16 surrogate escape (such as \\ud800), which is not valid Unicode",
    )


def _too_long(line: int, limit: int) -> Diagnostic:
    return Diagnostic(
        line, "", "ROW_TOO_LONG", f"line is longer than {limit} bytes and was not read"
    )


def iter_records(
    path: Path | BinaryIO,
    fmt: DatasetFormat,
    column_mapping: Mapping[str, str] | None = None,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[tuple[int, dict[str, Any] | None, Diagnostic | None]]:
    """Stream ``(line, object, None)`` or ``(line, None, diagnostic)`` for each record.

    ``line`` is 1-based: the physical line for JSONL, where the record starts for CSV, the row
    for Parquet. CSV and Parquet objects are keyed by canonical field (``column_mapping`` maps
    field -> column, default identity); a ``messages`` cell holding JSON is parsed here.
    Raises InvalidArgument for whole-file problems (no usable columns, unreadable Parquet).
    """
    fmt = DatasetFormat(fmt)
    if fmt in _JSONL_FORMATS:
        if column_mapping:
            raise InvalidArgument(
                "column_mapping applies to CSV and Parquet files only",
                field="dataset.column_mapping",
            )
        return _iter_jsonl(path, max_line_bytes)
    if fmt is DatasetFormat.CSV:
        return _iter_csv(path, column_mapping or {}, max_line_bytes)
    if not isinstance(path, Path | str):
        raise ValueError("Parquet is read from a complete file, not from a stream")
    return _iter_parquet(Path(path), column_mapping or {})


@contextmanager
def _open_binary(source: Path | BinaryIO) -> Iterator[BinaryIO]:
    """Opens a path, or passes an open binary stream through (left open for its owner)."""
    if isinstance(source, Path | str):
        with Path(source).open("rb") as f:
            yield f
    else:
        yield source


def _iter_jsonl(
    path: Path | BinaryIO, max_line_bytes: int
) -> Iterator[tuple[int, dict[str, Any] | None, Diagnostic | None]]:
    loads = json.loads
    surrogate_escape = _SURROGATE_ESCAPE.search
    with _open_binary(path) as f:
        readline = f.readline
        limit = max_line_bytes + 1
        lineno = 0
        while True:
            raw = readline(limit)
            if not raw:
                return
            lineno += 1
            if len(raw) == limit and not raw.endswith(b"\n"):
                # Skip the rest of the overlong line without holding it.
                while raw and not raw.endswith(b"\n"):
                    raw = readline(1 << 20)
                yield lineno, None, _too_long(lineno, max_line_bytes)
                continue
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[3:]
            try:
                obj = loads(raw.decode())
            except UnicodeDecodeError as e:
                yield lineno, None, _utf8_diag(lineno, "", raw, e)
                continue
            except ValueError as e:
                if raw.isspace() or not raw:
                    continue  # blank line
                yield lineno, None, _json_diag(lineno, "", e)
                continue
            if type(obj) is not dict:
                yield (
                    lineno,
                    None,
                    Diagnostic(
                        lineno,
                        "",
                        "INVALID_JSON",
                        f"expected a JSON object, got {_json_type(obj)}",
                    ),
                )
                continue
            # Rare: JSON escapes can make lone surrogates, which cannot be stored as UTF-8.
            if surrogate_escape(raw) and _has_lone_surrogate(obj):
                yield lineno, None, _surrogate_diag(lineno, "")
                continue
            yield lineno, obj, None


def _utf8_diag(line: int, field: str, raw: bytes, e: UnicodeDecodeError) -> Diagnostic:
    bad = raw[e.start : e.start + 1].hex()
    where = f"{field} " if field else "line "
    return Diagnostic(
        line,
        field,
        "INVALID_UTF8",
        f"{where}is not valid UTF-8: byte 0x{bad} at byte {e.start + 1}; save the file as UTF-8",
    )


def _json_diag(line: int, field: str, e: ValueError) -> Diagnostic:
    detail = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
    what = f"{field} is" if field else "line is"
    return Diagnostic(line, field, "INVALID_JSON", f"{what} not valid JSON: {detail}")


def _resolve_columns(
    columns: list[str], mapping: Mapping[str, str], file_kind: str
) -> dict[str, str]:
    """Canonical field -> column for the row kind the columns describe."""
    unknown = sorted(set(mapping) - _CANONICAL_FIELDS)
    if unknown:
        raise InvalidArgument(
            f"column_mapping names unknown fields {', '.join(unknown)}; fields are "
            f"{', '.join(sorted(_CANONICAL_FIELDS))}",
            field="dataset.column_mapping",
        )
    present = set(columns)
    for fld, col in mapping.items():
        if col not in present:
            raise InvalidArgument(
                f"column_mapping maps {fld} to column {col!r}, which the {file_kind} does not "
                f"have; its columns are {', '.join(map(repr, columns))}",
                field=f"dataset.column_mapping[{fld}]",
            )
    available = {f: mapping.get(f, f) for f in _CANONICAL_FIELDS if mapping.get(f, f) in present}
    kind = _kind_from_keys(available)
    if kind is None:
        raise InvalidArgument(
            f"cannot tell what the {file_kind}'s columns ({', '.join(map(repr, columns))}) hold: "
            f"expected columns {_SHAPES}; map yours with column_mapping",
            field="dataset.column_mapping",
            reason=_DATASET_INVALID,
        )
    return {f: available[f] for f in _KIND_FIELDS[kind] if f in available}


def _parse_messages_cell(obj: dict[str, Any], column: str, line: int) -> Diagnostic | None:
    value = obj.get("messages")
    if not isinstance(value, str) or not value.strip():
        return None  # a native list (Parquet), or empty/missing: to_canonical reports it
    try:
        obj["messages"] = json.loads(value)
    except ValueError as e:
        return _json_diag(line, column, e)
    if _SURROGATE_ESCAPE_STR.search(value) and _has_lone_surrogate(obj["messages"]):
        return _surrogate_diag(line, column)
    return None


def _iter_csv(
    path: Path | BinaryIO, mapping: Mapping[str, str], max_line_bytes: int
) -> Iterator[tuple[int, dict[str, Any] | None, Diagnostic | None]]:
    # Bounds a (say, unterminated) quoted field. The limit is process-wide: only ever raise it.
    if csv.field_size_limit() < max_line_bytes:
        csv.field_size_limit(max_line_bytes)
    bad_lines: dict[int, str] = {}  # physical line -> diagnostic code
    physical = 0

    def lines(f: Any) -> Iterator[str]:
        # Physical lines, decoded here so that a bad byte or an overlong line names its line
        # instead of ending the stream: such a line is marked and handed on (bad bytes as
        # surrogates, an overlong line as an empty one) for the record holding it to report.
        nonlocal physical
        readline = f.readline
        limit = max_line_bytes + 1
        while raw := readline(limit):
            physical += 1
            if physical == 1 and raw.startswith(_BOM):
                raw = raw[3:]
            if len(raw) == limit and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):
                    raw = readline(1 << 20)
                bad_lines[physical] = "ROW_TOO_LONG"
                yield "\n"
                continue
            try:
                yield raw.decode()
            except UnicodeDecodeError:
                bad_lines[physical] = "INVALID_UTF8"
                yield raw.decode("utf-8", "surrogateescape")

    with _open_binary(path) as f:
        reader = csv.reader(lines(f))
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise InvalidArgument(
                f"the CSV header row cannot be read: {e}", reason=_DATASET_INVALID
            ) from e
        if bad_lines:
            raise InvalidArgument(
                "the CSV header row is not valid UTF-8 or is too long",
                reason=_DATASET_INVALID,
            )
        columns = _resolve_columns(header, mapping, "CSV file")
        index = {col: i for i, col in enumerate(header)}
        picks = [(fld, index[col]) for fld, col in columns.items()]
        messages_col = columns.get("messages")
        end = physical
        while True:
            # csv pulls lines only until a record is complete, so `physical` is its last line.
            start = end + 1
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                end = physical
                reason = str(e).split(" - ")[0]  # drop the csv module's hint to Python users
                message = f"the CSV record cannot be parsed: {reason}"
                yield start, None, Diagnostic(start, "", "INVALID_CSV", message)
                continue
            end = physical
            if bad_lines:
                codes = [bad_lines.pop(n) for n in range(start, end + 1) if n in bad_lines]
                if "ROW_TOO_LONG" in codes:
                    yield start, None, _too_long(start, max_line_bytes)
                    continue
                if codes:
                    message = "record is not valid UTF-8; save the file as UTF-8"
                    yield start, None, Diagnostic(start, "", "INVALID_UTF8", message)
                    continue
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank line
            n = len(record)
            obj: dict[str, Any] = {fld: record[i] if i < n else None for fld, i in picks}
            if messages_col is not None:
                diag = _parse_messages_cell(obj, messages_col, start)
                if diag is not None:
                    yield start, None, diag
                    continue
            yield start, obj, None


def _iter_parquet(
    path: Path, mapping: Mapping[str, str]
) -> Iterator[tuple[int, dict[str, Any] | None, Diagnostic | None]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise InvalidArgument(
            f"the file is not a readable Parquet file: {e}", reason=_DATASET_INVALID
        ) from e
    with pf:
        columns = _resolve_columns(list(pf.schema_arrow.names), mapping, "Parquet file")
        messages_col = columns.get("messages")
        row = 0
        names = list(columns.values())
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=names):
            data = batch.to_pydict()
            cols = [(fld, data[col]) for fld, col in columns.items()]
            for i in range(batch.num_rows):
                row += 1
                obj = {fld: values[i] for fld, values in cols}
                if messages_col is not None:
                    diag = _parse_messages_cell(obj, messages_col, row)
                    if diag is not None:
                        yield row, None, diag
                        continue
                yield row, obj, None


# --------------------------------------------------------------------------------------------
# Canonical rows


class _Row:
    """Collects one row's diagnostics."""

    __slots__ = ("diags", "line")

    def __init__(self, line: int) -> None:
        self.line = line
        self.diags: list[Diagnostic] = []

    def add(self, field: str, code: str, message: str) -> None:
        self.diags.append(Diagnostic(self.line, field, code, message))

    def text(self, obj: Mapping[str, Any], key: str, name: str, *, required: bool = True) -> str:
        """A required (or optional) non-empty string field; "" when it is bad."""
        value = obj.get(key)
        if value is None:
            if required:
                self.add(name, "MISSING_FIELD", f"{name} is missing")
            return ""
        if type(value) is not str:
            self.add(name, "INVALID_TYPE", f"{name} is {_json_type(value)}; expected a string")
            return ""
        if required and (not value or value.isspace()):
            self.add(name, "EMPTY_FIELD", f"{name} is empty")
        return value


def _check_messages(
    value: object, name: str, row: _Row, *, prompt_only: bool
) -> list[dict[str, Any]]:
    """Validate a message list, adding every problem to ``row``; return the canonical copy.

    ``prompt_only``: a preference prompt, which must end with a user message and need not
    contain an assistant turn.
    """
    if value is None:
        row.add(name, "MISSING_FIELD", f"{name} is missing")
        return []
    if type(value) is not list:
        if isinstance(value, str) and (not value or value.isspace()):
            row.add(name, "EMPTY_FIELD", f"{name} is empty")
        else:
            row.add(name, "INVALID_TYPE", f"{name} is {_json_type(value)}; expected an array")
        return []
    if not value:
        row.add(name, "EMPTY_FIELD", f"{name} is an empty array; expected at least one message")
        return []
    out: list[dict[str, Any]] = []
    prev: str | None = ""  # "": at the start; None: after a message whose role is unusable
    trained = False
    unsure = False  # some message's role is unusable: it may have been the assistant's turn
    for i, m in enumerate(value):
        if type(m) is not dict:
            f = f"{name}[{i}]"
            row.add(f, "INVALID_TYPE", f"{f} is {_json_type(m)}; expected a message object")
            prev = None
            unsure = True
            continue
        role = m.get("role")
        content = m.get("content")
        weight = m.get("weight")
        # Role and order.
        if type(role) is not str or role not in _ROLE_SET:
            f = f"{name}[{i}].role"
            if role is None:
                row.add(f, "MISSING_FIELD", f"{f} is missing; expected one of {_ROLE_LIST}")
            elif type(role) is not str:
                row.add(f, "INVALID_TYPE", f"{f} is {_json_type(role)}; expected a string")
            else:
                row.add(f, "UNKNOWN_ROLE", f"{f} is {_show(role)}; expected one of {_ROLE_LIST}")
            prev = None
            unsure = True
        else:
            problem = _order_problem(prev, role, i)
            if problem is not None:
                f = f"{name}[{i}].role"
                row.add(f, "INVALID_ROLE_ORDER", f'{f} is "{role}": {problem}')
                if role == "system":
                    role = None  # a misplaced system message says nothing about what follows
            prev = role
        # Content.
        if type(content) is not str:
            f = f"{name}[{i}].content"
            if content is None:
                row.add(f, "MISSING_FIELD", f"{f} is missing")
            else:
                row.add(f, "INVALID_TYPE", f"{f} is {_json_type(content)}; expected a string")
        elif not content or content.isspace():
            f = f"{name}[{i}].content"
            row.add(f, "EMPTY_FIELD", f"{f} is empty")
        # Weight: only on assistant messages, 0 (not trained) or 1 (trained, the default).
        if weight is None:
            trained = trained or role == "assistant"
            out.append({"role": role, "content": content})
            continue
        f = f"{name}[{i}].weight"
        if type(weight) not in (int, float) or weight not in (0, 1):  # bools are not weights
            row.add(f, "INVALID_WEIGHT", f"{f} is {_show(weight)}; expected 0 or 1")
            trained = trained or role == "assistant"  # one problem is enough to report
            continue
        if role != "assistant" and role is not None:
            row.add(
                f,
                "INVALID_WEIGHT",
                f"{f} is set on a {role} message; only assistant messages carry a weight",
            )
        trained = trained or (role == "assistant" and weight == 1)
        out.append({"role": role, "content": content, "weight": int(weight)})
    if prompt_only:
        last = value[-1]
        last_role = last.get("role") if type(last) is dict else None
        if type(last_role) is str and last_role in _ROLE_SET and last_role != "user":
            f = f"{name}[{len(value) - 1}].role"
            row.add(
                f,
                "INVALID_ROLE_ORDER",
                f'{f} is "{last_role}": a preference prompt must end with a user message, '
                "which chosen and rejected answer",
            )
    elif trained or unsure:
        pass
    elif not any(type(m) is dict and m.get("role") == "assistant" for m in value):
        row.add(name, "NO_ASSISTANT_TURN", f"{name} has no assistant message to train on")
    else:
        row.add(
            name,
            "NO_ASSISTANT_TURN",
            f"{name} has no assistant message to train on: every assistant message has weight 0",
        )
    return out


# Which roles may follow which: "" is the start of the conversation.
_FOLLOWS: dict[str | None, frozenset[str]] = {
    None: frozenset(),  # after a message already reported: take the slow path
    "": frozenset({"system", "user"}),
    "system": frozenset({"user"}),
    "user": frozenset({"assistant"}),
    "assistant": frozenset({"user", "tool"}),
    "tool": frozenset({"tool", "assistant"}),
}


def _plain_chat(messages: list[Any]) -> bool:
    """True for the common valid chat: only {"role", "content"} messages, in order, with an
    assistant turn. Such rows are kept as parsed; everything else takes ``_check_messages``."""
    follows = _FOLLOWS
    prev: str | None = ""
    trained = False
    for m in messages:
        if type(m) is not dict or len(m) != 2:
            return False
        role = m.get("role")
        content = m.get("content")
        if (
            type(role) is not str
            or role not in follows[prev]
            or type(content) is not str
            or not content
            or content.isspace()
        ):
            return False
        if role == "assistant":
            trained = True
        prev = role
    return trained


def _order_problem(prev: str | None, role: str, i: int) -> str | None:
    """Why ``role`` may not follow ``prev`` (None: fine)."""
    if role == "system":
        return None if i == 0 else "a system message may only be the first message"
    if prev is None:
        return None  # the previous message was already reported
    if prev == "" or prev == "system":
        if role == "user":
            return None
        if prev:
            return "the first message after the system prompt must be from the user"
        return "the first message must be from the user (or a system prompt)"
    if prev == "user":
        return None if role == "assistant" else "a user message must be answered by the assistant"
    if prev == "assistant":
        if role == "user" or role == "tool":
            return None
        return "an assistant message must be followed by a user or tool message"
    # prev == "tool"
    if role == "tool" or role == "assistant":
        return None
    return "a tool message must be followed by another tool message or the assistant's reply"


def _reply(value: object, name: str, row: _Row) -> str:
    """A preference reply: a string, an assistant message object, or a list of exactly one."""
    if type(value) is list and len(value) == 1 and type(value[0]) is dict:
        value = value[0]
        name = f"{name}[0]"
    if type(value) is dict:
        role = value.get("role", "assistant")
        if role != "assistant":
            f = f"{name}.role"
            row.add(
                f, "INVALID_ROLE_ORDER", f"{f} is {_show(role)}; a reply must be from the assistant"
            )
        return row.text(value, "content", f"{name}.content")
    if type(value) is list:
        row.add(
            name, "INVALID_TYPE", f"{name} is an array; expected a string or one assistant message"
        )
        return ""
    return row.text({"v": value}, "v", name)


def to_canonical(
    obj: Mapping[str, Any],
    fmt: DatasetFormat,
    line: int,
    *,
    column_mapping: Mapping[str, str] | None = None,
) -> tuple[CanonicalRow | None, list[Diagnostic]]:
    """Turn one parsed record into a canonical row, or report every problem it has.

    For CSV and Parquet the row kind follows from the record's (canonical) keys, and
    ``column_mapping`` (field -> column) names the user's columns in diagnostics.
    """
    kind = fmt if type(fmt) is DatasetFormat else DatasetFormat(fmt)
    if kind is DatasetFormat.CSV or kind is DatasetFormat.PARQUET:
        guessed = _kind_from_keys(obj)
        if guessed is None:
            row = _Row(line)
            row.add("", "MISSING_FIELD", f"the row has none of the fields {_SHAPES}")
            return None, row.diags
        kind = guessed
    if kind is DatasetFormat.CHAT_JSONL:
        messages = obj.get("messages")
        if type(messages) is list and _plain_chat(messages):
            return CanonicalRow(messages, line=line), []

    cols = column_mapping or _NO_MAPPING

    def name(fld: str) -> str:  # the user's name for a canonical field
        return cols.get(fld, fld)

    if kind is DatasetFormat.CHAT_JSONL:
        row = _Row(line)
        messages = _check_messages(messages, name("messages"), row, prompt_only=False)
        if row.diags:
            return None, row.diags
        return CanonicalRow(messages, line=line), row.diags
    row = _Row(line)
    if kind is DatasetFormat.PROMPT_COMPLETION_JSONL:
        prompt = row.text(obj, "prompt", name("prompt"))
        completion = row.text(obj, "completion", name("completion"))
        if row.diags:
            return None, row.diags
        return CanonicalRow(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}],
            line=line,
        ), row.diags
    if kind is DatasetFormat.ALPACA_JSONL:
        instruction = row.text(obj, "instruction", name("instruction"))
        extra = row.text(obj, "input", name("input"), required=False)
        output = row.text(obj, "output", name("output"))
        if row.diags:
            return None, row.diags
        if extra and not extra.isspace():
            instruction = f"{instruction}\n\n{extra}"
        return CanonicalRow(
            [{"role": "user", "content": instruction}, {"role": "assistant", "content": output}],
            line=line,
        ), row.diags
    # Preference.
    prompt_value = obj.get("prompt")
    prompt_messages: list[dict[str, Any]]
    if type(prompt_value) is list:
        prompt_messages = _check_messages(prompt_value, name("prompt"), row, prompt_only=True)
    else:
        prompt = row.text(obj, "prompt", name("prompt"))
        prompt_messages = [{"role": "user", "content": prompt}]
    chosen = _reply(obj.get("chosen"), name("chosen"), row)
    rejected = _reply(obj.get("rejected"), name("rejected"), row)
    if row.diags:
        return None, row.diags
    return CanonicalRow(prompt_messages, chosen=chosen, rejected=rejected, line=line), row.diags


def read_canonical(
    path: Path | BinaryIO,
    fmt: DatasetFormat,
    column_mapping: Mapping[str, str] | None = None,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[tuple[int, CanonicalRow | None, list[Diagnostic]]]:
    """Stream ``(line, row or None, diagnostics)`` for every record of the file."""
    fmt = DatasetFormat(fmt)
    for line, obj, diag in iter_records(path, fmt, column_mapping, max_line_bytes=max_line_bytes):
        if obj is None:
            yield line, None, [diag] if diag is not None else []
            continue
        row, diags = to_canonical(obj, fmt, line, column_mapping=column_mapping)
        yield line, row, diags
