"""Resource names (`projects/{p}/models/{m}`), ids, page tokens, list filters (AIP-122/158/160)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from services.common.errors import InvalidArgument

ID_PATTERN = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
DEFAULT_PAGE_SIZE = 50
T = TypeVar("T")
MAX_PAGE_SIZE = 1000


def check_id(value: str, field: str) -> str:
    if not ID_PATTERN.match(value):
        raise InvalidArgument(
            f"{field} {value!r} is not a valid id: use 1 to 63 lower-case letters, digits and '-', "
            "starting with a letter and not ending with '-'",
            field=field,
        )
    return value


@dataclass(frozen=True)
class ResourceName:
    project: str
    collection: str
    id: str

    def __str__(self) -> str:
        return f"projects/{self.project}/{self.collection}/{self.id}"


def parse_parent(parent: str, field: str = "parent") -> str:
    """Returns the project id of "projects/{project}"."""
    parts = parent.split("/")
    if len(parts) != 2 or parts[0] != "projects" or not parts[1]:
        raise InvalidArgument(
            f"{field} must look like 'projects/{{project}}', got {parent!r}", field=field
        )
    return check_id(parts[1], field)


def parse_name(name: str, collection: str, field: str = "name") -> ResourceName:
    """Parses "projects/{p}/{collection}/{id}"."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != collection:
        raise InvalidArgument(
            f"{field} must look like 'projects/{{project}}/{collection}/{{id}}', got {name!r}",
            field=field,
        )
    return ResourceName(check_id(parts[1], field), collection, check_id(parts[3], field))


def page_size(requested: int, field: str = "page_size") -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative", field=field)
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_page_token(position: dict[str, object]) -> str:
    raw = json.dumps(position, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, field: str = "page_token") -> dict[str, object]:
    if not token:
        return {}
    try:
        padded = token + "=" * (-len(token) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument("page_token is not a token this server issued", field=field) from exc
    if not isinstance(value, dict):
        raise InvalidArgument("page_token is not a token this server issued", field=field)
    return value


def cut_page(found: list[T], size: int, position: Callable[[T], object]) -> tuple[list[T], str]:
    """Turns `size + 1` fetched items into a page and the token that resumes after it."""
    if len(found) <= size:
        return found, ""
    page = found[:size]
    return page, encode_page_token({"after": position(page[-1])})


def parse_filter(text: str, allowed: set[str], field: str = "filter") -> dict[str, str]:
    """Parses `key=value [AND key=value ...]` (values may be double-quoted)."""
    terms: dict[str, str] = {}
    if not text.strip():
        return terms
    for term in re.split(r"\s+AND\s+", text.strip()):
        key, sep, value = term.partition("=")
        key, value = key.strip(), value.strip().strip('"')
        if not sep or not key or not value:
            raise InvalidArgument(f"filter term {term!r} is not key=value", field=field)
        if key not in allowed:
            raise InvalidArgument(
                f"filter on {key!r} is not supported; use one of {sorted(allowed)}", field=field
            )
        terms[key] = value
    return terms
