"""Generation off the event loop: one thread runs every request, a token of each in turn.

The server's event loop only moves bytes; a torch forward pass on it would stall every other
client. The worker thread takes jobs from a queue and keeps up to `slots` of them active, giving
each active stream one step (one token, or the prompt's prefill) in turn, so eight clients see
their first tokens together instead of one after another. Batching the streams into one forward
pass would use the CPU better, but needs a cache whose rows sit at different positions; one row at
a time keeps each request's result exactly what it would be alone (its own cache, its own seeded
generator), which the tests check.

Each job owns a `Context` while it runs; finished contexts go back to a pool, and a new job takes
the one holding the longest prefix of its prompt (the whole conversation so far, when a client
sends the next turn of it), so it prefills only what is new. A job whose client went away is
cancelled: the engine stops at its next token and the slot goes to the next job.
"""

from __future__ import annotations

import asyncio
import queue
import threading

from scratchllm.chat.engine import Context, Engine, Sampling, Stream
from scratchllm.util.log import get_logger

logger = get_logger(__name__)

DONE = object()  # posted after the last piece of a job


class Job:
    """One request: its prompt and settings in, its pieces out on an asyncio queue."""

    def __init__(self, prompt: list[int], params: Sampling, loop: asyncio.AbstractEventLoop):
        self.prompt, self.params, self.loop = prompt, params, loop
        self.out: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.stream: Stream | None = None
        self.error: Exception | None = None

    def post(self, item) -> None:
        """Hand an item to the request's coroutine (from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the event loop is gone: the server is shutting down
            self.cancelled.set()

    def cancel(self) -> None:
        """Stop generating for this job (its client went away)."""
        self.cancelled.set()


class Worker:
    """The thread that runs every job, `slots` at a time, a token of each in turn."""

    def __init__(self, engine: Engine, slots: int = 8):
        self.engine, self.slots = engine, slots
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.active: list[tuple[Job, object]] = []
        self.pool: list[Context] = []
        self.tokens = 0  # generated since start, for /health
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="generation", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job; its pieces arrive on job.out, then DONE."""
        self.jobs.put(job)

    def stop(self) -> None:
        """Cancel everything and end the thread."""
        self.stopping = True
        for job, _ in self.active:
            job.cancel()
        self.jobs.put(None)  # type: ignore[arg-type]  # wakes the thread
        self.thread.join(timeout=10)

    def status(self) -> dict:
        """Active and waiting jobs, tokens generated so far."""
        return {"active": len(self.active), "waiting": self.jobs.qsize(), "tokens_generated": self.tokens}

    def _context_for(self, prompt: list[int]) -> Context:
        """The pooled context holding the longest prefix of prompt, or a new one."""
        def shared(ctx: Context) -> int:
            n = 0
            for a, b in zip(ctx.ids, prompt, strict=False):
                if a != b:
                    break
                n += 1
            return n

        if not self.pool:
            return Context(self.engine.model)
        best = max(self.pool, key=shared)
        self.pool.remove(best)
        return best

    def _admit(self, block: bool) -> None:
        while len(self.active) < self.slots:
            try:
                job = self.jobs.get(block=block and not self.active)
            except queue.Empty:
                return
            if job is None or self.stopping:
                return
            if job.cancelled.is_set():
                job.post(DONE)
                continue
            context = self._context_for(job.prompt)
            try:
                job.stream = Stream(self.engine, context, job.prompt, job.params, job.cancelled.is_set)
            except ValueError as e:  # the server checks first; this keeps the thread alive regardless
                self.pool.append(context)
                job.error = e
                job.post(DONE)
                continue
            self.active.append((job, iter(job.stream)))

    def _loop(self) -> None:
        while not self.stopping:
            self._admit(block=True)
            for entry in list(self.active):
                self._step(*entry)

    def _step(self, job: Job, pieces) -> None:
        """One token (or the prefill) of a job; it leaves the active list when it ends."""
        assert job.stream is not None
        before = len(job.stream.ids)
        try:
            piece = next(pieces)
        except StopIteration:
            piece = None
        except Exception as e:  # a bug must cost one request, not the server
            logger.warning("generation failed: %s: %s", type(e).__name__, e)
            job.error, piece = e, None
        self.tokens += len(job.stream.ids) - before
        if piece is not None:
            job.post(piece)
            return
        self.active.remove((job, pieces))
        self.pool.append(job.stream.context)
        if len(self.pool) > self.slots:  # the least recently used context goes
            self.pool.pop(0)
        if job.stream.finish_reason == "cancelled":
            logger.info("request cancelled after %d tokens (its client went away)", len(job.stream.ids))
        job.post(DONE)


