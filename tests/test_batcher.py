"""serving.batcher in one event loop, on a stand-in for a version whose call takes as long as a
test needs: what runs together, what runs where, and what a deadline takes out of the queue."""

import asyncio
import threading
import time

import numpy as np
import pytest

from serving.batcher import Batcher
from serving.protocol import DeadlineExceeded, within_deadline


class Version:
    """A servable's ``run``: sleeps ``seconds``, records each call's images and its thread."""

    runtime, last_call = "stand-in", None

    def __init__(self, seconds):
        self.seconds, self.calls = seconds, []

    def run(self, pixels):
        self.calls.append((len(pixels), threading.current_thread() is threading.main_thread()))
        time.sleep(self.seconds)
        return {"logits": pixels.reshape(len(pixels), -1)[:, :1] * 2}


def _rows(n, value=0.0):
    return np.full((n, 2, 2, 1), value, "float32")


def test_requests_queued_behind_a_busy_model_run_as_one_batch_and_each_gets_its_rows():
    async def go():
        batcher, version = Batcher("m", max_batch_size=32, timeout_s=0), Version(0.2)
        first = asyncio.ensure_future(batcher.run(version, _rows(1, 1)))
        await asyncio.sleep(0.05)
        queued = asyncio.gather(*[batcher.run(version, _rows(n, n)) for n in (2, 3, 4)])
        return version, await first, await queued

    version, first, queued = asyncio.run(go())
    assert [rows for rows, _ in version.calls] == [1, 9]
    assert first["logits"].tolist() == [[2.0]]
    assert [answer["logits"].ravel().tolist() for answer in queued] == [[4.0] * 2, [6.0] * 3, [8.0] * 4]


def test_a_batch_holds_at_most_max_batch_size_images():
    async def go():
        batcher, version = Batcher("m", max_batch_size=5, timeout_s=0), Version(0.1)
        first = asyncio.ensure_future(batcher.run(version, _rows(1)))
        await asyncio.sleep(0.05)
        await asyncio.gather(first, *[batcher.run(version, _rows(2)) for _ in range(4)])
        return version

    assert [rows for rows, _ in asyncio.run(go()).calls] == [1, 4, 4]


def test_a_request_past_its_deadline_gives_up_its_place_in_the_queue():
    """TF Serving's deadline: the queued requests are answered DeadlineExceeded at their deadline,
    while the call ahead of them still runs, and the model never runs them."""
    async def go():
        batcher, version = Batcher("m", max_batch_size=32, timeout_s=0), Version(0.5)
        started = time.perf_counter()
        first = asyncio.ensure_future(within_deadline(batcher.run(version, _rows(1)), 0.1))
        await asyncio.sleep(0.02)
        queued = [within_deadline(batcher.run(version, _rows(1)), 0.1) for _ in range(3)]
        answers = await asyncio.gather(first, *queued, return_exceptions=True)
        answered_s = time.perf_counter() - started
        await asyncio.sleep(0.6)  # the first call ends; the queue is drained
        return version, answers, answered_s

    version, answers, answered_s = asyncio.run(go())
    assert all(isinstance(answer, DeadlineExceeded) for answer in answers), answers
    assert answered_s < 0.4  # not after the 0.5 s call
    assert [rows for rows, _ in version.calls] == [1]


@pytest.mark.parametrize("rows, inline", [(4, True), (5, False)])
def test_only_a_call_no_larger_than_a_fast_last_one_runs_on_the_event_loop(rows, inline):
    """A larger call could hold the event loop, and every deadline with it, for seconds."""
    version = Version(0)
    version.last_call = (0.0001, 4)
    asyncio.run(Batcher("m", max_batch_size=32, timeout_s=0).run(version, _rows(rows)))
    assert version.calls == [(rows, inline)]
    assert version.last_call[1] == rows


def test_a_slow_last_call_sends_the_next_to_a_worker_thread():
    version = Version(0)
    version.last_call = (0.5, 100)
    asyncio.run(Batcher("m", max_batch_size=32, timeout_s=0).run(version, _rows(1)))
    assert version.calls == [(1, False)]
