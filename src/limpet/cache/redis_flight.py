"""Leases and completion notices on Redis: the ``FlightStore`` behind ``RedisFlight``.

A lease is ``SET lock token NX PX``; renewing and releasing check the token in Lua, so a
leader whose lease expired can never drop a successor's. Release stores the entry, drops
the lease and publishes the notice in one script, so no follower can see the lease gone
before the entry is there. Notices go out on one channel per prefix; each process keeps a
single subscription and hands notices to the keys it waits for.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import orjson

from limpet.coalesce import FlightNotice, FlightOutcome
from limpet.errors import APIStatusError, CacheUnavailableError, status_error

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

    from limpet.cache.redis import RedisCache

__all__ = ["RedisFlightStore"]

logger = logging.getLogger("limpet.coalesce")

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if ARGV[3] ~= '0' then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""

_SEPARATOR = b"\n"


class _Watch:
    __slots__ = ("_notices", "_store", "key")

    def __init__(self, store: RedisFlightStore, key: str) -> None:
        self._store = store
        self.key = key
        self._notices: asyncio.Queue[FlightNotice] = asyncio.Queue()

    def deliver(self, notice: FlightNotice) -> None:
        self._notices.put_nowait(notice)

    async def next(self) -> FlightNotice:
        return await self._notices.get()

    def close(self) -> None:
        self._store.forget(self)


class RedisFlightStore:
    """Leases and notices for ``RedisFlight`` on the Redis of a ``RedisCache``.

    It shares the cache's connection pool, circuit breaker and timeouts; its one pub/sub
    connection is opened on the first ``watch`` and closed with the cache.
    """

    __slots__ = ("_cache", "_channel", "_pubsub", "_reader", "_subscribing", "_watches")

    def __init__(self, cache: RedisCache) -> None:
        self._cache = cache
        self._channel = cache.prefix + "flights"
        self._watches: dict[str, set[_Watch]] = {}
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._subscribing: asyncio.Lock | None = None

    def _lock_key(self, key: str) -> str:
        # In the entry's slot on a cluster: the release script touches both.
        return self._cache.lock_key(key)

    async def acquire(self, key: str, token: str, lease: float) -> bool:
        cache, lock = self._cache, self._lock_key(key)
        millis = max(int(lease * 1000), 1)
        result = await cache.run(
            "SET NX", cache.write_timeout, lambda: cache.redis.set(lock, token, nx=True, px=millis)
        )
        return bool(result)

    async def renew(self, key: str, token: str, lease: float) -> bool:
        cache, lock = self._cache, self._lock_key(key)
        millis = str(max(int(lease * 1000), 1))
        result = await cache.run(
            "EVAL renew",
            cache.write_timeout,
            lambda: cache.redis.eval(_RENEW, 1, lock, token, millis),
        )
        return bool(result)

    async def held(self, key: str) -> bool:
        cache, lock = self._cache, self._lock_key(key)
        return bool(await cache.run("EXISTS", cache.read_timeout, lambda: cache.redis.exists(lock)))

    async def release(
        self, key: str, token: str, notice: FlightNotice, entry: bytes | None, ttl: float
    ) -> None:
        cache = self._cache
        millis = str(max(int(ttl * 1000), 1)) if entry is not None and ttl > 0 else "0"
        message = key.encode() + _SEPARATOR + _encode_notice(notice)
        await cache.run(
            "EVAL release",
            cache.write_timeout,
            lambda: cache.redis.eval(
                _RELEASE,
                2,
                self._lock_key(key),
                cache.redis_key(key),
                token,
                entry or b"",
                millis,
                self._channel,
                message,
            ),
        )

    async def watch(self, key: str) -> _Watch:
        """Register for ``key``'s notice; returns once the subscription is confirmed, so
        a notice published after this returns is never missed."""
        await self._subscribe()
        watch = _Watch(self, key)
        self._watches.setdefault(key, set()).add(watch)
        return watch

    def forget(self, watch: _Watch) -> None:
        watches = self._watches.get(watch.key)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._watches[watch.key]

    async def aclose(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        await self._close_pubsub()

    async def _subscribe(self) -> None:
        if self._reader is not None and not self._reader.done():
            return
        if self._subscribing is None:
            self._subscribing = asyncio.Lock()
        async with self._subscribing:
            if self._reader is not None and not self._reader.done():
                return
            await self._close_pubsub()
            cache = self._cache
            pubsub = cache.redis.pubsub()
            self._pubsub = pubsub

            async def subscribe() -> None:
                await pubsub.subscribe(self._channel)
                while True:  # the confirmation: from here on no notice can be missed
                    message = await pubsub.get_message(timeout=cache.write_timeout)
                    if message is not None and message.get("type") == "subscribe":
                        return

            await cache.run("SUBSCRIBE", cache.write_timeout * 2, subscribe)
            self._reader = asyncio.get_running_loop().create_task(
                self._read(pubsub), name="limpet-flight-notices"
            )

    async def _read(self, pubsub: PubSub) -> None:
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is None or message.get("type") != "message":
                    continue
                self._dispatch(message["data"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Followers keep polling; the next watch() subscribes again.
            logger.warning("limpet: flight notices stopped: %s", exc)

    def _dispatch(self, data: object) -> None:
        if not isinstance(data, bytes) or _SEPARATOR not in data:
            return
        raw_key, _, raw_notice = data.partition(_SEPARATOR)
        watches = self._watches.get(raw_key.decode(errors="replace"))
        if not watches:
            return
        try:
            notice = _decode_notice(raw_notice)
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            notice = FlightNotice(FlightOutcome.ABANDONED)
        for watch in watches:
            watch.deliver(notice)

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            except Exception as exc:
                raise CacheUnavailableError(f"closing flight notices failed: {exc}") from exc


def _encode_notice(notice: FlightNotice) -> bytes:
    if notice.error is None:
        return notice.outcome.value.encode()
    error = notice.error
    return orjson.dumps(
        {
            "outcome": notice.outcome.value,
            "status": error.status_code,
            "message": error.message,
            "body": error.body,
            "request_id": error.request_id,
            "endpoint": error.endpoint,
        }
    )


def _decode_notice(raw: bytes) -> FlightNotice:
    if not raw.startswith(b"{"):
        return FlightNotice(FlightOutcome(raw.decode()))
    fields = orjson.loads(raw)
    status = int(fields["status"])
    error: APIStatusError = status_error(status)(
        str(fields["message"]),
        status_code=status,
        body=str(fields.get("body") or ""),
        request_id=fields.get("request_id"),
        endpoint=fields.get("endpoint"),
    )
    return FlightNotice(FlightOutcome(fields["outcome"]), error)
