"""Admission control and deadlines: how much work the service takes on, and how long a request may wait.

- A :class:`Gate` per tower counts the inputs admitted (from admission until their results are back). A
  request is refused at once, 429 ``overloaded`` with a ``Retry-After``, when its inputs would take the count
  over ``max_inputs``, or when the work ahead of it would take, at the tower's measured speed (seconds per
  input, from its model calls and, for images, decoding), longer than ``max_seconds`` or than its own
  deadline. A tower with nothing admitted admits any request, so one request never waits for itself.
- :class:`HeldBytes` counts the request bodies being held in memory; a large body that would take it over
  its bound is refused from its Content-Length, before it is read.
- Every request has a deadline (:func:`deadline`): work whose deadline passed while it waited is dropped
  before it reaches the model (see :class:`~.batcher.Batcher`), and the request gets a 504.

Everything here runs on the event loop, except :meth:`Gate.observe` (worker threads: one float written).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from .errors import ApiError

_deadline: ContextVar[float | None] = ContextVar("altclip_deadline", default=None)
_SMOOTHING = 0.2  # weight of the newest measurement in the running mean of seconds per input


def overloaded(message: str, retry_after: float) -> ApiError:
    seconds = max(1, math.ceil(retry_after))
    return ApiError(429, f"{message}; retry after {seconds} s", code="overloaded", type="server_error",
                    headers={"Retry-After": str(seconds)})


def expired(where: str) -> ApiError:
    return ApiError(504, f"the request's deadline passed while it waited for the {where}; send it again later or "
                    "give it more time (header X-Request-Timeout: SECONDS)", code="deadline_exceeded",
                    type="server_error")


def deadline() -> float | None:
    """The current request's deadline (time.monotonic()), None outside a request."""
    return _deadline.get()


def remaining() -> float | None:
    at = _deadline.get()
    return None if at is None else at - time.monotonic()


@contextlib.contextmanager
def deadline_in(seconds: float) -> Iterator[None]:
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


class Gate:
    """One tower's admitted inputs, bounded in count (``max_inputs``) and in seconds of measured work
    (``max_seconds``); see the module docstring."""

    def __init__(self, name: str, *, max_inputs: int, max_seconds: float, parallel: int = 1,
                 on_idle: Callable[[], None] | None = None) -> None:
        self.name = name
        self._on_idle = on_idle  # called when the last admitted inputs are done
        self.max_inputs = max_inputs
        self.max_seconds = max_seconds
        self.admitted = 0
        self._per_input: float | None = None  # model seconds per input (running mean), None until measured
        self._decode: float | None = None  # decoding seconds per input, divided among ``parallel`` threads
        self._parallel = parallel

    def observe(self, inputs: int, seconds: float) -> None:
        """A model call of ``inputs`` took ``seconds``."""
        self._per_input = _mean(self._per_input, seconds / max(1, inputs))

    def observe_decode(self, seconds: float) -> None:
        """One input took ``seconds`` to decode (in one of ``parallel`` threads)."""
        self._decode = _mean(self._decode, seconds / self._parallel)

    @property
    def seconds_per_input(self) -> float | None:
        if self._per_input is None:
            return None
        return self._per_input + (self._decode or 0.0)

    def wait(self, inputs: int = 0) -> float:
        """Seconds the admitted inputs (and ``inputs`` more) take at the measured speed (0 before any)."""
        return (self.admitted + inputs) * (self.seconds_per_input or 0.0)

    def retry_after(self) -> float:
        return self.wait()

    def check(self, inputs: int) -> None:
        """Raise the 429 that :meth:`admit` would raise for ``inputs`` now, without holding anything."""
        if self.admitted:
            if self.admitted + inputs > self.max_inputs:
                raise overloaded(f"the {self.name} model has {self.admitted:,} inputs in hand, at most "
                                 f"{self.max_inputs:,}", self.retry_after())
            wait, left = self.wait(inputs), remaining()
            limit = self.max_seconds if left is None else min(self.max_seconds, left)
            if wait > limit:
                raise overloaded(f"the {self.name} model has {wait:.1f} s of work in hand, more than "
                                 f"{limit:.1f} s", self.retry_after())

    @contextlib.contextmanager
    def admit(self, inputs: int) -> Iterator[None]:
        """Hold ``inputs`` of this tower's capacity for the block, or raise the 429 that refuses them."""
        self.check(inputs)
        self.admitted += inputs
        try:
            yield
        finally:
            self.admitted -= inputs
            if not self.admitted and self._on_idle is not None:
                self._on_idle()


class HeldBytes:
    """Bytes of request bodies held at once, bounded by ``max_bytes``; bodies up to ``small`` bytes are not
    counted (a text request or a search never waits behind image uploads)."""

    def __init__(self, max_bytes: int, small: int = 64 * 1024) -> None:
        self.max_bytes = max_bytes
        self.small = small
        self.held = 0

    def take(self, size: int, retry_after: Callable[[], float]) -> int:
        """Count a body of ``size`` bytes as held (give back what this returns), or raise the 429 refusing it."""
        if size <= self.small:
            return 0
        if self.held and self.held + size > self.max_bytes:
            mb = 1024 * 1024
            raise overloaded(f"the service holds {self.held / mb:.0f} MB of request bodies, at most "
                             f"{self.max_bytes / mb:.0f} MB (--max-held-mb)", retry_after())
        self.held += size
        return size

    def give(self, size: int) -> None:
        self.held -= size


class Trimmer:
    """Hands the C allocator's free memory back to the system (glibc's ``malloc_trim``) when a burst of image
    requests is over: image bytes and pixels freed by Python and numpy otherwise stay in malloc's arenas, and
    the process keeps the burst's peak. At most once per ``interval`` seconds, in a thread; nothing elsewhere."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._last = 0.0
        self._trim = _malloc_trim()

    def __call__(self) -> None:
        now = time.monotonic()
        if self._trim is None or now - self._last < self.interval:
            return
        self._last = now
        threading.Thread(target=self._trim, args=(0,), name="altclip-trim", daemon=True).start()


def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None


def _mean(old: float | None, new: float) -> float:
    return new if old is None else old + _SMOOTHING * (new - old)
