"""How ``MemcachedCache`` reaches its servers: an ``emcache`` client, built on first use
and rebuilt for each of the breaker's probes, or lent and kept as it is; and the commands
running on it.

emcache reconnects to a server that was down with a backoff of its own (1 s doubling to
60 s). A client the cache owns is therefore rebuilt whenever the circuit breaker lets a
probe through, so recovery follows the breaker, not that backoff; the client it replaces
is closed in the background.

The commands themselves run as ``limpet.cache.memcached.commands`` says: never cancelled
while their connection is open, and without a task of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

import emcache

from limpet.cache.memcached.commands import ClientClosedError, Command, Session, hand_over
from limpet.cache.memcached.keys import parse_memcached_url
from limpet.cache.remote import check_source
from limpet.cache.slots import ConnectionSlots
from limpet.errors import ConfigurationError

__all__ = [
    "CLOSE_NUDGE",
    "CONNECT_TIMEOUT",
    "MemcachedConnector",
    "close_client",
]

T = TypeVar("T")

#: Seconds emcache may take to open a connection (in the background; see ``_build``).
CONNECT_TIMEOUT = 2.0
#: Seconds between the cancellations ``close_client`` sends a close that has not ended.
CLOSE_NUDGE = 1.0


class MemcachedConnector:
    """The ``emcache`` client of one ``MemcachedCache``, and the commands running on it.

    Args:
        url: ``memcached://host:11211[,host2:11211...]``, the servers of a client built
            here.
        client: an ``emcache.Client`` to use as it is (never rebuilt nor closed here).
        max_connections: connections per server of a client built here (and of a lent
            one, as far as ``slots`` know).

    Raises:
        ConfigurationError: neither or both of ``url`` and ``client``, an unusable URL, or
            a ``client`` that is not an ``emcache.Client``.
    """

    __slots__ = (
        "_arriving",
        "_closed",
        "_connecting",
        "_old_clients",
        "_servers",
        "_session",
        "max_connections",
        "owns",
        "slots",
    )

    def __init__(
        self,
        url: str | None,
        client: object,
        *,
        max_connections: int,
    ) -> None:
        check_source("MemcachedCache", url, client)
        if client is not None and not isinstance(client, emcache.Client):
            raise ConfigurationError(
                f"MemcachedCache.client: expected an emcache.Client, got {type(client).__name__}"
            )
        self._servers = [] if url is None else parse_memcached_url(url)
        self._session = None if client is None else Session(client)
        #: Whether the client is this connector's to build, rebuild and close.
        self.owns = client is None
        self.max_connections = max_connections
        #: A place per connection the client may open: a command holds one from its start
        #: to its end (``limpet.cache.slots``), so a burst waits for places here, outside
        #: every budget, rather than inside emcache's pools, where its budget ran out.
        self.slots = ConnectionSlots(max_connections * max(len(self._servers), 1))
        self._connecting: asyncio.Lock | None = None
        self._old_clients: set[asyncio.Task[None]] = set()
        self._arriving: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def where(self) -> str:
        """The servers, ``host:port,...`` (never a credential)."""
        return ",".join(f"{h}:{p}" for h, p in self._servers) or "lent emcache client"

    @property
    def closed(self) -> bool:
        """Whether ``aclose()`` was called."""
        return self._closed

    @property
    def running(self) -> list[asyncio.Future[None]]:
        """The commands running now on the client, as futures done as each ends (those
        of a client it replaced end as that client closes): their callers may have left,
        and each ends when its reply comes, or with its client."""
        session = self._session
        return [] if session is None else [command.ended for command in session.running]

    async def run(
        self,
        call: Callable[[emcache.Client], Awaitable[T]],
        *,
        probing: bool,
        budget: float,
    ) -> T:
        """``call``'s outcome, once one of ``slots`` is free to start it on. The breaker's
        probe takes none: it runs on a fresh client, and the places may all be held by
        the silent commands it exists to clear.

        The command runs as a ``Command`` (in this caller's task while it waits: no task
        of its own), which a cancellation of this caller never reaches.

        Raises:
            QueueTimeout: (inside a budget) no place came free within its bound.
        """
        if probing:
            return await self.start(call, probing=True, budget=budget)
        slots = self.slots
        if not slots.take_now():
            await slots.take()
        session = self._session
        if session is None:
            return await self.start(call, probing=False, budget=budget, held=True)
        return await self._command(call, session, budget, then=slots.give_back)

    def start(
        self,
        call: Callable[[emcache.Client], Awaitable[T]],
        *,
        probing: bool,
        budget: float,
        held: bool = False,
    ) -> asyncio.Future[T]:
        """Start ``call`` on the client (a fresh one when ``probing``, for the breaker's
        probe, or the first one, connected in a task of its own) and return the future
        of its outcome. ``held``: the caller took one of ``slots`` for it, which is
        this call's from now on, given back once as the command ends (or could not
        start).

        Cancelling that future (its caller's ``budget`` ran out, or its caller was
        cancelled) does not reach the command, which goes on until it has read its
        reply, or is taken for stuck (``commands.STUCK_AFTER`` budgets).
        """
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[T] = loop.create_future()
        then = self.slots.give_back if held else None
        session = None if probing else self._session
        if session is None:
            # Held until it ends: it connects at once (emcache connects in the
            # background), then runs as one of the new client's commands.
            try:
                task = loop.create_task(self._connect_then_run(call, probing, budget, reply, then))
            except BaseException:
                if then is not None:
                    then()
                raise
            self._arriving.add(task)
            task.add_done_callback(self._arriving.discard)
        else:
            self._command(call, session, budget, reply=reply, then=then)
        return reply

    def _command(
        self,
        call: Callable[[emcache.Client], Awaitable[T]],
        session: Session,
        budget: float,
        *,
        reply: asyncio.Future[T] | None = None,
        then: Callable[[], None] | None = None,
    ) -> Command[T]:
        """``call`` started on ``session``'s client; in a task of its own on a lent
        client, which may time its commands out itself (``Command``'s ``own_task``).
        Never raises an ``Exception``: a ``call`` that fails as it is made, or gives an
        awaitable that is no coroutine, is a command like any other, and ``then`` runs
        once, as it ends (or here, before what is no ``Exception`` goes on up)."""
        try:
            started = call(session.client)
        except Exception as exc:
            coro: Coroutine[Any, Any, T] = _raising(exc)
        except BaseException:
            if then is not None:
                then()
            if reply is not None:
                hand_over(reply, ClientClosedError("memcached command was interrupted"))
            raise
        else:
            coro = started if asyncio.iscoroutine(started) else _awaiting(started)
        own_task = not self.owns
        return Command(coro, session, budget, reply=reply, then=then, own_task=own_task)

    async def aclose(self, grace: float) -> None:
        """End every command and close the client if this connector owns it, and every
        client it replaced.

        Commands still running (their callers left) get ``grace`` seconds to read their
        reply: one may be a lease's release, worth landing, and a healthy server answers
        well within a budget, so a command still running after that is stuck on a silent
        server or a lost connection (emcache never ends a command whose connection
        closed). Then the client's connections are closed, and only then are the
        commands left cancelled.

        A lent client is never closed here, nor its connections: its owner's commands
        share them and would hang on a closed one. Its commands left after ``grace`` are
        cancelled with their connections open (emcache closes each, with a warning): a
        reply read in that very turn, after a server silent for ``grace``, would log
        asyncio's error once; never cancelling them would leave them running for ever.
        """
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.settled(grace)
            if self.owns:
                await close_client(session.client)
            await session.stop(close_connections=self.owns)
        await asyncio.gather(*self._old_clients, return_exceptions=True)

    async def _connected(self, *, fresh: bool) -> Session:
        """The client and its commands; a client this connector owns is built on first
        use, and rebuilt when ``fresh`` so that reconnecting follows the breaker, not
        emcache's backoff."""
        session = self._session
        if session is not None and not (fresh and self.owns):
            return session
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._closed:
                raise ClientClosedError(f"memcached client for {self.where} is closed")
            if self._session is not None and self._session is not session:
                return self._session  # another caller just built one
            if session is not None:
                self._retire(session)
            client = await self._build()
            if self.closed:  # closed while it connected: nothing else would close it
                await close_client(client)
                raise ClientClosedError(f"memcached client for {self.where} is closed")
            self._session = Session(client)
            return self._session

    async def _build(self) -> emcache.Client:
        return await emcache.create_client(
            [emcache.MemcachedHostAddress(host, port) for host, port in self._servers],
            timeout=None,  # every call runs under the cache's own budget
            max_connections=self.max_connections,
            # One connection kept open: one a timeout closed is replaced at once,
            # in the background, rather than by the next call within its budget.
            min_connections=1,
            # Generous: emcache connects in the background, callers never wait past
            # their own budget, and a connection abandoned as slow is retried only
            # after a one-second backoff: a busy machine must not turn a slow
            # connect into a second of misses.
            connection_timeout=CONNECT_TIMEOUT,
            # With several servers, one that stays unreachable leaves the hashing
            # (its keys go to the others) instead of timing out its share of calls.
            purge_unhealthy_nodes=len(self._servers) > 1,
        )

    async def _connect_then_run(
        self,
        call: Callable[[emcache.Client], Awaitable[T]],
        probing: bool,
        budget: float,
        reply: asyncio.Future[T],
        then: Callable[[], None] | None,
    ) -> None:
        """``start`` with no client yet, or for a probe: connect, then run ``call`` as one
        of the new client's commands."""
        try:
            session = await self._connected(fresh=probing)
        except BaseException as exc:
            if then is not None:
                then()
            if isinstance(exc, Exception):
                hand_over(reply, exc)
                return
            hand_over(reply, ClientClosedError("memcached connect was cancelled"))
            raise
        self._command(call, session, budget, reply=reply, then=then)

    def _retire(self, session: Session) -> None:
        task = asyncio.get_running_loop().create_task(_close_session(session))
        self._old_clients.add(task)
        task.add_done_callback(self._old_clients.discard)


async def _raising(exc: Exception) -> Any:
    raise exc


async def _awaiting(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def _close_session(session: Session) -> None:
    """Close a replaced client, then end the commands it had left."""
    await close_client(session.client)
    await session.stop(close_connections=True)


async def close_client(client: Closable) -> None:
    """Close ``client``; a close still running after ``CLOSE_NUDGE`` seconds is cancelled
    again, every ``CLOSE_NUDGE`` seconds, until it ends.

    emcache's close cancels its pool's reconnect task and waits for it; on Python 3.11 a
    cancellation that meets a failed connect in the same turn is lost in ``wait_for``, and
    the task goes on retrying a down server, so the close (and ``aclose()``) would wait
    forever. A cancellation of the close reaches the task again; the pool's close takes
    it as its own and goes on closing the connections.
    """
    closing = asyncio.ensure_future(client.close())
    try:
        while not (await asyncio.wait((closing,), timeout=CLOSE_NUDGE))[0]:
            closing.cancel()
    except BaseException:
        closing.cancel()  # our caller's cancellation: the close is given up with it
        raise
    if not closing.cancelled():
        closing.result()


class Closable(Protocol):
    """What ``close_client`` closes: an ``emcache.Client``."""

    async def close(self) -> None: ...
