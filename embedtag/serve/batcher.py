"""Micro-batching: requests from the event loop, model calls on ONE worker thread.

A request hands over a :class:`Job` (its windows and what to do with the model's answer) and awaits it. The
worker takes the first waiting job, waits up to ``max_wait_s`` for more (until ``max_batch`` windows), makes one
model call per model for all of them (:meth:`embedtag.frames.FrameScorer.run_windows`; a head and an index that
share a backbone share the call), then finishes each job (pooling, head, index search) and wakes its request.
The event loop never runs the model, and only one thread ever touches it (a GPU, or the CPU's threads, serve
one batch at a time).

Backbones are batch-invariant (row ``i`` depends on window ``i`` alone; see ``backbones/base.py``), so a request
gets the same answer alone or batched with others, up to float rounding of the kernels (~1e-7).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from embedtag.frames import FrameScorer, WindowOutput


class Overloaded(Exception):
    """The queue is full: the caller should answer 503 with Retry-After."""


@dataclass
class Job:
    """Windows of one request, the scorer that runs them, and ``finish(output) -> result`` (called on the worker
    thread with this job's rows of the model output)."""

    scorer: FrameScorer
    windows: Sequence[np.ndarray]
    finish: Callable[[WindowOutput], object]
    future: asyncio.Future | None = None
    loop: asyncio.AbstractEventLoop | None = None
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return max(1, len(self.windows))


def _model_key(scorer: FrameScorer) -> int:
    return id(scorer.backbone if scorer.backbone is not None else scorer.predictor)


class MicroBatcher:
    """Collects jobs into shared model calls on one daemon thread (started on the first job).

    ``max_batch``: windows per model call (a job with more windows runs alone); ``max_wait_s``: how long the
    worker waits for company after the first job arrives; ``max_queue``: jobs waiting at most, beyond which
    :meth:`submit` raises :class:`Overloaded`. ``on_batch(n_jobs, n_windows, seconds)`` is called after each call.
    ``in_flight()``, when given, counts the requests admitted upstream (uploading, decoding, queued or running):
    the worker only waits for company when some of them are not in the batch yet, so a lone request pays no wait.
    """

    def __init__(self, *, max_batch: int = 32, max_wait_s: float = 0.005, max_queue: int = 64,
                 on_batch: Callable[[int, int, float], None] | None = None,
                 in_flight: Callable[[], int] | None = None):
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_s >= 0")
        self.max_batch, self.max_wait_s, self.max_queue = int(max_batch), float(max_wait_s), int(max_queue)
        self.on_batch, self.in_flight = on_batch, in_flight
        self._queue: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def depth(self) -> int:
        """Jobs waiting for the worker."""
        return len(self._queue)

    async def submit(self, job: Job):
        """Queue ``job`` and wait for its result (the exception ``finish`` or the model raised, re-raised here)."""
        loop = asyncio.get_running_loop()
        job.loop, job.future = loop, loop.create_future()
        with self._cv:
            if self._stopping:
                raise Overloaded("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise Overloaded(f"{len(self._queue)} requests are already waiting")
            self._queue.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="embedtag-serve-model", daemon=True)
                self._thread.start()
            self._cv.notify()
        return await job.future

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish the jobs already queued, then stop the worker."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # ------------------------------------------------------------------ worker thread
    def _take(self) -> list[Job] | None:
        with self._cv:
            while not self._queue:
                if self._stopping:
                    return None
                self._cv.wait()
            batch = [self._queue.popleft()]
            n = batch[0].size
            deadline = time.monotonic() + self.max_wait_s
            while n < self.max_batch:
                if not self._queue:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._stopping or (self.in_flight is not None and
                                                       self.in_flight() <= len(batch)):
                        break
                    self._cv.wait(left)
                    continue
                if n + self._queue[0].size > self.max_batch:
                    break
                job = self._queue.popleft()
                batch.append(job)
                n += job.size
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            start = time.perf_counter()
            results = self._run(batch)
            if self.on_batch is not None:
                try:
                    self.on_batch(len(batch), sum(len(j.windows) for j in batch), time.perf_counter() - start)
                except Exception:  # noqa: BLE001, S110 - metrics must never take the worker down
                    pass
            for job, res in zip(batch, results):
                job.loop.call_soon_threadsafe(_deliver, job.future, res)

    @staticmethod
    def _run(batch: list[Job]) -> list[object]:
        """One model call per model for the whole batch, then each job's ``finish``; a failure is the result of
        the jobs it concerns, never of the others."""
        results: list[object] = [None] * len(batch)
        groups: dict[int, list[int]] = {}
        for i, job in enumerate(batch):
            groups.setdefault(_model_key(job.scorer), []).append(i)
        for idx in groups.values():
            windows = [w for i in idx for w in batch[i].windows]
            try:
                out = batch[idx[0]].scorer.run_windows(windows)
            except BaseException as exc:  # noqa: BLE001 - handed to the requests, which answer 500
                for i in idx:
                    results[i] = exc
                continue
            pos = 0
            for i in idx:
                n = len(batch[i].windows)
                try:
                    results[i] = batch[i].finish(out.take(slice(pos, pos + n)))
                except BaseException as exc:  # noqa: BLE001
                    results[i] = exc
                pos += n
        return results


def _deliver(future: asyncio.Future, result: object) -> None:
    if future.done():  # the request went away (client disconnected)
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
