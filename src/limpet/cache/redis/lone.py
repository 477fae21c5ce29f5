"""The connection a ``RedisCache`` keeps for the reads it sends alone.

``ReadBatcher`` sends at most one read alone at a time (every other read waits for a
batch), so that read needs no pool: one connection, taken from the cache's own pool on
first use and kept, carries every lone GET. A hit then pays for a round trip and its
parsing, not for redis-py's per-command machinery around it (taking a connection from a
blocking pool and giving it back, its retry wrapper, its observability hooks), which
cost about as much as the round trip itself.

What that machinery did for a read is kept: a connection that turns out dead (Redis
restarted, or closed it while idle) is reconnected and the command sent once more, as
the pool's ``Retry(NoBackoff(), 1)`` does; and a read abandoned half-way (its budget
spent, its caller cancelled) closes the connection, as redis-py does, so a reply never
reaches the wrong read: the next read reconnects.
"""

from __future__ import annotations

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError

from limpet.cache.budget import connecting

__all__ = ["LoneReads", "packed_get"]


class LoneReads:
    """GETs, one at a time, on one connection kept from ``pool``.

    Not safe for concurrent use: its one caller is ``ReadBatcher``'s read alone.

    Args:
        pool: the connection pool of a client the cache built (never a lent one: the
            connection is kept until ``aclose()``).
    """

    __slots__ = ("_connection", "_pool")

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._connection: AbstractConnection | None = None

    async def get(self, key: str) -> object:
        """The value under ``key`` (None when absent).

        Raises:
            redis.exceptions.RedisError: as redis-py raises it (a dead connection twice in
                a row, Redis's error reply, ...).
        """
        connection = self._connection
        connects = False  # whether this read asked for the allowance (``connecting()``)
        if connection is None:
            connection = await self._connect()  # the pool gives it, when it connects
        elif not connection.is_connected:  # closed by a read cut short: connects again
            connects = True
            connecting()
        try:
            return await _get(connection, key)
        except RedisConnectionError:
            if self._connection is not connection:
                raise  # closed meanwhile
            # Dead already when taken (a restart): once more, on a fresh connection.
            await connection.disconnect()
            if not connects:  # one allowance a read
                connecting()
            return await _get(connection, key)

    async def _connect(self) -> AbstractConnection:
        connection: AbstractConnection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        self._connection = connection
        return connection

    async def aclose(self) -> None:
        """Close the connection. It is not given back: a read still in flight on it must
        not share it with whoever the pool would give it to next (the cache closes the
        pool right after, which forgets it)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect()


async def _get(connection: AbstractConnection, key: str) -> object:
    # Encoded as redis-py would (the URL may choose an encoding), packed by hand.
    data: bytes = connection.encoder.encode(key)  # type: ignore[no-untyped-call]
    await connection.send_packed_command(packed_get(data))
    return await connection.read_response()


def packed_get(key: bytes) -> bytes:
    """``GET key`` as Redis reads it (RESP: an array of two bulk strings), built in one
    step rather than by redis-py's general packer.

    Example:
        >>> packed_get(b"limpet:k")
        b'*2\\r\\n$3\\r\\nGET\\r\\n$8\\r\\nlimpet:k\\r\\n'
    """
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(key), key)
