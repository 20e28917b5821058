"""Micro-batching: concurrent callers share one model call instead of queueing behind a lock.

Each caller submits a *job* (a list of items). Whoever holds the model lock runs every job that is
waiting as one call; callers whose job was run by someone else just pick up their results. Before
running, the leader collects: it waits one short window, and again as long as new jobs keep arriving
(up to ``max_wait_s`` in all), so a burst of callers that start together share one call even when
their arrivals are spread over a few milliseconds. No background thread is started: the callers themselves
take turns leading. Jobs are taken first come, first served, so every job eventually runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Job(Generic[T, R]):
    __slots__ = ("items", "results", "error", "done")

    def __init__(self, items: list[T]) -> None:
        self.items = items
        self.results: list[R] = []
        self.error: BaseException | None = None
        self.done = False


class MicroBatcher(Generic[T, R]):
    """Merge jobs from concurrent callers into one ``run`` call.

    Args:
        run: Processes a list of items and returns one result per item, in order.
        lock: The lock that guards the model (held while ``run`` executes).
        window_s: How long a leader waits for more callers before running, and again after each
            window in which new jobs arrived (0: take what is waiting, no waiting).
        max_items: Most items per ``run`` call (a single larger job still runs whole).
        max_wait_s: Longest a leader keeps collecting (default: 10 windows).

    Example:
        .. code-block:: python

            batcher = MicroBatcher(engine.generate_direct, lock=engine.lock, window_s=0.002)
            batcher.submit([request])  # from many threads at once: one generate call
    """

    def __init__(
        self,
        run: Callable[[list[T]], list[R]],
        *,
        lock: threading.RLock | None = None,
        window_s: float = 0.002,
        max_items: int = 32,
        max_wait_s: float | None = None,
    ) -> None:
        if window_s < 0 or max_items < 1 or (max_wait_s is not None and max_wait_s < 0):
            raise ValueError("window_s and max_wait_s must be >= 0 and max_items >= 1")
        self.run = run
        self.lock = lock or threading.RLock()
        self.window_s = window_s
        self.max_items = max_items
        self.max_wait_s = 10 * window_s if max_wait_s is None else max_wait_s
        self.calls = 0  # number of ``run`` calls made (for tests and benchmarks)
        self._pending: list[_Job[T, R]] = []
        self._pending_lock = threading.Lock()

    def submit(self, items: Sequence[T]) -> list[R]:
        """Process ``items``, possibly in one call together with other threads' items.

        Returns:
            One result per item, in order.

        Raises:
            Exception: Whatever ``run`` raised for this job (a failing merged call is retried job
                by job, so one caller's bad input never fails another caller).
        """
        job: _Job[T, R] = _Job(list(items))
        if not job.items:
            return []
        with self._pending_lock:
            self._pending.append(job)
        while not job.done:
            with self.lock:
                if job.done:
                    break
                self._collect()
                self._run(self._take())
        if job.error is not None:
            raise job.error
        return job.results

    def _pending_items(self) -> int:
        with self._pending_lock:
            return sum(len(job.items) for job in self._pending)

    def _collect(self) -> None:
        """Wait one window, then more windows while jobs keep arriving (bounded by ``max_wait_s``)."""
        if not self.window_s:
            return
        deadline = time.monotonic() + self.max_wait_s
        waiting = self._pending_items()
        while waiting < self.max_items:
            time.sleep(min(self.window_s, max(0.0, deadline - time.monotonic())))
            now_waiting = self._pending_items()
            if now_waiting == waiting or time.monotonic() >= deadline:
                return
            waiting = now_waiting

    def _take(self) -> list[_Job[T, R]]:
        with self._pending_lock:
            taken: list[_Job[T, R]] = []
            size = 0
            while self._pending and (not taken or size + len(self._pending[0].items) <= self.max_items):
                job = self._pending.pop(0)
                taken.append(job)
                size += len(job.items)
            return taken

    def _run(self, jobs: list[_Job[T, R]]) -> None:
        if not jobs:
            return
        try:
            self.calls += 1
            results = self.run([item for job in jobs for item in job.items])
        except BaseException as err:
            if len(jobs) == 1:
                self._finish(jobs[0], error=err)
                return
            for job in jobs:  # find whose input failed: each job alone
                try:
                    self.calls += 1
                    self._finish(job, results=self.run(job.items))
                except BaseException as job_err:
                    self._finish(job, error=job_err)
            return
        start = 0
        for job in jobs:
            self._finish(job, results=results[start : start + len(job.items)])
            start += len(job.items)

    @staticmethod
    def _finish(job: _Job[T, R], results: list[R] | None = None, error: BaseException | None = None) -> None:
        job.results = results or []
        job.error = error
        job.done = True
