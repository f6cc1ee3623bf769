"""Requests on their way to the model: what a batcher is worth waiting for.

A request is *arriving* from the moment its handler starts (its body is still being read and parsed) until
it submits its inputs to a tower's batcher; for images that includes decoding. A batcher with a job in hand
waits, up to ``--max-wait-ms``, only while some request is arriving for its tower (or for a tower not yet
known): a lone request runs at once instead of paying the wait, and under load a model call still takes in
the requests already received.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar

_UNKNOWN = ""  # the tower is not known yet (the body is being read)
_current: ContextVar[Ticket | None] = ContextVar("altclip_arrival", default=None)


class Arrivals:
    """Counts of arriving requests per tower; thread-safe (batchers read them from their threads)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {_UNKNOWN: 0}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def listen(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever a request stops arriving (e.g. :meth:`Batcher.wake`)."""
        self._listeners.append(wake)

    def waiting_for(self, tower: str) -> int:
        """Requests that may still bring inputs for ``tower``."""
        counts = self._counts
        return counts[_UNKNOWN] + counts.get(tower, 0)

    def _change(self, *, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
        """Count requests in (``add``) and out (``remove``) at once, then wake the listeners if any left."""
        removed = False
        with self._lock:
            for tower in add:
                self._counts[tower] = self._counts.get(tower, 0) + 1
            for tower in remove:
                self._counts[tower] -= 1
                removed = True
        if removed:
            for wake in self._listeners:
                wake()

    @contextlib.contextmanager
    def request(self) -> Iterator[Ticket]:
        """A request's arrival, from now until it submits its inputs or ends."""
        ticket = Ticket(self)
        token = _current.set(ticket)
        try:
            yield ticket
        finally:
            ticket.close()
            _current.reset(token)


class Ticket:
    """One arriving request: first for an unknown tower, then for the towers it :meth:`expects`."""

    def __init__(self, arrivals: Arrivals) -> None:
        self._arrivals = arrivals
        self._towers: set[str] = {_UNKNOWN}
        arrivals._change(add=[_UNKNOWN])

    def expect(self, *towers: str) -> None:
        """The request now knows which towers it will use (no longer counted as unknown)."""
        new = [tower for tower in dict.fromkeys(towers) if tower not in self._towers]
        gone = [_UNKNOWN] if _UNKNOWN in self._towers else []
        self._towers.difference_update(gone)
        self._towers.update(new)
        self._arrivals._change(add=new, remove=gone)

    def submitted(self, tower: str) -> None:
        """Its inputs for ``tower`` are in the batcher's queue (idempotent)."""
        gone = [name for name in (tower, _UNKNOWN) if name in self._towers]
        self._towers.difference_update(gone)
        if gone:
            self._arrivals._change(remove=gone)

    def close(self) -> None:
        gone = list(self._towers)
        self._towers.clear()
        if gone:
            self._arrivals._change(remove=gone)


def current() -> Ticket | None:
    """The arriving request this task serves (None outside a request)."""
    return _current.get()
