"""What the job services' Watch streams share: waking them when a job has news."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

from google.protobuf import timestamp_pb2


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


class JobNotifier:
    """Wakes Watch streams when a job has news (called from supervisor threads)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._condition: asyncio.Condition | None = None

    def bind(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._condition = asyncio.Condition()

    def notify(self, _job: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._wake()))

    async def _wake(self) -> None:
        assert self._condition is not None
        async with self._condition:
            self._condition.notify_all()

    async def wait(self, seconds: float) -> None:
        """Returns on the next notification, or after `seconds`."""
        if self._condition is None:
            await asyncio.sleep(seconds)
            return
        async with self._condition:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._condition.wait(), seconds)
