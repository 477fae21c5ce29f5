"""Reads for a remote tier's ``get`` (Redis, Memcached): batched per loop tick, timed by
the server they wait on.

Five hundred concurrent lookups used to be five hundred GETs, each on its own pooled
connection, each timed from the moment its caller asked: the read budget then measured
the queue for the event loop and the pool rather than the server, and a healthy server
under a burst opened the breaker. Here every key asked for while a read is in flight
waits for the next batch, and a batch is one round trip (Redis: one MGET, on a cluster
one pipeline per node; Memcached: one multi-key get per server), so a burst costs a
handful of round trips and a handful of connections.

The round trips run on the server's clock (``limpet.cache.budget``): a budget counts
time only while the event loop keeps up, so a loop busy with other callers for a while
is not taken for a slow server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from limpet.errors import CacheUnavailableError

__all__ = ["MAX_BATCH", "MAX_BATCHES_IN_FLIGHT", "ReadBatcher"]

#: Keys per batch: big enough to amortise a round trip, small enough that the reply
#: (about 2 KB an entry) parses in one or two loop ticks.
MAX_BATCH = 64
#: Batches sent at once: bounds the connections a burst takes from the pool.
MAX_BATCHES_IN_FLIGHT = 4


V = TypeVar("V")

#: Sends one batch: the keys in, their values (None: absent) out, in order.
FetchMany = Callable[[Sequence[str]], Awaitable[Sequence[V]]]
#: Sends one key alone.
FetchOne = Callable[[str], Awaitable[V]]


class ReadBatcher(Generic[V]):
    """Coalesces concurrent reads of single keys into batches.

    A read that finds nothing in flight goes alone (a single GET: the uncontended hit
    pays nothing for batching); a read of the same key meanwhile shares its answer, so a
    burst of identical reads is one round trip. Any other read that arrives while others
    are in flight queues;
    queued keys go out ``MAX_BATCH`` at a time in at most ``MAX_BATCHES_IN_FLIGHT``
    concurrent batches, so they wait for at most one batch each before theirs is sent.
    A batch that fails fails every read in it, with the same ``CacheUnavailableError``.

    Args:
        fetch_one: reads one key (through the cache's breaker and budget).
        fetch_many: reads several keys in one round trip (ditto).
        kind: the server's kind, for messages and task names (``"Redis"``).
    """

    __slots__ = (
        "_alone",
        "_fetch_many",
        "_fetch_one",
        "_in_flight",
        "_joined",
        "_kind",
        "_pending",
        "_starting",
        "_tasks",
        "batches",
    )

    def __init__(self, fetch_one: FetchOne[V], fetch_many: FetchMany[V], *, kind: str) -> None:
        self._kind = kind
        self._fetch_one = fetch_one
        self._fetch_many = fetch_many
        # Keys waiting for a batch, each with the futures of the readers that asked.
        self._pending: dict[str, list[asyncio.Future[V]]] = {}
        self._in_flight = 0
        # The key read alone now, and the futures of the readers of it that joined it.
        self._alone: str | None = None
        self._joined: list[asyncio.Future[V]] = []
        # Batch tasks created that have not yet taken their keys.
        self._starting = 0
        self._tasks: set[asyncio.Task[None]] = set()  # asyncio keeps only weak references
        #: Batches sent (a single read alone is not one), for tests and stats.
        self.batches = 0

    async def get(self, key: str) -> V:
        """The value under ``key``, as ``fetch_one``/``fetch_many`` return it.

        Raises:
            CacheUnavailableError: as the fetch raised it.
        """
        if self._in_flight or self._pending:
            return await self._join(key)
        # Alone: read here, in the caller's task (no task, no future of its own).
        self._in_flight += 1
        self._alone = key
        joined = self._joined = []
        try:
            value = await self._fetch_one(key)
        except CacheUnavailableError as exc:
            _settle(joined, exc)
            raise
        except BaseException:
            # This reader was cancelled: those that joined it read in the next batch.
            if joined:
                self._pending.setdefault(key, []).extend(joined)
            raise
        else:
            for future in joined:
                if not future.done():
                    future.set_result(value)
            return value
        finally:
            self._alone = None
            self._in_flight -= 1
            if self._pending:
                self._start_batches()

    async def _join(self, key: str) -> V:
        """Read ``key`` with the read alone in flight (the same key) or in a batch."""
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        if key == self._alone:
            self._joined.append(future)
        else:
            self._pending.setdefault(key, []).append(future)
            self._start_batches()
        # A reader that gives up only drops its own future; the batch goes on for others.
        return await future

    def _start_batches(self) -> None:
        loop = asyncio.get_running_loop()
        needed = -(-len(self._pending) // MAX_BATCH) - self._starting
        while needed > 0 and self._in_flight < MAX_BATCHES_IN_FLIGHT:
            needed -= 1
            self._in_flight += 1
            self._starting += 1
            # A task of its own: it runs from the next tick, so every key asked for in
            # this tick joins the batch.
            task = loop.create_task(self._send(), name=f"limpet-{self._kind.lower()}-reads")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def forget(self, key: str | None = None) -> None:
        """From now on, a read of ``key`` (None: of any key) is a round trip of its own:
        none joins the read of it in flight, sent before whatever the caller just did (a
        delete, a clear) and so perhaps with the value that is gone. Those that joined
        already asked before it."""
        if key is None or key == self._alone:
            self._alone = None

    async def aclose(self) -> None:
        """Stop the batches in flight; their readers get ``CacheUnavailableError``."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for futures in self._pending.values():
            _settle(
                futures, CacheUnavailableError(f"{self._kind} read abandoned: the cache closed")
            )
        self._pending.clear()

    async def _send(self) -> None:
        self._starting -= 1
        try:
            pending = self._pending
            keys = list(pending)[:MAX_BATCH]
            if not keys:
                return
            waiters = [pending.pop(key) for key in keys]
            self.batches += 1
            try:
                values = await self._fetch_many(keys)
            except CacheUnavailableError as exc:
                for futures in waiters:
                    _settle(futures, exc)
                return
            except BaseException as exc:
                # Cancelled (the cache is closing): the readers must not wait forever.
                failed = CacheUnavailableError(f"{self._kind} read abandoned: {type(exc).__name__}")
                for futures in waiters:
                    _settle(futures, failed)
                raise
            if not isinstance(values, list | tuple) or len(values) != len(keys):
                # Not a server's answer to these keys (a proxy's, say): no value can be
                # told from another, and no reader may wait for one.
                count = len(values) if isinstance(values, list | tuple) else type(values).__name__
                wrong = CacheUnavailableError(
                    f"{self._kind} answered {count} values for {len(keys)} keys"
                )
                for futures in waiters:
                    _settle(futures, wrong)
                return
            for futures, value in zip(waiters, values, strict=True):
                for future in futures:
                    if not future.done():
                        future.set_result(value)
        finally:
            self._in_flight -= 1
            if self._pending:
                self._start_batches()


def _settle(futures: list[asyncio.Future[Any]], exc: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)
