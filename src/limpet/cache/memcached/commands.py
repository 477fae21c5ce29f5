"""The commands running on a ``MemcachedCache``'s ``emcache`` client: never cancelled
while their connection is open, and never given a task of their own.

emcache reads replies in ``MemcacheAsciiProtocol.data_received``, whose parser resolves
the command's future: a command cancelled in the loop turn its reply arrives in leaves
the parser resolving a cancelled future, and asyncio logs "Fatal error:
protocol.data_received() call failed" as an ERROR and drops the connection; and any
cancelled command costs its connection (emcache closes it, with a warning). Budgets run
out and callers are cancelled routinely (a 50 ms read, a request given up, a follower's
poll at its deadline), so no cancellation of theirs reaches a command: each command is a
``Command``, its coroutine stepped by the callbacks of the futures it waits on, and its
caller waits on a ``CallerWait`` that a cancellation ends alone. The caller leaves; the
command reads its reply and hands its connection back to the pool, in step.

It used to be a task of its own, which cost two loop turns per command (the task's start,
and its caller's wake-up after its end): nearly half of a Memcached-tier hit's time above a
bare emcache get. A ``Command`` costs none: its first step runs in its caller's own step,
and the callback that reads its reply wakes its caller at once.

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
from collections.abc import Callable, Coroutine, Generator, Iterator
from typing import Any, Generic, TypeVar

import emcache

from limpet.cache.memcached.caller_wait import CallerWait

__all__ = [
    "STUCK_AFTER",
    "ClientClosedError",
    "Command",
    "Session",
    "StuckCommandError",
    "hand_over",
]

T = TypeVar("T")

#: Budgets after which a command still running is taken for stuck, and cancelled.
STUCK_AFTER = 20


class ClientClosedError(ConnectionError):
    """A command's client was closed (the cache closed, or a probe replaced the client)
    before the command had its reply."""


class StuckCommandError(ConnectionError):
    """A command had no reply ``STUCK_AFTER`` budgets after it started."""


class Session:
    """One ``emcache`` client and the commands running on it, each with the time it will
    be taken for stuck.

    One timer checks for stuck commands while any runs (not one per command).
    """

    __slots__ = ("_reaper", "client", "running")

    def __init__(self, client: emcache.Client) -> None:
        self.client = client
        #: Each command running, with the loop time it is taken for stuck at.
        self.running: dict[Command[Any], float] = {}
        self._reaper: asyncio.TimerHandle | None = None

    def track(self, command: Command[Any], budget: float) -> None:
        """Count ``command`` running until it ends (``ended``)."""
        loop = asyncio.get_running_loop()
        due = self.running[command] = loop.time() + STUCK_AFTER * budget
        reaper = self._reaper
        if reaper is None or due < reaper.when():  # a shorter budget than those running
            if reaper is not None:
                reaper.cancel()
            self._reaper = loop.call_at(due, self._reap)

    def ended(self, command: Command[Any]) -> None:
        """``command`` has ended (from the command itself, as it ends)."""
        self.running.pop(command, None)

    async def settled(self, grace: float) -> None:
        """Wait at most ``grace`` seconds for the commands running to end."""
        if self.running:
            await asyncio.wait([command.ended for command in self.running], timeout=grace)

    async def stop(self, *, close_connections: bool) -> None:
        """Cancel the commands left, after closing every connection of the client when
        ``close_connections``; a caller still waiting is told ``ClientClosedError``."""
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        if close_connections:
            for connection in _connections(self.client):
                connection.close()
        running, self.running = self.running, {}
        closed = ClientClosedError("memcached client closed before the command had its reply")
        for command in running:
            command.abandon(closed)
        if running:
            await asyncio.wait([command.ended for command in running])

    def _reap(self) -> None:
        """Cancel the commands past their time; look again when the next one is due."""
        self._reaper = None
        if not self.running:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        stuck = [command for command, due in self.running.items() if due <= now]
        for command in stuck:
            self.ended(command)
            command.abandon(StuckCommandError("memcached command had no reply"))
        if self.running:
            self._reaper = loop.call_at(min(self.running.values()), self._reap)


class Command(Generic[T]):
    """One command on a session's client, stepped without a task of its own: its first
    step runs where it is made, the next ones in the callbacks of the futures it waits
    on (as a task's would, one loop turn later each).

    A caller awaits it (``await command``) or is handed its outcome in ``reply``. Its
    end is told to a waiting caller in the very callback that ended it, with no loop turn
    in between; a caller cancelled meanwhile stops waiting and nothing more (the command
    goes on, reads its reply, and its connection goes back to the pool in step).

    ``own_task``: the command runs in a task of its own instead. For a client lent with a
    timeout of its own (emcache's default is one second): emcache times a command out by
    cancelling the task it started in, which must then be the command's, not its caller's.

    Args:
        coro: the command, e.g. ``get_value(client, key)``.
        session: the client's session, which counts the command running until it ends.
        budget: the caller's budget (``STUCK_AFTER`` of them and the command is stuck).
        reply: a future given the outcome, unless it is done by then.
        then: called as the command ends, before its caller hears of it.
        own_task: run the command in a task of its own.
    """

    __slots__ = (
        "_cancelled",
        "_coro",
        "_ended",
        "_error",
        "_must_cancel",
        "_result",
        "_session",
        "_task",
        "_then",
        "_wait",
        "_waiting_on",
        "done",
        "reply",
    )

    def __init__(
        self,
        coro: Coroutine[Any, Any, T],
        session: Session,
        budget: float,
        *,
        reply: asyncio.Future[T] | None = None,
        then: Callable[[], None] | None = None,
        own_task: bool = False,
    ) -> None:
        self._coro = coro
        self._session = session
        self.reply = reply
        self._then = then
        self._wait: CallerWait[T] | None = None
        self._waiting_on: asyncio.Future[Any] | None = None
        self._ended: asyncio.Future[None] | None = None
        self._must_cancel = False
        self._cancelled: asyncio.CancelledError | None = None
        self._result: T | None = None
        self._error: BaseException | None = None
        #: Whether the command has ended.
        self.done = False
        self._task: asyncio.Task[T] | None = None
        session.track(self, budget)
        if not own_task:
            self._step()
            return
        try:
            self._task = asyncio.get_running_loop().create_task(coro)
        except Exception as exc:
            coro.close()
            error = exc
        else:
            self._task.add_done_callback(self._task_ended)
            return
        self._end(None, error)  # ended as made: no caller waits yet

    @property
    def ended(self) -> asyncio.Future[None]:
        """A future done once the command has ended, as a task's would be: cancelled
        if the command was, else with None whatever its outcome."""
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
            if self.done:
                self._mark_ended()
        return self._ended

    def __await__(self) -> Generator[Any, None, T]:
        if not self.done:
            assert self._wait is None, "a command has one caller"
            wait = self._wait = CallerWait(asyncio.get_running_loop())
            yield wait  # a cancellation ends the wait here, not the command
            return wait.result()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def abandon(self, reason: Exception) -> None:
        """Tell a caller still waiting ``reason`` (in a loop turn of its own), and cancel
        the command as a task is cancelled: the future it waits on is cancelled, and it
        ends as it leaves it (a turn later)."""
        if self.done:
            return
        self._tell(None, reason, at_once=False)
        if self._task is not None:
            self._task.cancel()
            return
        waiting = self._waiting_on
        if waiting is None or not waiting.cancel():
            self._must_cancel = True

    def _step(self) -> None:
        """Run the command up to its next wait, or its end."""
        coro = self._coro
        result: T | None = None
        error: BaseException | None
        try:
            if self._must_cancel:
                self._must_cancel = False
                waits_on = coro.throw(asyncio.CancelledError())
            else:
                waits_on = coro.send(None)
        except StopIteration as stop:
            result, error = stop.value, None
        except asyncio.CancelledError as exc:
            # Cancelled by ``abandon`` (its caller was told why), or inside emcache.
            self._cancelled = exc
            error = ClientClosedError("memcached command was cancelled")
        except Exception as exc:
            error = exc
        except BaseException:  # SystemExit, KeyboardInterrupt: the loop's to stop
            # The caller is told in a turn of its own, not inside this clause.
            self._end(None, ClientClosedError("memcached command was interrupted"), at_once=False)
            raise
        else:
            self._wait_for(waits_on)
            return
        # Out of the except clauses: a caller woken in ``_end`` must not run inside them
        # (its own exceptions would be chained to this one).
        self._end(result, error)

    def _wait_for(self, waits_on: Any) -> None:
        """Step again once ``waits_on`` (what the coroutine yielded) is done."""
        if waits_on is None:  # a bare yield (``asyncio.sleep(0)``): the next turn
            asyncio.get_running_loop().call_soon(self._wake, None)
            return
        if not getattr(waits_on, "_asyncio_future_blocking", False):
            self._coro.close()
            self._end(None, RuntimeError(f"memcached command yielded {waits_on!r}"))
            return
        waits_on._asyncio_future_blocking = False
        self._waiting_on = waits_on
        waits_on.add_done_callback(self._wake)

    def _wake(self, future: asyncio.Future[Any] | None) -> None:
        if self.done or future is not self._waiting_on:
            return
        self._waiting_on = None
        self._step()

    def _task_ended(self, task: asyncio.Task[T]) -> None:
        if task.cancelled():
            self._cancelled = asyncio.CancelledError()
            self._end(None, ClientClosedError("memcached command was cancelled"))
        elif (error := task.exception()) is not None:
            self._end(None, error)
        else:
            self._end(task.result(), None)

    def _end(self, result: T | None, error: BaseException | None, *, at_once: bool = True) -> None:
        self.done = True
        self._result, self._error = result, error
        self._session.ended(self)
        if self._then is not None:
            self._then()
        if self._ended is not None:
            self._mark_ended()
        # A caller waiting is in a task suspended on ``_wait``, and the command steps (or
        # its task ends) in loop callbacks only while it is: waking it here is safe.
        self._tell(result, error, at_once=at_once)

    def _mark_ended(self) -> None:
        assert self._ended is not None
        if self._cancelled is not None:
            self._ended.cancel()
        else:
            self._ended.set_result(None)

    def _tell(self, result: T | None, error: BaseException | None, *, at_once: bool) -> None:
        reply = self.reply
        if reply is not None:
            if error is not None:
                hand_over(reply, error)
            elif not reply.done():
                reply.set_result(result)  # type: ignore[arg-type]
        if self._wait is not None:
            self._wait.finish(result, error, at_once=at_once)


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
