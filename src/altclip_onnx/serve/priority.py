"""Image work yields the CPU to everything else the service does.

An image request costs a hundred times a text's CPU (decoding a photo, then the image tower), so a burst of
images would hold every core while the event loop, `/health` and the text tower wait their turn. The
threads that do image work (the decoding threads, the image tower's batching thread and its onnxruntime
thread pool) run at a lower priority (a higher nice value) than the rest: when nothing else wants the CPU they
get all of it, and when a text or a health check arrives the kernel runs that first.

Linux only (a thread's nice value is its own there); elsewhere these do nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

IMAGE_NICENESS = 10  # CFS weight 110 against 1024 at nice 0: the rest of the service gets ~90% of a busy core
_TASKS = "/proc/self/task"
T = TypeVar("T")


def lower_this_thread(niceness: int = IMAGE_NICENESS) -> None:
    """Raise the calling thread's nice value by ``niceness`` (raising it needs no privilege)."""
    _lower(threading.get_native_id(), niceness)


def lowering_new_threads(make: Callable[[], T], niceness: int = IMAGE_NICENESS) -> T:
    """``make()``, and the threads it started (e.g. an onnxruntime session's thread pool) lowered by
    ``niceness``."""
    before = _thread_ids()
    result = make()
    for tid in _thread_ids() - before:
        _lower(tid, niceness)
    return result


def _thread_ids() -> set[int]:
    try:
        return {int(name) for name in os.listdir(_TASKS)}
    except OSError:  # not Linux
        return set()


def _lower(tid: int, niceness: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + niceness)
    except (AttributeError, OSError):  # not POSIX, or the thread has ended
        pass
