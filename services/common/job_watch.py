"""What the job services' Watch streams share: waking them when a job has news."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from google.protobuf import timestamp_pb2

from services.common.job_records import ENDED, Event

if TYPE_CHECKING:
    from services.common.job_runner import JobRunner

T = TypeVar("T")


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


async def watch(
    jobs: JobRunner,
    name: str,
    after_sequence: int,
    notifier: JobNotifier,
    to_proto: Callable[[Event], T],
) -> AsyncIterator[T]:
    """A job's events after `after_sequence`: the history, then live ones until the job ends."""
    after = after_sequence
    while True:
        job = await asyncio.to_thread(jobs.get, name)
        events = await asyncio.to_thread(jobs.events, name, after, 500)
        for event in events:
            after = event.sequence
            yield to_proto(event)
        if not events and job.state in ENDED:
            return
        if not events:
            await notifier.wait(1.0)
