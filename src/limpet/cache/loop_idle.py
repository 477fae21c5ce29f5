"""How busy the event loop's thread has been: its time on a CPU, and on Linux its time
waiting for one, so that the loop's idle share of a stretch of wall time can be told
(``limpet.cache.budget`` counts a server's budget by it).
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["thread_busy"]


def thread_busy() -> float:
    """Seconds the calling thread has run on a CPU (its CPU time, current when read) or,
    on Linux, waited for one (its ``schedstat``: a process the machine does not schedule
    is not waiting on a server either)."""
    schedstat = getattr(_thread, "schedstat", None)
    if schedstat is None:
        schedstat = _thread.schedstat = _Schedstat()
    return schedstat.busy()


class _Schedstat:
    """A thread's ``/proc/thread-self/schedstat``, open for as long as the thread lives
    (a read of the open file costs ~1 us, opening it ~10), for its run-queue wait; its
    time on a CPU there is updated only at the scheduler's ticks (4 ms at 250 Hz), so that
    is read from ``time.thread_time()``, which is current."""

    __slots__ = ("_fd",)

    def __init__(self) -> None:
        try:
            self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = -1

    def busy(self) -> float:
        ran = time.thread_time()
        if self._fd >= 0:
            try:
                return ran + int(os.pread(self._fd, 128, 0).split()[1]) / 1e9
            except (OSError, ValueError, IndexError):
                pass
        return ran

    def __del__(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)


_thread = threading.local()


def _forget_schedstat() -> None:
    """In a child process just forked: the file open is its parent's thread's."""
    _thread.schedstat = None


os.register_at_fork(after_in_child=_forget_schedstat)
