"""Bounded work per request: the deadline it runs under, and the render pool it waits for.

A `Deadline` starts when a request arrives and covers everything the server does for it: reading
the body, rendering or decoding its pages and the model's generation. Rendering runs on a
`RenderPool`, a fixed set of threads with a bounded wait: a request that finds it full is refused
at once with 503 and `Retry-After` rather than queued without end. Threads cannot be killed, so
cancelling is cooperative: the renderer calls `Deadline.check` before each page, which raises once
the deadline passed or the request was cancelled (its client left), and the thread stops there.

    deadline = Deadline.after(config.request_timeout_s)
    pages = await pool.run(lambda: text_pages(text, layout, config, check, deadline.check), deadline)
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from deepsynth.serving.schemas import ServingError

T = TypeVar("T")


@dataclass
class Deadline:
    """When a request's time is up; `check` raises 504 past it, or once `cancel` was called."""

    expires: float
    """`clock()` value at which the request's time is up."""
    limit_s: float
    """The server's limit, for the message."""
    clock: Callable[[], float] = time.monotonic
    cancelled: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(expires=clock() + seconds, limit_s=seconds, clock=clock)

    def remaining(self) -> float:
        """Seconds left; none once cancelled."""
        return 0.0 if self.cancelled.is_set() else max(self.expires - self.clock(), 0.0)

    def cancel(self) -> None:
        """Stop the work at its next check (thread-safe)."""
        self.cancelled.set()

    def check(self) -> None:
        """Raise the request's 504 if its time is up or it was cancelled; renderers call this before each page."""
        if self.cancelled.is_set() or self.clock() >= self.expires:
            raise self.expired()

    def expired(self) -> ServingError:
        return ServingError(504, "timeout", f"The request took longer than this server's limit of {self.limit_s:g} s; "
                            "send a shorter document or fewer max_new_tokens, or retry later.")


class RenderPool:
    """`workers` threads for rendering and decoding, and room for `queue` requests waiting for one."""

    def __init__(self, workers: int, queue: int, retry_after_s: int) -> None:
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="render")
        self.capacity = workers + queue
        self.retry_after_s = retry_after_s
        self.pending = 0
        """Tasks submitted and not finished; a cancelled request's task counts until its thread stops."""

    async def run(self, work: Callable[[], T], deadline: Deadline) -> T:
        """`work()` on a render thread, within `deadline`; 503 at once when the pool and its queue are full.

        Past the deadline, or if the caller is cancelled (Serve cancels a request whose client left), the
        deadline is cancelled so the thread stops at its next page, and the caller is answered at once.
        """
        if self.pending >= self.capacity:
            raise ServingError(503, "overloaded", "The server is at capacity (every renderer is busy); retry after "
                               "the Retry-After delay.", {"Retry-After": str(self.retry_after_s)})
        self.pending += 1
        future = asyncio.get_running_loop().run_in_executor(self.executor, work)
        future.add_done_callback(self._finished)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=deadline.remaining())
        except TimeoutError:
            deadline.cancel()
            raise deadline.expired() from None
        except asyncio.CancelledError:
            deadline.cancel()
            raise

    def _finished(self, future: asyncio.Future) -> None:
        self.pending -= 1
        if not future.cancelled():
            future.exception()  # retrieved, so a stopped task's 504 is not logged as never retrieved
