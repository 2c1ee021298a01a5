"""Progress events on rank 0's stdout, in the format the training service parses."""

from __future__ import annotations

import math
import sys
from typing import Any

from services.common.worker_process import format_event


class EventWriter:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def emit(self, kind: str, **payload: Any) -> None:
        if not self.enabled:
            return
        clean = {k: _finite(v) for k, v in payload.items()}
        sys.stdout.write(format_event(kind, **clean) + "\n")
        sys.stdout.flush()

    def log(self, message: str, level: str = "info") -> None:
        self.emit("log", level=level, message=message)


def _finite(value: Any) -> Any:
    # JSON has no NaN/inf: report them as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value
