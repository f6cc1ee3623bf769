"""Dynamic batching: concurrent requests' inputs coalesced into one model call, run off the event loop.

A :class:`Batcher` owns one worker thread. Requests :meth:`~Batcher.submit` their inputs (a *job*) from
the event loop and await their own rows. The worker takes the oldest job, then more jobs as long as the
batch stays within ``max_batch`` inputs, waiting at most ``max_wait`` seconds for them (jobs already
queued are taken at once; with ``arriving``, a count of requests still on their way, it waits only while
that is above zero), and calls ``run`` once on all their inputs. Each job gets back exactly the
rows of its own inputs, in order. If ``run`` fails on a batch of several jobs, each job is run again
alone, so a failure belongs only to the job that caused it.

The batcher knows nothing about models or precisions: ``run`` maps a list of inputs to results with
one row per input (an array, a list, or a tuple of those, sliced alike).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Closed(RuntimeError):
    """The batcher was closed: the service is shutting down."""


class Expired(RuntimeError):
    """The job's deadline passed while it waited: it was dropped before reaching the model."""


class BatchObserver(Protocol):
    """What a batcher reports (see :class:`~altclip_onnx.serve.metrics.Metrics`)."""

    def batch(self, name: str, size: int, jobs: int, seconds: float) -> None: ...

    def queued(self, name: str, depth: int) -> None: ...


@dataclass
class _Job:
    items: Sequence[Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    deadline: float | None = None  # time.monotonic() after which the job is dropped, not run
    queued_at: float = field(default_factory=time.perf_counter)




class Batcher:
    """Coalesce concurrent jobs into calls of ``run(items) -> rows`` in one worker thread.

    ``max_batch``: most inputs per call (a job larger than that runs alone; split big requests first, see
    :meth:`submit_all`). ``max_wait``: seconds the worker waits for more jobs once it has one; ``arriving``:
    how many requests may still bring jobs (see :mod:`.arrivals`; call :meth:`wake` when it drops), None to
    always wait ``max_wait``.
    """

    def __init__(self, name: str, run: Callable[[list[Any]], Any], *, max_batch: int, max_wait: float,
                 observer: BatchObserver | None = None, arriving: Callable[[], int] | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be 0 or more, not {max_wait}")
        self.name = name
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._run = run
        self._observer = observer
        self._arriving = arriving
        self._jobs: deque[_Job] = deque()
        self._depth = 0  # inputs waiting
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=f"altclip-{name}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"Batcher({self.name!r}, max_batch={self.max_batch}, max_wait={self.max_wait}, depth={self.depth})"

    @property
    def depth(self) -> int:
        """Inputs waiting for the model."""
        return self._depth

    @property
    def closed(self) -> bool:
        return self._closed

    async def submit(self, items: Sequence[Any], deadline: float | None = None) -> Any:
        """The rows of ``run`` for ``items``, computed in a batch with other jobs; :class:`Expired` if
        ``deadline`` (time.monotonic()) passes before the job reaches the model."""
        if not items:
            raise ValueError("a job needs at least one input")
        loop = asyncio.get_running_loop()
        job = _Job(items, loop.create_future(), loop, deadline)
        with self._cond:
            if self._closed:
                raise Closed(f"{self.name}: shutting down")
            self._jobs.append(job)
            self._depth += len(items)
            self._cond.notify()
        self._report_depth()
        return await job.future

    async def submit_all(self, items: Sequence[Any], deadline: float | None = None) -> list[Any]:
        """Like :meth:`submit` for any number of inputs: jobs of at most ``max_batch`` inputs, so a big
        request takes turns with others instead of holding the model; returns each job's rows in order."""
        chunks = [items[i : i + self.max_batch] for i in range(0, len(items), self.max_batch)]
        tasks = [asyncio.ensure_future(self.submit(chunk, deadline)) for chunk in chunks]
        try:
            return list(await asyncio.gather(*tasks))
        finally:  # one part failed (or the request went away): the others are not wanted, the model skips them
            for task in tasks:
                if not task.done():
                    task.cancel()

    def wake(self) -> None:
        """Tell a waiting worker to look again (fewer requests are arriving)."""
        with self._cond:
            self._cond.notify()

    def close(self, timeout: float | None = None) -> None:
        """Run every job already submitted, then stop the worker (refusing new jobs from now on)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    # --- the worker ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:  # closed, and everything submitted has run
                    return
                jobs = [self._jobs.popleft()]
                size = len(jobs[0].items)
                deadline = time.monotonic() + self.max_wait
                while size < self.max_batch:
                    if self._jobs:
                        if size + len(self._jobs[0].items) > self.max_batch:
                            break  # it starts the next batch
                        job = self._jobs.popleft()
                        jobs.append(job)
                        size += len(job.items)
                        continue
                    remaining = deadline - time.monotonic()
                    if self._closed or remaining <= 0 or (self._arriving is not None and self._arriving() <= 0):
                        break  # time is up, or no request is on its way: run what there is
                    self._cond.wait(remaining)
                self._depth -= size
            self._report_depth()
            now = time.monotonic()
            for job in jobs:
                if job.deadline is not None and now > job.deadline:
                    _settle(job, None, Expired(f"{self.name}: the deadline passed while the job waited"))
            self._execute([job for job in jobs if not job.future.cancelled()
                           and (job.deadline is None or now <= job.deadline)])

    def _execute(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        items = [item for job in jobs for item in job.items]
        started = time.perf_counter()
        try:
            results = self._run(items)
        except BaseException as exc:  # noqa: BLE001 - handed to the requests, never lost in this thread
            if len(jobs) > 1:
                log.debug("%s: a batch of %d jobs failed (%s); running each alone", self.name, len(jobs), exc)
                for job in jobs:
                    self._execute([job])
                return
            _settle(jobs[0], None, exc)
            return
        seconds = time.perf_counter() - started
        if self._observer is not None:
            self._observer.batch(self.name, len(items), len(jobs), seconds)
        start = 0
        for job in jobs:
            end = start + len(job.items)
            _settle(job, _rows(results, start, end), None)
            start = end

    def _report_depth(self) -> None:
        if self._observer is not None:
            self._observer.queued(self.name, self._depth)


def _rows(results: Any, start: int, end: int) -> Any:
    if isinstance(results, tuple):
        return tuple(part[start:end] for part in results)
    return results[start:end]


def _settle(job: _Job, result: Any, error: BaseException | None) -> None:
    def settle() -> None:
        if job.future.done():  # the request went away (client disconnected)
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the event loop is closed: nobody is waiting any more
        pass
