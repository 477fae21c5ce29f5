"""Leases and completion notices on Redis: the ``FlightStore`` behind ``RedisFlight``.

A lease is ``token:0`` set only if the key is free, with a PX: it always has a TTL.
Renewing rewrites it as ``token:n`` (n counting renewals) with a fresh TTL, so followers
see a live leader's lease change (the token records how long its holder's lease is, so
that they wait that long: ``limpet.flight.lease_tokens``); taking over a stale one and
releasing check the value in Lua, so a leader whose lease expired can never drop a
successor's. Taking a lease
(acquiring, taking over) also succeeds when this token holds it already: redis-py sends
a command again on a fresh connection when the first one dropped, and the first may
have run with only its reply lost; without that, the leader would find its own lease
and wait on it as a follower, for a whole lease. Release stores the entry, drops the
lease and publishes the notice in one script, so no follower can see the lease gone
before the entry is there; an entry Redis refuses (full, under ``noeviction``) stops
neither the lease being dropped nor the notice, which then says ``ABANDONED``. Release
and renewal go through an open breaker (each within the write budget): a lease left
behind stalls every other process.

Notices go out on one channel per prefix; each process keeps a single subscription and
hands notices to the keys it waits for. A notice is ``key \n signature \n body``. With
the cache's ``hmac_key`` the signature is HMAC-SHA256 over the channel, key and body,
and only a notice that carries a valid one is ``verified``; one that does not is reduced
to a bare hint (nothing in it is believed). Without a key nothing is verified.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from typing import TYPE_CHECKING

import orjson

from limpet.cache.notices import error_fields, error_from_fields, sent_at_of, sent_now
from limpet.errors import CacheUnavailableError
from limpet.flight.store import FlightNotice, FlightOutcome

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

    from limpet.cache.redis.backend import RedisCache

__all__ = ["RedisFlightStore"]

logger = logging.getLogger("limpet.coalesce")

# ARGV[1] is the leader's token; the lease holds "token:renewals".
_RENEW = """
local held = redis.call('GET', KEYS[1])
local mine = ARGV[1] .. ':'
if held and string.sub(held, 1, #mine) == mine then
  local renewals = (tonumber(string.sub(held, #mine + 1)) or 0) + 1
  redis.call('SET', KEYS[1], mine .. string.format('%d', renewals), 'PX', ARGV[2])
  return 1
end
return 0
"""

# ARGV[1] is the lease the caller takes ("token:0"): already its own, it is taken.
_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if held == ARGV[1] then
  return 1
end
return 0
"""

_TAKE_OVER = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
if held == ARGV[2] then
  return 1
end
return 0
"""

# ARGV[5] is the notice; ARGV[6] the one sent instead when the entry is refused (a full
# Redis under noeviction answers OOM). pcall: with call, that error would end the script
# before the lease is dropped and the notice sent, and followers would wait a lease.
_RELEASE = """
local notice = ARGV[5]
local stored = 1
if ARGV[3] ~= '0' then
  local reply = redis.pcall('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  if type(reply) == 'table' and reply.err then
    notice = ARGV[6]
    stored = 0
  end
end
local held = redis.call('GET', KEYS[1])
local mine = ARGV[1] .. ':'
if held and string.sub(held, 1, #mine) == mine then
  redis.call('DEL', KEYS[1])
end
redis.call('PUBLISH', ARGV[4], notice)
return stored
"""

_SEPARATOR = b"\n"
_ABANDONED = FlightNotice(FlightOutcome.ABANDONED)
_UNSHARED = FlightNotice(FlightOutcome.UNSHARED)


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
    connection is opened on the first ``watch`` and closed with the cache. Notices are
    signed with ``hmac_key`` (the cache's by default).
    """

    __slots__ = (
        "_cache",
        "_channel",
        "_hmac_key",
        "_pubsub",
        "_reader",
        "_subscribing",
        "_watches",
    )

    def __init__(self, cache: RedisCache, hmac_key: bytes | None = None) -> None:
        self._cache = cache
        self._hmac_key = hmac_key if hmac_key is not None else cache.hmac_key
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
        millis = _millis(lease)
        result = await cache.run(
            "EVAL acquire",
            cache.write_timeout,
            lambda: cache.redis.eval(_ACQUIRE, 1, lock, token + ":0", str(millis)),
        )
        return bool(result)

    async def renew(self, key: str, token: str, lease: float) -> bool:
        cache, lock = self._cache, self._lock_key(key)
        result = await cache.run(
            "EVAL renew",
            cache.write_timeout,
            lambda: cache.redis.eval(_RENEW, 1, lock, token, str(_millis(lease))),
            gated=False,  # a live leader must keep its lease whatever this breaker thinks
        )
        return bool(result)

    async def holder(self, key: str) -> str | None:
        cache, lock = self._cache, self._lock_key(key)
        value = await cache.run("GET lease", cache.read_timeout, lambda: cache.redis.get(lock))
        if value is None:
            return None
        # Whatever its bytes (a lease another writer left), read back exactly by
        # ``take_over``: a lossy decoding would never match them, and nobody could take
        # it over.
        return value.decode(errors="surrogateescape") if isinstance(value, bytes) else str(value)

    async def take_over(self, key: str, seen: str, token: str, lease: float) -> bool:
        cache, lock = self._cache, self._lock_key(key)
        stale = seen.encode(errors="surrogateescape")  # the very bytes ``holder`` read
        result = await cache.run(
            "EVAL take over",
            cache.write_timeout,
            lambda: cache.redis.eval(_TAKE_OVER, 1, lock, stale, token + ":0", str(_millis(lease))),
        )
        return bool(result)

    async def release(
        self, key: str, token: str, notice: FlightNotice, entry: bytes | None, ttl: float
    ) -> None:
        cache = self._cache
        millis = str(_millis(ttl)) if entry is not None and ttl > 0 else "0"
        if millis == "0" and notice.outcome is FlightOutcome.STORED:
            notice = _ABANDONED  # past its TTL, nothing to read: one follower takes over
        message = self._message(key, _encode_notice(notice))
        # Sent instead when Redis refuses the entry: followers call, rather than reading
        # an entry that is not there and then waiting on one another's leases.
        unstored = message if millis == "0" else self._message(key, _encode_notice(_UNSHARED))
        full = cache.redis_key(key)
        stored = await cache.run(
            "EVAL release",
            cache.write_timeout,
            lambda: cache.redis.eval(
                _RELEASE,
                2,
                self._lock_key(key),
                full,
                token,
                entry or b"",
                millis,
                self._channel,
                message,
                unstored,
            ),
            gated=False,  # a lease left behind would stall every other process
        )
        if entry and stored == 1 and millis != "0":
            cache.landed(full, entry)

    def _message(self, key: str, body: bytes) -> bytes:
        raw_key = key.encode()
        return raw_key + _SEPARATOR + self._signature(raw_key, body) + _SEPARATOR + body

    def _signature(self, raw_key: bytes, body: bytes) -> bytes:
        if self._hmac_key is None:
            return b""
        signed = self._channel.encode() + _SEPARATOR + raw_key + _SEPARATOR + body
        return hmac.new(self._hmac_key, signed, hashlib.sha256).hexdigest().encode()

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
            pubsub = cache.notices_pubsub()
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
        raw_key, _, rest = data.partition(_SEPARATOR)
        watches = self._watches.get(raw_key.decode(errors="replace"))
        if not watches:
            return
        notice = self._notice(raw_key, rest)
        for watch in watches:
            watch.deliver(notice)

    def _notice(self, raw_key: bytes, rest: bytes) -> FlightNotice:
        """What a follower may make of a message: verified only under a valid signature;
        anything else is at most a hint to look again."""
        signature, separator, body = rest.partition(_SEPARATOR)
        verified = self._hmac_key is not None and hmac.compare_digest(
            signature, self._signature(raw_key, body)
        )
        if not separator or (self._hmac_key is not None and not verified):
            return _ABANDONED  # forged, garbled or foreign
        try:
            notice = _decode_notice(body)
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            return _ABANDONED
        return FlightNotice(notice.outcome, notice.error, verified, notice.sent_at)

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            except Exception as exc:
                raise CacheUnavailableError(f"closing flight notices failed: {exc}") from exc


def _millis(seconds: float) -> int:
    """Milliseconds for PX, at least 1: a lease or entry always has a TTL."""
    return max(int(seconds * 1000), 1)


def _encode_notice(notice: FlightNotice) -> bytes:
    if notice.error is None:
        return notice.outcome.value.encode()
    fields = {"outcome": notice.outcome.value, **error_fields(notice.error)}
    return orjson.dumps(fields | sent_now())


def _decode_notice(raw: bytes) -> FlightNotice:
    if not raw.startswith(b"{"):
        return FlightNotice(FlightOutcome(raw.decode()))
    fields = orjson.loads(raw)
    outcome, error = FlightOutcome(fields["outcome"]), error_from_fields(fields)
    return FlightNotice(outcome, error, sent_at=sent_at_of(fields))
