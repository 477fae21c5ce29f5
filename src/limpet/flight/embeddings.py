"""Per-input single-flight across processes for ``embed()``, batched.

Each input this process must send takes its own lease (``RedisFlight``, one ``SET NX``
per input, concurrently). An input whose lease another process holds is followed: its
vector is read from the shared tier when that process stores it (or, if it dies, taken
over). The inputs this process leads are not sent one by one: they wait until every input
of the call has either led or started following, and then go upstream together, in the
usual batches; an input taken over later goes in a batch of its own moment.

Cost, per input sent: one ``SET NX``, one more read of the shared tier once the lease is
held (another process may have stored the vector since this call's lookup), and one
release script (which stores the vector and drops the lease), all concurrent rather than
serialised; per input followed: a read, a subscription registration and a lease check
per ``poll`` of waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from limpet.flight.coalesce import RedisFlight

__all__ = ["SharedFetch", "fetch_shared"]

# What one batch of inputs brought back: each key's vector, or the error of its request.
SendResults = Mapping[str, bytes | BaseException]


class SharedFetch:
    """What ``fetch_shared`` found: vectors by key, which of them another process sent,
    and the error of every input that failed."""

    __slots__ = ("failed", "from_others", "vectors")

    def __init__(self) -> None:
        self.vectors: dict[str, bytes] = {}
        self.from_others: set[str] = set()
        self.failed: dict[str, BaseException] = {}


async def fetch_shared(
    flight: RedisFlight[bytes],
    texts: Mapping[str, str],
    send: Callable[[list[tuple[str, str]]], Awaitable[SendResults]],
    read: Callable[[str], Awaitable[bytes | None]],
    share: Callable[[str, bytes], Awaitable[tuple[bytes | None, float]]],
) -> SharedFetch:
    """The vectors of ``texts`` (by key), each sent upstream by one process only.

    Args:
        flight: the cross-process leases and notices.
        texts: the inputs by key.
        send: sends a batch of (key, text) upstream; never raises, gives each key's
            vector or its error.
        read: a key's vector from the shared tier, or None.
        share: stores a vector this process got, and gives its entry bytes and TTL for
            the flight to publish (None: nothing stored).
    """
    loop = asyncio.get_running_loop()
    fetched = SharedFetch()
    undecided = set(texts)
    pending: dict[str, asyncio.Future[bytes]] = {}
    sending: set[asyncio.Future[None]] = set()

    async def run(batch: dict[str, asyncio.Future[bytes]]) -> None:
        results: SendResults = {}
        try:
            results = await send([(key, texts[key]) for key in batch])
        finally:
            for key, future in batch.items():
                if not future.done():
                    _settle(future, results.get(key))  # None: cancelled

    def flush() -> None:
        # Only once every input has led or started following: one set of batches, not
        # one request per input as the leases come back.
        if undecided or not pending:
            return
        batch = dict(pending)
        pending.clear()
        task = asyncio.ensure_future(run(batch))
        sending.add(task)
        task.add_done_callback(sending.discard)

    def decided(key: str) -> None:
        if key in undecided:
            undecided.discard(key)
            flush()

    async def one(key: str) -> tuple[bytes, bool]:
        async def lead() -> tuple[bytes, bytes | None, float]:
            # Once more, lease in hand: another process may have stored it since this
            # call's lookup (then nothing is sent, and its followers find it).
            stored = await read(key)
            if stored is not None:
                fetched.from_others.add(key)
                decided(key)
                return stored, None, 0.0
            future: asyncio.Future[bytes] = loop.create_future()
            pending[key] = future
            decided(key)
            flush()  # a takeover after the first flush goes at once
            vector = await future
            data, ttl = await share(key, vector)
            return vector, data, ttl

        async def follow() -> bytes | None:
            decided(key)
            return await read(key)

        try:
            return await flight.do(key, lead, follow)
        finally:
            decided(key)

    keys = list(texts)
    try:
        outcomes = await asyncio.gather(*(one(key) for key in keys), return_exceptions=True)
    finally:
        for task in list(sending):
            task.cancel()
    for key, outcome in zip(keys, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, Exception):
                raise outcome
            fetched.failed[key] = outcome
            continue
        vector, led = outcome
        fetched.vectors[key] = vector
        if not led:
            fetched.from_others.add(key)
    return fetched


def _settle(future: asyncio.Future[bytes], result: bytes | BaseException | None) -> None:
    if isinstance(result, bytes):
        future.set_result(result)
    elif result is None:
        future.cancel()
    else:
        future.set_exception(result)
        future.exception()  # seen: its flight may have been given up on
