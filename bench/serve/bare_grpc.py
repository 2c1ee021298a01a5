"""The CPU that gRPC alone takes per streamed message on this machine, with no model and no service.

A bare `grpc.aio` InferenceService (the same protos, one ChatStream handler that only sends)
streams to the same SDK client process the serving benchmark uses, paced like the service:
`streams` streams at once, each given a message `gap_s` apart, one stream after the other, as
the scheduler's rounds decode a token of each active request in turn. What the server's process
spends beyond pacing alone (the same tasks woken by the same ticks, without gRPC), and what the
client's process spends, divided by the messages, is the floor of what gRPC can cost a stream
per message here: the service cannot stream a token for less. Multiplied by the service's
message rate, it says how much of the machine's CPU per-token streaming needs before anything
of tuneforge's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import psutil

from tuneforge.inference.v1 import inference_service_pb2 as pb
from tuneforge.inference.v1 import inference_service_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class Floor:
    """CPU per message of a bare gRPC stream, in microseconds."""

    streams: int
    gap_ms: float
    messages: int
    server_us: float
    client_us: float

    @property
    def total_us(self) -> float:
        return self.server_us + self.client_us

    def share_of_cpus(self, messages_per_s: float, cpus: int) -> float:
        """The fraction of `cpus` CPUs that `messages_per_s` such messages take."""
        return messages_per_s * self.total_us / 1e6 / cpus


class _Ticks:
    """Wakes the streams of a round one at a time in turn, a tick every `gap_s / streams`, so that
    each stream gets `count` messages `gap_s` apart: the scheduler's rounds, which decode one
    token of each active request after the other."""

    def __init__(self, streams: int, count: int, gap_s: float) -> None:
        self.streams, self.count, self.gap_s = streams, count, gap_s
        self._joined = 0
        self._all_in = asyncio.Event()
        self._turns = [asyncio.Semaphore(0) for _ in range(streams)]

    async def join(self) -> int:
        """Waits until every stream of the round has joined; returns this stream's turn."""
        turn = self._joined
        self._joined += 1
        if self._joined == self.streams:
            self._all_in.set()
            asyncio.get_running_loop().create_task(self._run())
        await self._all_in.wait()
        return turn

    async def _run(self) -> None:
        for tick in range(self.count * self.streams):
            await asyncio.sleep(self.gap_s / self.streams)
            self._turns[tick % self.streams].release()

    async def next(self, turn: int) -> None:
        await self._turns[turn].acquire()


class _PacedServicer(pb_grpc.InferenceServiceServicer):
    """ChatStream only: `tokens` messages, one per tick of the current round."""

    def __init__(self) -> None:
        self.tokens = 0
        self.ticks: _Ticks | None = None

    async def ChatStream(
        self, request: pb.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        ticks = self.ticks
        assert ticks is not None
        turn = await ticks.join()
        for _ in range(self.tokens - 1):
            await ticks.next(turn)
            yield pb.GenerateStreamResponse(text=" word")
        await ticks.next(turn)
        yield pb.GenerateStreamResponse(
            text=" word",
            finish_reason=pb.LENGTH,
            usage=pb.Usage(
                prompt_tokens=1, completion_tokens=self.tokens, total_tokens=self.tokens + 1
            ),
        )


@contextlib.contextmanager
def paced_server() -> Iterator[tuple[str, _PacedServicer, asyncio.AbstractEventLoop]]:
    """The bare server on 127.0.0.1, on an event loop thread of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="bare-grpc", daemon=True)
    thread.start()
    servicer = _PacedServicer()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        pb_grpc.add_InferenceServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result()
    try:
        yield f"127.0.0.1:{port}", servicer, loop
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def _process_cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def measure_floor(
    client_for: Callable[[str], Any],
    specs: list[Any],
    tokens: int,
    gap_s: float,
    seconds: float = 4.0,
) -> Floor:
    """Streams `len(specs)` paced streams of `tokens` messages through the bare server for about
    `seconds`, read by `client_for(address)` (the benchmark's ClientProcess: `run(specs,
    tokens)` returns the timelines, `process` is its process, `close()` ends it).

    Server CPU is this process's (`time.process_time`: the bare server's loop and grpc threads;
    the caller has stopped its service), less the same pacing without gRPC."""
    streams = len(specs)
    rounds = max(1, round(seconds / (tokens * gap_s)))
    with paced_server() as (address, servicer, loop):
        servicer.tokens = tokens

        async def pacing_only() -> None:
            ticks = _Ticks(streams, tokens, gap_s)

            async def stream() -> None:
                turn = await ticks.join()
                for _ in range(tokens):
                    await ticks.next(turn)

            await asyncio.gather(*(stream() for _ in range(streams)))

        pacing = 0.0
        for _ in range(rounds):
            before = time.process_time()
            asyncio.run_coroutine_threadsafe(pacing_only(), loop).result()
            pacing += time.process_time() - before
        client = client_for(address)
        try:
            # One untimed round: the channel connects, the client's threads start.
            servicer.ticks = _Ticks(streams, tokens, gap_s)
            client.run(specs, tokens)
            server = client_cpu = 0.0
            messages = 0
            for _ in range(rounds):
                servicer.ticks = _Ticks(streams, tokens, gap_s)
                before, client_before = time.process_time(), _process_cpu_s(client.process.pid)
                timelines = client.run(specs, tokens)
                server += time.process_time() - before
                client_cpu += _process_cpu_s(client.process.pid) - client_before
                messages += sum(len(t.marks) for t in timelines)
        finally:
            client.close()
    return Floor(
        streams=streams,
        gap_ms=gap_s * 1000,
        messages=messages,
        server_us=max(server - pacing, 0.0) / messages * 1e6,
        client_us=client_cpu / messages * 1e6,
    )
