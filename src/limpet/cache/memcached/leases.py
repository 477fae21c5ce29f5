"""Leases and completion notices on Memcached: the ``FlightStore`` behind ``RedisFlight``.

Memcached has no scripts and no pub/sub, so each step is built from its atomic commands:

- acquire: ``add lock token:0`` with the lease as TTL: one process wins, atomically.
- renew and release: ``gets`` the lease, and if it still holds this token, ``cas`` it (a
  new TTL and the next ``token:n`` to renew, so followers see a live leader; a TTL in
  the past to drop it), so a leader whose lease expired can never extend or drop a
  successor's. Both go through an open breaker: a lease left behind stalls others.
- take over: ``gets`` the lease, and if it still holds the value a follower saw a whole
  lease ago (nobody renewed it), ``cas`` it to the follower's token: one follower wins.
- notices: release first stores the entry, then a notice (the outcome, the leader's
  token, and a final error if there was one) under a key of its own for a few seconds,
  and only then drops the lease; so a follower never sees the lease gone before the
  entry is there. An entry the server refuses (too large for its ``-I``) or that fails
  makes the notice ``ABANDONED``; the notice is written and the lease dropped anyway.
  With the cache's ``hmac_key`` a notice is signed over its key and body, and only a
  verified one can make a follower raise the leader's error; a notice that fails its
  signature is ignored.
- watch: a follower polls the notice and the lease in one ``get_many``, with a backoff
  from 5 ms to 100 ms. A notice counts only if it carries the token of the leader the
  follower waits for, so a stale notice of an earlier flight of the key is never read as
  this one's; a lease gone without a notice means the leader died, and the follower is
  told ``ABANDONED`` so that it takes over.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import time
from typing import TYPE_CHECKING, Any

import emcache
import orjson

from limpet.cache.memcached.keys import RELATIVE_TTL_LIMIT, memcached_expiry
from limpet.cache.notices import error_fields, error_from_fields, sent_at_of, sent_now
from limpet.errors import CacheRejectedError, CacheUnavailableError
from limpet.flight.store import FlightNotice, FlightOutcome

if TYPE_CHECKING:
    from limpet.cache.memcached.backend import MemcachedCache

__all__ = ["MemcachedFlightStore"]

#: Seconds a notice stays readable: followers poll far more often than this.
_NOTICE_TTL = 10
_FIRST_POLL = 0.005
_MAX_POLL = 0.100


class _PollWatch:
    """Waits for one key's notice by polling (Memcached has no pub/sub). Each leader's
    notice is told once: it stays readable for ``_NOTICE_TTL``, long after the next
    leader took the lease, and told again it would end every wait for that one at once
    (a follower polling without pause for as long as the next leader works)."""

    __slots__ = ("_key", "_store", "_token", "_told")

    def __init__(self, store: MemcachedFlightStore, key: str, token: bytes | None) -> None:
        self._store = store
        self._key = key
        self._token = token
        self._told: bytes | None = None  # the token of the notice told last

    async def next(self) -> FlightNotice:
        """The notice of the leader this follower waits for, or ``ABANDONED`` once its
        lease is gone without one; callers bound the wait with ``asyncio.timeout``."""
        pause = _FIRST_POLL
        while True:
            try:
                raw_notice, holder = await self._store.peek(self._key)
            except CacheUnavailableError:
                # One slow poll is no news, not a reason to call upstream: try again
                # (the caller bounds the whole wait, then checks the lease itself).
                raw_notice, holder = None, self._token
            if raw_notice is not None:
                token, notice = self._store.decode(self._key, raw_notice)
                if token == self._token and token != self._told:
                    self._told = token
                    return notice
            if holder is None:
                return FlightNotice(FlightOutcome.ABANDONED)
            # A new leader took over from a dead one: wait for that one's notice.
            self._token = _token_of(holder)
            # Polling is how Memcached is watched; the backoff bounds its cost.
            await asyncio.sleep(pause)
            pause = min(pause * 2, _MAX_POLL)

    def close(self) -> None:
        pass


class MemcachedFlightStore:
    """Leases and notices for ``RedisFlight`` on the servers of a ``MemcachedCache``.

    Every call goes through the cache's ``run()``: its breaker, timeouts and error
    mapping. All of them get the write budget, reads included: they are on the miss path,
    where a read timing out would send a follower upstream. Lease TTLs are whole seconds,
    rounded up, plus one (see ``_lease_exptime``).
    """

    __slots__ = ("_cache",)

    def __init__(self, cache: MemcachedCache) -> None:
        self._cache = cache

    async def acquire(self, key: str, token: str, lease: float) -> bool:
        cache, lock = self._cache, self._cache.lock_key(key)
        exptime = _lease_exptime(lease)

        async def add(client: emcache.Client) -> bool:
            try:
                await client.add(lock, token.encode() + b":0", exptime=exptime)
            except emcache.NotStoredStorageCommandError:
                return False
            return True

        return await cache.run("add", cache.write_timeout, add)

    async def renew(self, key: str, token: str, lease: float) -> bool:
        return await self._swap_if_held(key, token, "renew", _lease_exptime(lease))

    async def holder(self, key: str) -> str | None:
        cache, lock = self._cache, self._cache.lock_key(key)
        item = await cache.run("get", cache.write_timeout, lambda c: c.get(lock))
        # Whatever its bytes (a lease another writer left), read back exactly by
        # ``take_over``: a lossy decoding would never match them, and nobody could take
        # it over.
        return None if item is None else bytes(item.value).decode(errors="surrogateescape")

    async def take_over(self, key: str, seen: str, token: str, lease: float) -> bool:
        cache, lock = self._cache, self._cache.lock_key(key)
        stale = seen.encode(errors="surrogateescape")  # the very bytes ``holder`` read
        mine, exptime = token.encode() + b":0", _lease_exptime(lease)

        async def swap(client: emcache.Client) -> bool:
            item = await client.gets(lock)
            if item is None or item.value != stale or item.cas is None:
                return False
            try:
                await client.cas(lock, mine, item.cas, exptime=exptime)
            except emcache.StorageCommandError:
                return False  # renewed, released or taken since the gets
            return True

        return await cache.run("take over", cache.write_timeout, swap)

    async def release(
        self, key: str, token: str, notice: FlightNotice, entry: bytes | None, ttl: float
    ) -> None:
        cache = self._cache
        stored: bool | None = False  # None: it may have landed
        if entry is not None and ttl > 0 and len(entry) <= cache.max_value_size:
            data, exptime = entry, memcached_expiry(ttl, time.time())
            full = cache.entry_key(key)
            # Refused (an item too large for the server's -I, with its overhead) or lost,
            # the entry is no reason to keep the lease or the notice from followers.
            try:
                await cache.run(
                    "set",
                    cache.write_timeout,
                    lambda c: c.set(full, data, exptime=exptime),
                    gated=False,
                )
                stored = True
                cache.landed(full.decode(), data)
            except CacheRejectedError:
                pass  # certainly not stored
            except CacheUnavailableError:
                stored = None  # its reply lost or late
        if notice.outcome is FlightOutcome.STORED and not stored:
            # Nothing to read: each follower calls at once. Unless the entry may have
            # landed: then one follower takes over and looks first, as from a leader gone.
            outcome = FlightOutcome.UNSHARED if stored is False else FlightOutcome.ABANDONED
            notice = FlightNotice(outcome)
        notice_key = cache.notice_key(key)
        message = _sign(cache.hmac_key, notice_key, _encode_notice(token, notice))
        try:
            await cache.run(
                "set",
                cache.write_timeout,
                lambda c: c.set(notice_key, message, exptime=_NOTICE_TTL),
                gated=False,
            )
        finally:
            # Dropped even without its notice: a follower that finds the lease gone
            # takes over. A TTL in the past: the compare-and-swap deletes the lease if it
            # is still ours.
            await self._swap_if_held(key, token, "release", -1)

    async def watch(self, key: str) -> _PollWatch:
        """Start waiting for ``key``'s current leader (read now, so a notice it leaves
        from here on is never missed)."""
        _, holder = await self.peek(key)
        return _PollWatch(self, key, None if holder is None else _token_of(holder))

    async def peek(self, key: str) -> tuple[bytes | None, bytes | None]:
        """The raw notice under ``key`` and the token holding its lease, in one read."""
        cache = self._cache
        notice_key, lock = cache.notice_key(key), cache.lock_key(key)
        found: dict[bytes, Any] = await cache.run(
            "get_many", cache.write_timeout, lambda c: c.get_many([notice_key, lock])
        )
        notice, holder = found.get(notice_key), found.get(lock)
        return (
            None if notice is None else bytes(notice.value),
            None if holder is None else bytes(holder.value),
        )

    def decode(self, key: str, raw: bytes) -> tuple[bytes | None, FlightNotice]:
        """The leader's token and notice in ``raw``, verified with the cache's
        ``hmac_key`` when it has one (a notice that fails is no notice: token None)."""
        hmac_key = self._cache.hmac_key
        signature, _, body = raw.partition(b"\n")
        if hmac_key is None:
            return _decode_notice(body)
        expected = _sign(hmac_key, self._cache.notice_key(key), body).partition(b"\n")[0]
        if not hmac.compare_digest(signature, expected):
            return None, FlightNotice(FlightOutcome.ABANDONED)
        token, notice = _decode_notice(body)
        return token, FlightNotice(notice.outcome, notice.error, True, notice.sent_at)

    async def _swap_if_held(self, key: str, token: str, command: str, exptime: int) -> bool:
        """``cas`` the lease to the next ``token:n`` with ``exptime`` if ``token`` holds it
        (an ``exptime`` in the past drops it)."""
        cache, lock, mine = self._cache, self._cache.lock_key(key), token.encode()

        async def swap(client: emcache.Client) -> bool:
            item = await client.gets(lock)
            if item is None or item.cas is None or _token_of(item.value) != mine:
                return False
            renewals = int(bytes(item.value).rpartition(b":")[2] or b"0")
            try:
                await client.cas(lock, b"%s:%d" % (mine, renewals + 1), item.cas, exptime=exptime)
            except emcache.StorageCommandError:
                return False  # changed or expired since the gets: not ours any more
            return True

        return await cache.run(command, cache.write_timeout, swap, gated=False)


def _token_of(lease: bytes | str) -> bytes:
    """The leader's token in a lease's value (``token:n``, n its renewals)."""
    raw = lease.encode() if isinstance(lease, str) else bytes(lease)
    return raw.partition(b":")[0]


def _lease_exptime(lease: float) -> int:
    """A lease's ``exptime``: one second more than asked, since Memcached's clock ticks in
    whole seconds and an item set just before a tick with an exptime of 1 would expire
    at the tick, long before its lease."""
    return min(math.ceil(lease), RELATIVE_TTL_LIMIT - 1) + 1


def _sign(hmac_key: bytes | None, notice_key: bytes, body: bytes) -> bytes:
    """``signature \\n body``: HMAC-SHA256 over the notice's key and body, or no signature
    without a key."""
    if hmac_key is None:
        return b"\n" + body
    mac = hmac.new(hmac_key, notice_key + b"\n" + body, hashlib.sha256).hexdigest()
    return mac.encode() + b"\n" + body


def _encode_notice(token: str, notice: FlightNotice) -> bytes:
    fields: dict[str, Any] = {"token": token, "outcome": notice.outcome.value}
    if notice.error is not None:
        fields |= error_fields(notice.error) | sent_now()
    return orjson.dumps(fields)


def _decode_notice(raw: bytes) -> tuple[bytes | None, FlightNotice]:
    """The leader's token and its notice; anything unreadable is an ``ABANDONED`` notice
    of no leader."""
    try:
        fields = orjson.loads(raw)
        token = str(fields["token"]).encode()
        outcome = FlightOutcome(fields["outcome"])
        if "status" not in fields:
            return token, FlightNotice(outcome)
        error = error_from_fields(fields)
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return None, FlightNotice(FlightOutcome.ABANDONED)
    return token, FlightNotice(outcome, error, sent_at=sent_at_of(fields))
