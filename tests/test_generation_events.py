"""A stream whose consumer falls behind the model gets the text joined, never lost or reordered;
a stream interval sends at most one message per interval, never holding the first or the end."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from services.inference.generation import Failed, Finished, FinishReason, Sampling, TextDelta, Usage
from services.inference.scheduler import GenerationJob, PreparedRequest


def _job(loop: asyncio.AbstractEventLoop, stream_interval_s: float = 0.0) -> GenerationJob:
    request = PreparedRequest(
        prompt_ids=[1, 2],
        sampling=Sampling(temperature=0, top_p=1, top_k=0, repetition_penalty=1, seed=0),
        max_new_tokens=8,
        stop=(),
        adapter=None,
    )
    return GenerationJob(request, loop, stream_interval_s)


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


async def _timed(job: GenerationJob) -> list[tuple[float, str]]:
    loop = asyncio.get_running_loop()
    return [(loop.time(), event.text) async for event in job.events()]


async def _produce(job: GenerationJob, texts: list[str], every_s: float) -> None:
    for text in texts:
        job.emit(TextDelta(text))
        await asyncio.sleep(every_s)
    job.emit(_finished(""))


async def test_a_stream_interval_joins_fast_tokens_but_not_the_first() -> None:
    loop = asyncio.get_running_loop()
    job = _job(loop, stream_interval_s=0.1)
    consumer = asyncio.ensure_future(_timed(job))
    start = loop.time()
    await _produce(job, [f"t{i} " for i in range(20)], 0.01)  # a token every 10 ms for 0.2 s
    messages = await consumer
    assert "".join(text for _, text in messages) == "".join(f"t{i} " for i in range(20))
    assert messages[0][1] == "t0 " and messages[0][0] - start < 0.09  # the first at once
    assert 3 <= len(messages) <= 8  # ~0.1 s apart over >= 0.2 s, instead of 21
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(messages)]
    assert all(gap >= 0.09 for gap in gaps[:-1])


async def test_the_end_is_not_held_by_the_interval() -> None:
    loop = asyncio.get_running_loop()
    job = _job(loop, stream_interval_s=5.0)
    consumer = asyncio.ensure_future(_timed(job))
    start = loop.time()
    await _produce(job, ["a", "b", "c"], 0.01)
    messages = await asyncio.wait_for(consumer, 1.0)
    assert [text for _, text in messages] == ["a", "bc"]  # the held text goes with the end
    assert messages[-1][0] - start < 0.5


async def test_without_an_interval_each_token_a_consumer_keeps_up_with_is_its_own_message() -> None:
    job = _job(asyncio.get_running_loop())
    consumer = asyncio.ensure_future(_timed(job))
    await _produce(job, ["a", "b", "c", "d"], 0.005)
    assert [text for _, text in await consumer] == ["a", "b", "c", "d", ""]
