"""serve/batcher.py alone: coalescing, each job its own rows, failures kept to their job, draining on close."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from altclip_onnx.serve.batcher import Batcher, Closed


class Recorder:
    """A run function that records each call's inputs and returns rows derived from them (x -> [x, 2x])."""

    def __init__(self, delay: float = 0.0, fail_on: object = None) -> None:
        self.calls: list[list[int]] = []
        self.delay = delay
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, items: list[int]) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            self.calls.append(list(items))
        time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"bad input {self.fail_on}")
        values = np.asarray(items, dtype=np.float64)
        return np.stack([values, 2 * values], axis=1), values.astype(np.int64)


def test_concurrent_jobs_share_calls_and_get_their_own_rows() -> None:
    record = Recorder(delay=0.01)
    batcher = Batcher("test", record, max_batch=16, max_wait=0.05)

    async def main() -> list:
        jobs = [[10 * j + i for i in range(j % 3 + 1)] for j in range(40)]
        results = await asyncio.gather(*(batcher.submit(job) for job in jobs))
        return list(zip(jobs, results))

    try:
        for job, (rows, ids) in asyncio.run(main()):
            assert ids.tolist() == job
            assert rows.tolist() == [[x, 2 * x] for x in job]
    finally:
        batcher.close()
    assert max(len(call) for call in record.calls) > 1  # coalesced
    assert all(len(call) <= 16 for call in record.calls)  # never over max_batch
    assert sorted(x for call in record.calls for x in call) == sorted(10 * j + i for j in range(40) for i in range(j % 3 + 1))


def test_a_lone_request_waits_at_most_max_wait() -> None:
    batcher = Batcher("test", Recorder(), max_batch=8, max_wait=0.05)

    async def one() -> float:
        started = time.perf_counter()
        await batcher.submit([1])
        return time.perf_counter() - started

    try:
        assert asyncio.run(one()) < 0.5
    finally:
        batcher.close()


def test_big_requests_are_split_and_take_turns() -> None:
    record = Recorder()
    batcher = Batcher("test", record, max_batch=4, max_wait=0.0)

    async def main() -> list:
        return await batcher.submit_all(list(range(10)))

    try:
        parts = asyncio.run(main())
    finally:
        batcher.close()
    assert [p[1].tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(len(call) <= 4 for call in record.calls)


def test_a_failing_job_fails_alone() -> None:
    record = Recorder(delay=0.01, fail_on=13)
    batcher = Batcher("test", record, max_batch=32, max_wait=0.05)

    async def main() -> list:
        return await asyncio.gather(*(batcher.submit([i]) for i in range(10, 20)), return_exceptions=True)

    try:
        results = asyncio.run(main())
    finally:
        batcher.close()
    for i, result in zip(range(10, 20), results):
        if i == 13:
            assert isinstance(result, ValueError) and "bad input 13" in str(result)
        else:
            assert result[1].tolist() == [i]
    assert any(len(call) > 1 and 13 in call for call in record.calls)  # it did share a batch, then ran alone


def test_close_finishes_queued_jobs_then_refuses_new_ones() -> None:
    record = Recorder(delay=0.05)
    batcher = Batcher("test", record, max_batch=2, max_wait=0.0)

    async def main() -> tuple[list, BaseException | None]:
        tasks = [asyncio.ensure_future(batcher.submit([i])) for i in range(6)]
        await asyncio.sleep(0.01)
        closing = asyncio.get_running_loop().run_in_executor(None, batcher.close)
        await asyncio.sleep(0.01)
        refused = None
        try:
            await batcher.submit([99])
        except Closed as exc:
            refused = exc
        results = await asyncio.gather(*tasks)
        await closing
        return results, refused

    results, refused = asyncio.run(main())
    assert [r[1].tolist() for r in results] == [[i] for i in range(6)]
    assert isinstance(refused, Closed)
    assert batcher.closed


def test_cancelled_jobs_are_skipped() -> None:
    record = Recorder(delay=0.1)
    batcher = Batcher("test", record, max_batch=1, max_wait=0.0)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0.02)  # the worker is busy with it
        second = asyncio.ensure_future(batcher.submit([2]))
        await asyncio.sleep(0.01)
        second.cancel()
        await first

    try:
        asyncio.run(main())
    finally:
        batcher.close()
    assert [2] not in record.calls


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        Batcher("test", Recorder(), max_batch=0, max_wait=0)
    with pytest.raises(ValueError, match="max_wait"):
        Batcher("test", Recorder(), max_batch=1, max_wait=-1)


def test_a_lone_job_runs_at_once_when_nothing_is_arriving() -> None:
    record = Recorder()
    batcher = Batcher("test", record, max_batch=8, max_wait=2.0, arriving=lambda: 0)

    async def one() -> float:
        started = time.perf_counter()
        await batcher.submit([1])
        return time.perf_counter() - started

    try:
        assert asyncio.run(one()) < 0.5  # not the 2 s max_wait
    finally:
        batcher.close()


def test_a_job_waits_for_a_request_still_arriving() -> None:
    record = Recorder()
    arriving = [1]
    batcher = Batcher("test", record, max_batch=8, max_wait=2.0, arriving=lambda: arriving[0])

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0.2)
        arriving[0] = 0  # it arrives...
        second = asyncio.ensure_future(batcher.submit([2]))  # ...and submits
        await asyncio.gather(first, second)

    try:
        asyncio.run(main())
    finally:
        batcher.close()
    assert record.calls == [[1, 2]]


def test_arrivals_count_requests_until_they_submit() -> None:
    from altclip_onnx.serve.arrivals import Arrivals, current

    arrivals = Arrivals()
    with arrivals.request() as ticket:
        assert current() is ticket
        assert arrivals.waiting_for("textual") == arrivals.waiting_for("visual") == 1  # tower not known yet
        ticket.expect("visual")
        assert (arrivals.waiting_for("textual"), arrivals.waiting_for("visual")) == (0, 1)
        with arrivals.request():
            assert (arrivals.waiting_for("textual"), arrivals.waiting_for("visual")) == (1, 2)
        ticket.submitted("visual")
        ticket.submitted("visual")  # idempotent
        assert arrivals.waiting_for("visual") == 0
    with arrivals.request():
        pass  # a request that ended (e.g. refused) before submitting anything
    assert arrivals.waiting_for("textual") == arrivals.waiting_for("visual") == 0
    assert current() is None

