"""Concurrent requests to one model run as one batch (TF Serving's batching), each call timed
into TF Serving's metrics and KServe's ``reszoo_batch_size`` histogram."""

import asyncio
import collections
import time

import numpy as np
from prometheus_client import Histogram

from serving import tf_serving_metrics as tfs_metrics

BATCH_SIZES = Histogram("reszoo_batch_size", "Images per model call", ["model"],
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128))


class Batcher:
    """Runs concurrent requests to one model as one batch of at most ``max_batch_size`` images:
    a request to an idle model runs at once, and whatever queues while the model is busy goes in
    its next call; ``timeout_s`` > 0 waits that long for more first (TF Serving's
    ``batch_timeout_micros``). A call no larger than the version's last one, which took under
    ``INLINE_S``, runs on the event loop itself: the hop to a worker thread and back would cost
    as much as the call (a larger one could hold the loop, and every deadline, for seconds)."""

    INLINE_S = 0.001

    def __init__(self, name, max_batch_size, timeout_s):
        self.name, self.max_batch_size, self.timeout_s = name, max_batch_size, timeout_s
        self._pending = collections.deque()
        self._busy = False

    async def run(self, version, pixels):
        loop = asyncio.get_running_loop()
        if self.max_batch_size <= 1 or not self._busy:
            return await self._alone(loop, version, pixels)
        answer = loop.create_future()
        self._pending.append((version, pixels, answer, time.perf_counter()))
        return await answer

    def _timed(self, version, pixels):
        start = time.perf_counter()
        out = version.run(pixels)
        version.last_call = (time.perf_counter() - start, len(pixels))
        tfs_metrics.runtime(self.name, version.runtime, version.last_call[0])
        return out

    def _inline(self, version, pixels):
        last = version.last_call
        return last is not None and last[0] < self.INLINE_S and len(pixels) <= last[1]

    async def _run(self, loop, version, pixels):
        if self._inline(version, pixels):
            return self._timed(version, pixels)
        return await loop.run_in_executor(None, self._timed, version, pixels)

    async def _alone(self, loop, version, pixels):
        """The fast path: the model is idle (or batching is off), so this request runs by itself.
        The model stays busy until its call ends, even when the request gave up first."""
        BATCH_SIZES.labels(self.name).observe(len(pixels))
        tfs_metrics.queued(self.name, 0.0)
        if self.max_batch_size <= 1:
            return await self._run(loop, version, pixels)
        self._busy = True
        if self._inline(version, pixels):
            try:
                return self._timed(version, pixels)
            finally:
                self._free(loop)
        call = loop.run_in_executor(None, self._timed, version, pixels)
        call.add_done_callback(lambda done: self._free(loop, done))
        return await asyncio.shield(call)

    def _free(self, loop, call=None):
        """The model's call has ended: the queue's next batch runs, or the batcher is idle."""
        if call is not None and not call.cancelled():
            call.exception()  # retrieved: a request past its deadline hears no more of it
        if self._pending:
            loop.create_task(self._drain(loop))
        else:
            self._busy = False

    async def _drain(self, loop):
        try:
            while self._pending:
                if self.timeout_s and sum(len(item[1]) for item in self._pending) < self.max_batch_size:
                    await asyncio.sleep(self.timeout_s)
                while self._pending and self._pending[0][2].done():  # given up (past its deadline)
                    self._pending.popleft()
                if not self._pending:
                    break
                version, group, rows = self._pending[0][0], [], 0
                while self._pending and self._pending[0][0] is version and (
                        not group or rows + len(self._pending[0][1]) <= self.max_batch_size):
                    group.append(self._pending.popleft())
                    rows += len(group[-1][1])
                await self._call(loop, group, rows)
        finally:
            self._busy = False

    async def _call(self, loop, group, rows):
        version = group[0][0]
        pixels = group[0][1] if len(group) == 1 else np.concatenate([item[1] for item in group])
        BATCH_SIZES.labels(self.name).observe(rows)
        now = time.perf_counter()
        for *_, queued_at in group:
            tfs_metrics.queued(self.name, now - queued_at)
        try:
            out = await self._run(loop, version, pixels)
        except Exception as err:  # every waiting request hears of it; the batcher goes on
            for _, _, answer, _ in group:
                if not answer.done():
                    answer.set_exception(err)
            return
        start = 0
        for _, part, answer, _ in group:
            if not answer.done():
                answer.set_result({k: v[start:start + len(part)] for k, v in out.items()})
            start += len(part)
