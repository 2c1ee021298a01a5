"""One worker thread per served model: a bounded FIFO queue and step-wise round-robin decoding.

Design (why, not only what):
- Torch and onnxruntime calls block, so they never run on the event loop: each model has one
  worker thread that owns its engine. One thread per model keeps a model's steps serial (the
  adapters of one base are switched in place, so two steps on one model cannot overlap) while
  different models run side by side.
- Up to `max_active` requests of a model decode together: each round gives every active request
  one token (its own KV cache, its own adapter), so a long reply does not hold up a short one and
  requests for different adapters interleave. A round visits requests grouped by adapter (stable,
  so FIFO within an adapter) to switch adapters at most once per adapter per round.
- Up to `max_queued` more wait in FIFO order for a free slot; beyond that `submit` raises
  ResourceExhausted (QUEUE_FULL) at once instead of letting latency grow without bound.
- A cancelled request (the client went away, its deadline passed) leaves the counts at once, so a
  new request can take its place immediately; the worker drops it before its next token.
- Events go back to the request's event loop through `call_soon_threadsafe`; the worker never
  waits for a consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import structlog

from services.common.errors import Aborted, ResourceExhausted, TuneforgeError, Unavailable
from services.inference.engine import AdapterFiles, DecodeSession, Engine, decoder_for
from services.inference.generation import (
    Failed,
    Finished,
    FinishReason,
    GenerationEvent,
    Sampling,
    TextDelta,
    Usage,
)
from services.inference.text_stream import TextAssembler

log = structlog.get_logger("inference.scheduler")


@dataclass(frozen=True)
class PreparedRequest:
    """A request ready to decode: tokens, resolved sampling and limits."""

    prompt_ids: list[int]
    sampling: Sampling
    max_new_tokens: int
    stop: tuple[str, ...]
    adapter: AdapterFiles | None
    # time.monotonic() when the request arrived (time to first token counts from here).
    arrival: float = field(default_factory=time.monotonic)


class GenerationJob:
    """One request between its consumer on an event loop and the model's worker thread."""

    def __init__(
        self,
        request: PreparedRequest,
        loop: asyncio.AbstractEventLoop,
        stream_interval_s: float = 0.0,
    ) -> None:
        self.request = request
        self._loop = loop
        self._events: asyncio.Queue[GenerationEvent] = asyncio.Queue()
        # Set on the loop when the Finished or Failed event is queued: ends a held delta's wait.
        self._ended = asyncio.Event()
        self._stream_interval_s = stream_interval_s
        self._cancelled = threading.Event()
        # Set by the worker that queued the job: takes it out of its queue and counts.
        self.on_cancel: Callable[[GenerationJob], None] | None = None

    @property
    def adapter_name(self) -> str:
        return self.request.adapter.name if self.request.adapter else ""

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Gives the request's slot back at once; decoding stops before its next token."""
        if self._cancelled.is_set():
            return
        self._cancelled.set()
        if self.on_cancel is not None:
            self.on_cancel(self)

    def emit(self, event: GenerationEvent) -> None:
        """Worker thread -> the consumer's loop (dropped if that loop is gone)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue, event)

    def _queue(self, event: GenerationEvent) -> None:
        self._events.put_nowait(event)
        if not isinstance(event, TextDelta):
            self._ended.set()

    async def events(self) -> AsyncIterator[TextDelta | Finished]:
        """Text deltas, then one Finished; raises the error of a failed generation.

        Deltas that arrived while the consumer was busy are joined into one (and into the
        Finished that follows them), so a consumer slower than the model (a stream whose messages
        cost more than a token, as with a fast ONNX model) sends fewer, longer messages instead
        of falling further behind. With a stream interval, a delta that comes sooner than that
        after the previous event is held until the interval has passed (or the generation ends)
        and goes out joined with the deltas that followed it: the first delta and the end are
        never held.
        """
        last_sent: float | None = None
        while True:
            event = await self._events.get()
            if isinstance(event, TextDelta) and last_sent is not None and self._stream_interval_s:
                await self._hold(last_sent + self._stream_interval_s - self._loop.time())
            while isinstance(event, TextDelta) and not self._events.empty():
                following = self._events.get_nowait()
                if isinstance(following, TextDelta):
                    event = TextDelta(event.text + following.text)
                elif isinstance(following, Finished):
                    event = dataclasses.replace(following, text=event.text + following.text)
                else:
                    event = following  # Failed: the text before it is not worth sending
            if isinstance(event, Failed):
                raise event.error
            yield event
            if isinstance(event, Finished):
                return
            last_sent = self._loop.time()

    async def _hold(self, seconds: float) -> None:
        """Waits `seconds`, or less if the generation ends meanwhile."""
        if seconds <= 0 or self._ended.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ended.wait(), seconds)


@dataclass(eq=False)
class _Running:
    """Decoding state of an admitted job, touched only by the worker thread."""

    job: GenerationJob
    assembler: TextAssembler
    session: DecodeSession | None = None
    generated: int = 0
    admitted_at: float = 0.0
    first_token_at: float | None = None


class ModelWorker:
    """The queue and decoding loop of one served model."""

    def __init__(self, name: str, engine: Engine, max_active: int, max_queued: int) -> None:
        self.name = name
        self.engine = engine
        self.max_active = max_active
        self.max_queued = max_queued
        self._cond = threading.Condition()
        self._waiting: deque[GenerationJob] = deque()
        self._running: list[_Running] = []
        self._closed: TuneforgeError | None = None
        self._decode = decoder_for(engine.tokenizer)
        self._thread = threading.Thread(
            target=self._run, name=f"inference-{name.rsplit('/', 1)[-1]}", daemon=True
        )
        self._thread.start()

    # --- called from the event loop --------------------------------------------------------

    def submit(self, job: GenerationJob) -> None:
        """Queues `job` or raises ResourceExhausted (QUEUE_FULL) when the model is saturated."""
        with self._cond:
            if self._closed is not None:
                raise self._closed
            active, queued = self._counts()
            if active + queued >= self.max_active + self.max_queued:
                raise ResourceExhausted(
                    f"{self.name} has {active} requests running and {queued} waiting; retry later",
                    metadata={
                        "model": self.name,
                        "max_active_requests": self.max_active,
                        "max_queued_requests": self.max_queued,
                    },
                )
            job.on_cancel = self._cancel
            self._waiting.append(job)
            self._cond.notify()

    def counts(self) -> tuple[int, int]:
        """(running, waiting) requests, cancelled ones excluded."""
        with self._cond:
            return self._counts()

    def close(self, reason: TuneforgeError | None = None) -> None:
        """Stops the worker; requests still queued or running end with `reason` (ABORTED)."""
        with self._cond:
            self._closed = reason or Aborted(f"{self.name} was unloaded")
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _counts(self) -> tuple[int, int]:
        running = sum(1 for r in self._running if not r.job.cancelled)
        waiting = sum(1 for j in self._waiting if not j.cancelled)
        return running, waiting

    def _cancel(self, job: GenerationJob) -> None:
        # A running job is not in the queue: the worker drops it before its next step.
        with self._cond, contextlib.suppress(ValueError):
            self._waiting.remove(job)

    # --- the worker thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except Exception as exc:  # a bug here must not leave callers waiting forever
            log.error("worker_crashed", model=self.name, exc_info=exc)
            with self._cond:
                self._closed = Unavailable(
                    f"the worker of {self.name} stopped; unload and load the model again",
                    metadata={"model": self.name},
                )
        self._abort_all()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while self._closed is None and not self._waiting and not self._running:
                    self._cond.wait()
                if self._closed is not None:
                    break
                self._admit()
                round_ = sorted(self._running, key=lambda r: r.job.adapter_name)
            finished = {id(r) for r in round_ if self._step(r)}
            if finished:
                with self._cond:
                    self._running = [r for r in self._running if id(r) not in finished]

    def _admit(self) -> None:
        """Moves waiting jobs into free slots, oldest first (caller holds the lock)."""
        while self._waiting and sum(not r.job.cancelled for r in self._running) < self.max_active:
            job = self._waiting.popleft()
            if job.cancelled:
                continue
            assembler = TextAssembler(self._decode, job.request.stop)
            self._running.append(_Running(job, assembler, admitted_at=time.monotonic()))

    def _step(self, run: _Running) -> bool:
        """Decodes one token of `run`; True when it is over (finished, failed or cancelled)."""
        job = run.job
        if job.cancelled:
            self._close_session(run)
            return True
        try:
            if run.session is None:
                req = job.request
                run.session = self.engine.start(
                    req.prompt_ids, req.sampling, req.max_new_tokens, req.adapter
                )
            token = run.session.next_token()
        except Exception as exc:
            if not isinstance(exc, TuneforgeError):
                log.error("generation_failed", model=self.name, exc_info=exc)
            self._close_session(run)
            job.emit(Failed(exc))
            return True
        run.generated += 1
        if run.first_token_at is None:
            run.first_token_at = time.monotonic()
        if token in self.engine.eos_token_ids:
            return self._finish(run, FinishReason.STOP)
        text = run.assembler.push(token)
        if run.assembler.stopped:
            return self._finish(run, FinishReason.STOP_SEQUENCE, text)
        if run.generated >= job.request.max_new_tokens:
            return self._finish(run, FinishReason.LENGTH, text)
        if text:
            job.emit(TextDelta(text))
        return False

    def _finish(self, run: _Running, reason: FinishReason, text: str = "") -> bool:
        if reason is not FinishReason.STOP_SEQUENCE:
            text += run.assembler.flush()
        now = time.monotonic()
        request = run.job.request
        first = run.first_token_at or now
        elapsed = now - run.admitted_at
        run.job.emit(
            Finished(
                text=text,
                reason=reason,
                usage=Usage(len(request.prompt_ids), run.generated),
                time_to_first_token_s=first - request.arrival,
                tokens_per_second=run.generated / elapsed if elapsed > 0 else 0.0,
            )
        )
        self._close_session(run)
        return True

    def _close_session(self, run: _Running) -> None:
        if run.session is not None:
            try:
                run.session.close()
            finally:
                run.session = None

    def _abort_all(self) -> None:
        with self._cond:
            error = self._closed or Aborted(f"{self.name} was unloaded")
            waiting, self._waiting = list(self._waiting), deque()
            running, self._running = self._running, []
        for run in running:
            self._close_session(run)
            if not run.job.cancelled:
                run.job.emit(Failed(error))
        for job in waiting:
            if not job.cancelled:
                job.emit(Failed(error))
