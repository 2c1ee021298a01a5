"""A stream whose consumer falls behind the model gets the text joined, never lost or reordered."""

from __future__ import annotations

import asyncio

import pytest

from services.inference.generation import Failed, Finished, FinishReason, Sampling, TextDelta, Usage
from services.inference.scheduler import GenerationJob, PreparedRequest


def _job(loop: asyncio.AbstractEventLoop) -> GenerationJob:
    request = PreparedRequest(
        prompt_ids=[1, 2],
        sampling=Sampling(temperature=0, top_p=1, top_k=0, repetition_penalty=1, seed=0),
        max_new_tokens=8,
        stop=(),
        adapter=None,
    )
    return GenerationJob(request, loop)


def _finished(text: str) -> Finished:
    return Finished(text, FinishReason.LENGTH, Usage(2, 4), 0.1, 10.0)


async def _drain(job: GenerationJob) -> list[TextDelta | Finished]:
    return [event async for event in job.events()]


async def test_deltas_that_queued_arrive_as_one_and_the_text_is_whole() -> None:
    job = _job(asyncio.get_running_loop())
    job.emit(TextDelta("Hel"))
    await asyncio.sleep(0)  # the consumer is waiting: this delta goes alone
    consumer = asyncio.ensure_future(_drain(job))
    await asyncio.sleep(0)
    for text in ("lo", ", ", "wor"):  # the consumer is busy meanwhile
        job.emit(TextDelta(text))
    job.emit(_finished("ld"))
    events = await consumer
    assert "".join(e.text for e in events) == "Hello, world"
    assert isinstance(events[-1], Finished) and events[-1].reason is FinishReason.LENGTH
    assert len(events) < 5


async def test_a_failure_after_queued_deltas_is_raised() -> None:
    job = _job(asyncio.get_running_loop())
    job.emit(TextDelta("partial"))
    job.emit(Failed(RuntimeError("unloaded")))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="unloaded"):
        await _drain(job)
