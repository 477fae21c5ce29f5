"""The commands running on a ``MemcachedCache``'s ``emcache`` client: never cancelled
while their connection is open.

emcache reads replies in ``MemcacheAsciiProtocol.data_received``, whose parser resolves
the command's future: a command cancelled in the loop turn its reply arrives in leaves
the parser resolving a cancelled future, and asyncio logs "Fatal error:
protocol.data_received() call failed" as an ERROR and drops the connection; and any
cancelled command costs its connection (emcache closes it, with a warning). Budgets run
out and callers are cancelled routinely (a 50 ms read, a request given up, a follower's
poll at its deadline), so each command runs in a task of its own that neither reaches:
its caller stops waiting, the command reads its reply and hands its connection back to
the pool, in step.

A command whose server never answers is ended with its client: the client's connections
are closed first, so no reply can be read any more, and only then is the command
cancelled (when the breaker's probe replaces the client, and at ``aclose()``). And a
command still running ``STUCK_AFTER`` budgets after it started is cancelled then, with
its connection as it is: emcache never ends a command whose connection was lost under
it (a server restarted, a connection reset), which would otherwise hold its place in the
pool until the breaker opened, and a server that has not answered for that long is
down, not slow (the rare reply that comes in that very turn costs the connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import emcache

__all__ = ["STUCK_AFTER", "ClientClosedError", "Session", "StuckCommandError", "run_command"]

T = TypeVar("T")

#: Budgets after which a command still running is taken for stuck, and cancelled.
STUCK_AFTER = 20


class ClientClosedError(ConnectionError):
    """A command's client was closed (the cache closed, or a probe replaced the client)
    before the command had its reply."""


class StuckCommandError(ConnectionError):
    """A command had no reply ``STUCK_AFTER`` budgets after it started."""


class Session:
    """One ``emcache`` client and the commands running on it, each with the future its
    caller waits on (or left), and when it will be taken for stuck.

    One timer checks for stuck commands while any runs (not one per command).
    """

    __slots__ = ("_due", "_reaper", "client", "running")

    def __init__(self, client: emcache.Client) -> None:
        self.client = client
        self.running: dict[asyncio.Task[Any], asyncio.Future[Any]] = {}
        self._due: dict[asyncio.Task[Any], float] = {}
        self._reaper: asyncio.TimerHandle | None = None

    def track(self, task: asyncio.Task[Any], reply: asyncio.Future[Any], budget: float) -> None:
        """Count ``task`` running until it ends, its outcome owed to ``reply``."""
        self.running[task] = reply
        due = task.get_loop().time() + STUCK_AFTER * budget
        self._due[task] = due
        if self._reaper is None:
            self._reaper = task.get_loop().call_at(due, self._reap)

    def ended(self, task: asyncio.Task[Any]) -> None:
        """``task`` has ended (from the task itself, as it ends)."""
        self.running.pop(task, None)
        self._due.pop(task, None)

    async def settled(self, grace: float) -> None:
        """Wait at most ``grace`` seconds for the commands running to end."""
        if self.running:
            await asyncio.wait(list(self.running), timeout=grace)

    async def stop(self, *, close_connections: bool) -> None:
        """Cancel the commands left, after closing every connection of the client when
        ``close_connections``; a caller still waiting is told ``ClientClosedError``."""
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        if close_connections:
            for connection in _connections(self.client):
                connection.close()
        running, self.running, self._due = self.running, {}, {}
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(list(running))
        closed = ClientClosedError("memcached client closed before the command had its reply")
        for reply in running.values():
            hand_over(reply, closed)

    def _reap(self) -> None:
        """Cancel the commands past their time; look again when the next one is due."""
        self._reaper = None
        if not self._due:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        stuck = [task for task, due in self._due.items() if due <= now]
        for task in stuck:
            hand_over(self.running[task], StuckCommandError("memcached command had no reply"))
            self.ended(task)
            task.cancel()
        if self._due:
            self._reaper = loop.call_at(min(self._due.values()), self._reap)


async def run_command(
    call: Callable[[emcache.Client], Awaitable[T]], session: Session, reply: asyncio.Future[T]
) -> None:
    """``call`` on the session's client, its outcome handed to ``reply`` as it ends (in
    the same loop turn) unless its caller has left; then it is dropped."""
    try:
        result = await call(session.client)
    except Exception as exc:
        hand_over(reply, exc)
    else:
        if not reply.done():
            reply.set_result(result)
    finally:
        task = asyncio.current_task()
        assert task is not None
        session.ended(task)


def hand_over(reply: asyncio.Future[Any], exc: BaseException) -> None:
    """Fail ``reply`` with ``exc``, unless its caller has its outcome or has left."""
    if not reply.done():
        reply.set_exception(exc)


def _connections(client: emcache.Client) -> Iterator[Any]:
    """Every connection ``client`` has open, idle or running a command.

    emcache's ``close()`` closes the idle ones alone and offers no way to the others, so
    this reads its pools (emcache 1.3's ``Cluster.nodes`` and
    ``ConnectionPool._connections_last_time_used``, which holds each connection from its
    creation to its close); ``tests/cache/test_memcached_faults.py`` checks it still does.
    """
    cluster = getattr(client, "_cluster", None)
    for node in getattr(cluster, "nodes", ()):
        pool = getattr(node, "_connection_pool", None)
        yield from list(getattr(pool, "_connections_last_time_used", ()))
