"""How ``MemcachedCache`` reaches its servers: an ``emcache`` client, built on first use
and rebuilt for each of the breaker's probes, or lent and kept as it is.

emcache reconnects to a server that was down with a backoff of its own (1 s doubling to
60 s). A client the cache owns is therefore rebuilt whenever the circuit breaker lets a
probe through, so recovery follows the breaker, not that backoff; the client it replaces
is closed in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

import emcache

from limpet.cache.memcached.keys import parse_memcached_url
from limpet.cache.remote import check_source
from limpet.errors import ConfigurationError

__all__ = [
    "CLOSE_NUDGE",
    "CONNECT_TIMEOUT",
    "MemcachedConnector",
    "close_client",
    "delete_key",
    "read_to_its_end",
]

T = TypeVar("T")

#: Seconds emcache may take to open a connection (in the background; see ``connect``).
CONNECT_TIMEOUT = 2.0
#: Seconds between the cancellations ``close_client`` sends a close that has not ended.
CLOSE_NUDGE = 1.0


class MemcachedConnector:
    """The ``emcache`` client of one ``MemcachedCache``.

    Args:
        url: ``memcached://host:11211[,host2:11211...]``, the servers of a client built
            here.
        client: an ``emcache.Client`` to use as it is (never rebuilt nor closed here).
        max_connections: connections per server of a client built here.

    Raises:
        ConfigurationError: neither or both of ``url`` and ``client``, an unusable URL, or
            a ``client`` that is not an ``emcache.Client``.
    """

    __slots__ = ("_client", "_connecting", "_old_clients", "_servers", "max_connections", "owns")

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
        self._client: emcache.Client | None = client
        #: Whether the client is this connector's to build, rebuild and close.
        self.owns = client is None
        self.max_connections = max_connections
        self._connecting: asyncio.Lock | None = None
        self._old_clients: set[asyncio.Task[None]] = set()

    @property
    def where(self) -> str:
        """The servers, ``host:port,...`` (never a credential)."""
        return ",".join(f"{h}:{p}" for h, p in self._servers) or "lent emcache client"

    @property
    def built(self) -> emcache.Client | None:
        """The client, when there is one (no await: the read path's)."""
        return self._client

    async def client(self, *, probing: bool) -> emcache.Client:
        """The client; a fresh one when ``probing`` (for the breaker's probe)."""
        client = self._client
        if client is None or probing:
            return await self.connect(fresh=probing)
        return client

    async def connect(self, *, fresh: bool) -> emcache.Client:
        """The client; one this connector owns is built on first use, and rebuilt when
        ``fresh`` so that reconnecting follows the breaker, not emcache's backoff."""
        client = self._client
        if client is not None and not (fresh and self.owns):
            return client
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._client is not None and self._client is not client:
                return self._client  # another caller just built one
            if client is not None:
                self._retire(client)
            self._client = await emcache.create_client(
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
            return self._client

    async def aclose(self) -> None:
        """Close the client if this connector owns it, and every client it replaced."""
        client, self._client = self._client, None
        if self.owns and client is not None:
            await close_client(client)
        await asyncio.gather(*self._old_clients, return_exceptions=True)

    def _retire(self, client: emcache.Client) -> None:
        task = asyncio.get_running_loop().create_task(close_client(client))
        self._old_clients.add(task)
        task.add_done_callback(self._old_clients.discard)


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


async def delete_key(client: emcache.Client, key: bytes) -> None:
    """Delete ``key``; absent is fine."""
    with contextlib.suppress(emcache.NotFoundCommandError):
        await client.delete(key)


async def read_to_its_end(command: Coroutine[Any, Any, T]) -> T:
    """``command``'s result, the command run in a task of its own that its caller's
    cancellation never reaches: a cancelled caller waits until the command has read its
    reply (or spent its budget, which the command counts itself), then raises.

    An emcache command cancelled while its reply is on the way closes its connection, and
    when the reply is read in the same loop turn, emcache's parser resolves a future the
    cancellation already cancelled: asyncio logs "Fatal error: protocol.data_received()
    call failed" as an ERROR. Callers are cancelled routinely (a request given up, a
    follower's poll at its deadline): each would cost a connection, and now and then
    that error.
    """
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[T] = loop.create_future()
    task = loop.create_task(_reading(command, reply))
    try:
        return await reply
    except asyncio.CancelledError:
        if reply.cancelled():  # its caller's cancellation, not the command's own
            while not task.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait((task,))
        raise


async def _reading(command: Coroutine[Any, Any, T], reply: asyncio.Future[T]) -> None:
    """``command``, its outcome handed to ``reply`` as it ends (in the same loop turn)
    unless its caller has left; then it is dropped."""
    try:
        result = await command
    except BaseException as exc:
        if not reply.done():
            if isinstance(exc, asyncio.CancelledError):
                reply.cancel()
            else:
                reply.set_exception(exc)
        if not isinstance(exc, Exception):
            raise
    else:
        if not reply.done():
            reply.set_result(result)
