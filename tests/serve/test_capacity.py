"""The request deadline, the bounded render pool and the header guard, without Ray."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from deepsynth.serving.capacity import Deadline, RenderPool
from deepsynth.serving.guard import HeaderLimits, RequestGuard
from deepsynth.serving.schemas import ServingError


def _pages(deadline: Deadline, drawn: list[int], stopped: threading.Event, pages: int = 1000) -> None:
    """A renderer that checks the deadline before each page, as draw_pages and load_document do."""
    try:
        for page in range(pages):
            deadline.check()
            drawn.append(page)
            time.sleep(0.01)
    finally:
        stopped.set()


@pytest.mark.parametrize("ending", ["deadline", "client left"])
def test_a_request_past_its_deadline_or_whose_client_left_stops_its_renderer_at_the_next_page(ending):
    async def scenario():
        pool = RenderPool(workers=1, queue=0, retry_after_s=3)
        deadline = Deadline.after(0.2 if ending == "deadline" else 60)
        drawn, stopped = [], threading.Event()
        started = time.monotonic()
        task = asyncio.ensure_future(pool.run(lambda: _pages(deadline, drawn, stopped), deadline))
        if ending == "deadline":
            with pytest.raises(ServingError) as err:
                await task
            assert err.value.status == 504
        else:
            await asyncio.sleep(0.2)
            task.cancel()  # what Serve does to a request whose client left
            with pytest.raises(asyncio.CancelledError):
                await task
        assert time.monotonic() - started < 0.5
        # About 20 pages of 10 ms in 0.2 s; an unstopped renderer would draw all 1000.
        assert await asyncio.to_thread(stopped.wait, 1.0) and len(drawn) < 40
        await asyncio.sleep(0.05)
        assert pool.pending == 0

    asyncio.run(scenario())


def test_a_full_pool_answers_503_with_retry_after_at_once():
    async def scenario():
        pool = RenderPool(workers=1, queue=1, retry_after_s=3)
        release = threading.Event()
        deadline = Deadline.after(60)
        busy = [asyncio.ensure_future(pool.run(lambda: release.wait(5), deadline)) for _ in range(2)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(ServingError) as err:
            await pool.run(lambda: None, deadline)
        assert (err.value.status, err.value.headers) == (503, {"Retry-After": "3"})
        assert time.monotonic() - started < 0.1
        release.set()
        assert await asyncio.gather(*busy) == [True, True]
        assert await pool.run(lambda: "rendered", deadline) == "rendered"

    asyncio.run(scenario())


def test_the_deadline_uses_the_injected_clock():
    now = [100.0]
    deadline = Deadline.after(5, clock=lambda: now[0])
    deadline.check()
    now[0] = 104.5
    assert deadline.remaining() == pytest.approx(0.5)
    now[0] = 105.0
    with pytest.raises(ServingError, match="limit of 5 s"):
        deadline.check()


def test_the_guard_drops_the_headers_that_steer_serves_proxy():
    guard = RequestGuard(None)
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["headers"])

    guard.app = app
    headers = [(b"x-request-timeout-seconds", b"0.001"), (b"X-Request-Disconnect-Disabled", b"?1"), (b"a", b"b")]
    asyncio.run(guard({"type": "http", "headers": headers}, None, None))
    assert seen == [[(b"a", b"b")]]


@pytest.mark.parametrize("headers", [[(b"x", b"y" * 2000)], [(b"h%d" % i, b"v") for i in range(6)]])
def test_the_guard_answers_431_to_too_many_or_too_large_headers(headers):
    sent = []

    async def app(scope, receive, send):
        raise AssertionError("the app must not see the request")

    async def send(message):
        sent.append(message)

    guard = RequestGuard(app, HeaderLimits(max_headers=5, max_header_bytes=1000))
    asyncio.run(guard({"type": "http", "headers": headers}, None, send))
    assert sent[0]["status"] == 431 and b"headers_too_large" in sent[1]["body"]
