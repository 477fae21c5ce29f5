"""Single-flight across processes: leases and completion notices in a shared store.

``FlightStore`` (``limpet.flight.store``) is what a shared cache tier provides
(``RedisCache``, ``MemcachedCache``); ``RedisFlight`` runs one leader per key among every
process sharing it, and followers wait for the leader's entry or its ``FlightNotice``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from limpet.config import FlightConfig
from limpet.errors import (
    APIStatusError,
    CacheRejectedError,
    CacheTimeoutError,
    CacheUnavailableError,
)
from limpet.flight.lease_tokens import holders_lease, lease_token
from limpet.flight.store import FlightNotice, FlightOutcome, FlightStore, FlightWatch
from limpet.http.retry import should_retry

# The name it has always logged under, so existing log filters keep matching.
logger = logging.getLogger("limpet.coalesce")

#: Seconds the leader waits for its renewal task to stop before releasing the lease.
_RENEWAL_STOP_TIMEOUT = 1.0
# Seconds a follower whose leader's lease is gone waits for that leader's notice.
_LAST_LOOK = 0.05
#: Seconds a follower rides out a store that does not answer its looks (a stall of a
#: moment: a failover, a slow disk), or whose breaker those looks opened, before calling
#: upstream itself; at most a lease. Longer than a breaker's cool-down (2 s), so that its
#: probe can find the store back.
RIDE_OUT = 3.0
#: Seconds a leader's wall clock may run behind a follower's: a signed error notice sent
#: longer before the follower began to follow is taken for a replay, and not raised (its
#: followers then lead, one after another). Generous: hosts' clocks drift apart by far
#: less, and a replay within it repeats an error that was real moments ago.
NOTICE_CLOCK_SKEW = 30.0
#: Leases whose release failed, kept to be released again: at most this many (past it,
#: the oldest is let go; its lease expires by itself).
_MAX_UNRELEASED = 256
#: Seconds before the first attempt to release them again, doubling up to the last.
_RETRY_FIRST = 0.05
_RETRY_MAX = 1.0
#: Seconds after its release failed that a lease is let go, the store still unreachable.
_RETRY_FOR = 600.0
_ABANDONED = FlightNotice(FlightOutcome.ABANDONED)
#: Statuses that answer the credentials a call sent rather than the request: a key
#: revoked or unknown (401), an account out of credits (402, naming the account), a key
#: not allowed the model (403). Another credential's call of the same request may succeed.
CREDENTIAL_FAILURES = frozenset({401, 402, 403})


R = TypeVar("R")
T = TypeVar("T")


class Unshareable:
    """What ``lead()`` gives for its entry when no store would keep the answer (larger
    than the cache takes, refused): its followers then call at once, rather than each
    take the lease over in turn to be refused alike. (None: nothing stored this time, as
    of a stream cut short: one follower takes over.)"""

    __slots__ = ()


#: The one ``Unshareable``.
UNSHAREABLE = Unshareable()
#: What ``lead()`` gives to share: the entry's bytes, ``UNSHAREABLE`` or None.
Shared = bytes | Unshareable | None


def kept(stored: tuple[bytes, float] | None) -> tuple[Shared, float]:
    """What ``lead()`` gives to share of an answer the cache was given to store: the
    bytes stored and their TTL, or ``UNSHAREABLE`` when it kept none of it (too large,
    past its TTL, not encodable: ``TieredCache.set``'s None)."""
    return (UNSHAREABLE, 0.0) if stored is None else stored


class _NoNotices:
    """A watch that never hears anything, so a follower relies on its polling."""

    async def next(self) -> FlightNotice:
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable: the future above is never resolved")

    def close(self) -> None:
        pass


async def _to_the_end(
    work: Awaitable[T],
) -> tuple[asyncio.Future[T], asyncio.CancelledError | None]:
    """Run ``work`` to its end even when this task is cancelled meanwhile: its future,
    done, and the cancellation that came meanwhile, if one did, for the caller to raise
    once it has acted on the outcome. (A lease command cut short may still reach the
    store, after whatever was sent to undo it.)"""
    pending = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
    while not pending.done():
        try:
            await asyncio.wait({pending})  # unlike a shield, never raises its error
        except asyncio.CancelledError as exc:
            cancelled = exc
    return pending, cancelled


class _MaybeTaken(CacheUnavailableError):
    """Taking a lease failed in a way that may have taken it: its reply was lost or late."""


def _maybe_taken(taking: asyncio.Future[bool]) -> bool:
    """Whether a finished acquire or take-over may have got its taker the lease: it did,
    or it ended without an answer, unless the store says it never took effect."""
    if taking.cancelled():
        return True
    error = taking.exception()
    return not isinstance(error, CacheRejectedError) if error is not None else taking.result()


async def _pending_notice(watch: FlightWatch, within: float) -> FlightNotice | None:
    """The notice ``watch`` has, or gets ``within`` seconds, else None."""
    try:
        async with asyncio.timeout(within):
            return await watch.next()
    except TimeoutError:
        return None


class _Unshared(Exception):
    """The leader's answer is in no store: there is nothing to follow."""


def _heed(notice: FlightNotice | None, since: float) -> None:
    """Act on a leader's notice, if it calls for more than a look at the cache.

    Raises:
        APIStatusError: the leader's final error, when a notice the store vouches for
            carries one and was sent since the follower began to follow (``since``, by
            this process's wall clock, give or take ``NOTICE_CLOCK_SKEW``): an older one,
            however well signed, is a replay of an earlier flight's.
        _Unshared: the leader has its answer but no store would keep it (too large,
            refused). Following on, the followers would each lead in turn, each waiting
            for the one before, to be refused alike: they call at once instead. Taken on
            trust, as an ``ABANDONED`` notice is: a forged one costs every follower's
            call, never an answer (as much as one able to publish costs deleting leases).
    """
    if notice is None:
        return
    if notice.outcome is FlightOutcome.UNSHARED:
        raise _Unshared
    if (
        notice.error is not None
        and notice.verified
        and notice.sent_at is not None
        and notice.sent_at >= since - NOTICE_CLOCK_SKEW
    ):
        raise notice.error


class RedisFlight(Generic[R]):
    """Single-flight across processes: one leader per key among every process sharing
    the store; the others wait for its entry.

    A caller first takes the key's lease (set if free, with a TTL and a random token).
    The leader renews it every ``lease / 3`` while its call runs, then stores the entry,
    drops the lease and publishes completion in one atomic step, on every way out
    (cancelled included, and even while its breaker is open). A follower registers for
    the notice first, then re-checks the cache (so a completion between the two cannot
    be missed), then waits, checking every ``poll`` seconds who holds the lease: a lease
    that vanished without an entry, or that nobody renewed for a whole lease (a leader
    stuck, or a lease some other writer left without a TTL), is taken over by one
    follower. The lease is its holder's: its token records the holder's ``lease``
    (``limpet.flight.lease_tokens``), so that a follower configured with a shorter one
    never takes a live leader's over; a lease that records none (an older build's) is
    judged by the follower's own. A follower that waited ``follow_timeout`` calls upstream itself:
    correctness over savings. With the store unreachable, calls go upstream from each
    process. A leader whose answer no store would keep (too large, refused) says so
    (``UNSHARED``): its followers then call at once, rather than one after another.

    **Errors across processes.** A follower raises a leader's final error only when the
    notice is verified (signed with the cache's ``hmac_key``): anyone who can PUBLISH to
    Redis could otherwise hand it a forged one. Without a key an error notice is a hint:
    each follower process re-reads the entry, and one at a time (the lease serialises
    them) takes over and makes the call itself, so a failing request costs one upstream
    call per process instead of one in all. Set ``hmac_key`` to get the latter safely.

    **Releases that fail.** A release the store did not answer (Redis paused, say, while
    a lease was being taken: the acquire may land when it resumes, after the release
    was given up on) is sent again in the background, from 50 ms after to once a second,
    until the store answers, for at most ten minutes and 256 leases; each is checked
    against its token, so it never drops another leader's lease, and its notice tells
    followers to look again. ``aclose()`` stops it.

    **Errors of a credential.** A lease is per entry, and under
    ``cache_scope="namespace"`` an entry is shared by callers of different credentials,
    so a follower may have sent other credentials than its leader. Such a flight
    (``shared_credentials=True``) never publishes a ``CREDENTIAL_FAILURES`` error (401,
    402, 403) as final: its notice says ``ABANDONED``, and one follower takes over and
    calls with its own credentials, as from a leader gone. (Each process of the failing
    credential then calls once, in turn; an answer stored serves the rest.) In this
    process the flights in front of this one are per credential already
    (``Keying.flight_key``). A credential-scoped Client's followers all send the
    leader's credentials, and get its 401 with no call of their own.

    Use it behind ``SingleFlight``, so that one caller per process takes part.

    Args:
        store: the shared leases and notices (``RedisCache`` provides them).
        config: lease, poll and follower timeout.
        shared_credentials: whether the callers of one key may send different
            credentials (``cache_scope="namespace"``).
    """

    __slots__ = (
        "_failing",
        "_releasing",
        "_unreleased",
        "config",
        "lease_checks",
        "shared_credentials",
        "store",
        "takeovers",
    )

    def __init__(
        self,
        store: FlightStore,
        config: FlightConfig | None = None,
        *,
        shared_credentials: bool = False,
    ) -> None:
        self.store = store
        self.config = config or FlightConfig()
        self.shared_credentials = shared_credentials
        #: Times a follower stopped following and led: the lease vanished, went stale,
        #: or an unverified error ended the flight it followed.
        self.takeovers = 0
        #: Times a follower asked who holds a lease (about one per ``poll`` of waiting).
        self.lease_checks = 0
        self._failing: set[str] = set()
        # (key, token) -> when its release failed, oldest first.
        self._unreleased: dict[tuple[str, str], float] = {}
        self._releasing: asyncio.Task[None] | None = None

    @property
    def unreleased(self) -> int:
        """Leases whose release failed, waiting to be released again."""
        return len(self._unreleased)

    async def aclose(self) -> None:
        """Stop releasing again the leases whose release failed, after one last try of
        each: a follower in another process would otherwise wait a whole lease for one a
        closing process holds still (those the store still refuses expire by
        themselves). Idempotent."""
        releasing, self._releasing = self._releasing, None
        if releasing is not None:
            releasing.cancel()
            await asyncio.gather(releasing, return_exceptions=True)
        unreleased, self._unreleased = self._unreleased, {}
        for key, token in unreleased:
            try:
                await self.store.release(key, token, _ABANDONED, None, 0.0)
            except CacheUnavailableError:
                return  # still unreachable: the rest expire with their leases
            except Exception:  # a store's own fault: never the end of the others'
                logger.exception("limpet: releasing a flight's lease at close failed")

    async def do(
        self,
        key: str,
        lead: Callable[[], Awaitable[tuple[R, Shared, float]]],
        read: Callable[[], Awaitable[R | None]],
        *,
        recheck: Callable[[], Awaitable[R | None]] | None = None,
    ) -> tuple[R, bool]:
        """The result for ``key``: from this process's ``lead()`` or another's entry.

        Args:
            lead: the upstream call; returns the result, the entry bytes to share (None:
                nothing to share; ``UNSHAREABLE``: nothing any follower could share) and
                their TTL.
            read: reads the key's entry from the shared cache.
            recheck: reads the entry once more, once the lease is taken, before leading
                (another process may have stored it and dropped its lease since this
                caller's miss), counting no miss; None when ``lead`` looks itself.

        Returns:
            The result, and True when this process led.
        """
        token = lease_token(self.config.lease)
        deadline = time.monotonic() + self.config.follow_timeout
        followed = False
        while True:
            # Only the lease and the wait fall back to a call of this process's own when
            # the shared tier fails: a ``lead()`` that raised has run, and must not run twice.
            try:
                acquired = await self._acquire(key, token)
                if not acquired:
                    found, leading = await self._follow(key, token, read, deadline)
            except _MaybeTaken:
                # An acquire or a take-over whose reply was lost or late may have landed:
                # led as if it had, so that such a lease is released (with its notice),
                # not left for every other process to wait on for a whole lease.
                return await self._lead(key, token, lead, held=False), True
            except CacheUnavailableError:
                result, _, _ = await lead()  # no lease of ours can be in the store
                return result, True
            except _Unshared:
                result, _, _ = await lead()  # with no lease: nobody waits for this one
                return result, True
            if acquired:
                if followed:
                    self.takeovers += 1
                if recheck is not None:
                    stored = await self._stored_meanwhile(key, token, recheck)
                    if stored is not None:
                        return stored, False
                return await self._lead(key, token, lead), True
            followed = True
            if leading:
                self.takeovers += 1
                return await self._lead(key, token, lead), True
            if found is not None:
                return found, False
            if time.monotonic() >= deadline:
                result, _, _ = await lead()
                return result, True

    async def _stored_meanwhile(
        self, key: str, token: str, read: Callable[[], Awaitable[R | None]]
    ) -> R | None:
        """The entry, when another process stored it between this caller's miss and its
        taking the lease (that process then dropped its lease, so the lease was free):
        read once more with the lease held, and the lease dropped again if it was there.
        Without this look, a storm's late caller would call upstream a second time."""
        abandoned = FlightNotice(FlightOutcome.ABANDONED)
        try:
            found = await read()
        except CacheUnavailableError:
            return None  # lead: the lease is ours
        except BaseException:
            await self._release(key, token, abandoned, None, 0.0)  # cancelled: not left
            raise
        if found is not None:
            await self._release(key, token, abandoned, None, 0.0)
        return found

    async def _acquire(self, key: str, token: str) -> bool:
        return await self._taking(key, token, self.store.acquire(key, token, self.config.lease))

    async def _take_over(self, key: str, seen: str, token: str) -> bool:
        taking = self.store.take_over(key, seen, token, self.config.lease)
        return await self._taking(key, token, taking)

    async def _taking(self, key: str, token: str, taking: Awaitable[bool]) -> bool:
        """Whether ``taking`` (an acquire or a take-over) got ``token`` the lease, run to
        its end even when this task is cancelled meanwhile. A command cut short may still
        reach the store after a release sent to undo it (on another connection, which the
        store may serve first: Memcached's threads do), leaving a lease no leader holds,
        which every process would wait on. So the store's answer is awaited (bounded by
        its write timeout); a lease that is, or may be, ours is released; and then the
        cancellation is raised.

        Raises:
            _MaybeTaken: the store failed to answer, and the lease may be ours.
            CacheUnavailableError: the store failed, and certainly took nothing.
        """
        pending, cancelled = await _to_the_end(taking)
        if cancelled is not None:
            if _maybe_taken(pending):
                await self._release(key, token, FlightNotice(FlightOutcome.ABANDONED), None, 0.0)
            raise cancelled
        error = None if pending.cancelled() else pending.exception()
        if isinstance(error, CacheUnavailableError) and not isinstance(error, CacheRejectedError):
            raise _MaybeTaken(f"{error} (the lease may have been taken)") from error
        return pending.result()

    async def _follow(
        self, key: str, token: str, read: Callable[[], Awaitable[R | None]], deadline: float
    ) -> tuple[R | None, bool]:
        """The entry once the leader stores it; or (None, True) when this follower took
        the lease over and must lead; or (None, False) when the lease is gone without
        an entry (or the wait timed out) and this process should try to lead."""
        since = time.time()  # a notice sent before this is no word of this flight's
        try:
            watch: FlightWatch = await self.store.watch(key)
        except CacheUnavailableError:
            watch = _NoNotices()  # no notices to be had (say, a cluster): poll alone
        lease = self.config.lease
        seen: str | None = None
        seen_at = 0.0
        stale_after = lease  # the lease of the holder ``seen``
        failing_since: float | None = None  # since when the store fails every look
        try:
            waited = False
            while True:
                try:
                    found = await read()
                    if found is not None:
                        return found, False
                    # No entry: is anyone still working on it?
                    holder = await self._holder(key) if waited else None
                except (CacheTimeoutError, CacheRejectedError):
                    # A look the store did not answer in time (or its breaker refused,
                    # after such looks) is no news: a stall of a moment would otherwise
                    # send every follower upstream, paying again for what the leader is
                    # about to store. Given up on (no lease, as an unreachable store is)
                    # after ``RIDE_OUT`` seconds; a store that refuses the connection is
                    # down, and given up on at once.
                    now = time.monotonic()
                    if failing_since is None:
                        failing_since = now
                    elif now - failing_since >= min(lease, RIDE_OUT):
                        raise
                else:
                    failing_since = None
                    if waited:
                        if holder is None:
                            # The leader is gone: its notice may already be there (a
                            # polled store's, or a message not yet read), verified.
                            _heed(await _pending_notice(watch, _LAST_LOOK), since)
                            return await read(), False  # one last look, then try to lead
                        now = time.monotonic()
                        if holder != seen:
                            seen, seen_at = holder, now  # taken or renewed: a live leader
                            # Renewed every third of its own lease, not this follower's.
                            stale_after = holders_lease(holder) or lease
                        elif now - seen_at >= stale_after and await self._take_over(
                            key, holder, token
                        ):
                            return None, True  # neither renewed nor released for a lease
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None, False
                waited = True
                _heed(await _pending_notice(watch, min(self.config.poll, remaining)), since)
                # Anything else, verified or not, is only a reason to look again.
        finally:
            watch.close()

    async def _holder(self, key: str) -> str | None:
        """Who holds ``key``'s lease now (its token), or None when nobody does."""
        self.lease_checks += 1
        return await self.store.holder(key)

    async def _lead(
        self,
        key: str,
        token: str,
        lead: Callable[[], Awaitable[tuple[R, Shared, float]]],
        *,
        held: bool = True,
    ) -> R:
        """``lead()`` while renewing the lease, then the release (entry, lease, notice).
        ``held=False``: the lease is only maybe ``token``'s (its taking failed in a way
        that may have landed); finding it is not is then no fault."""
        renewing = asyncio.get_running_loop().create_task(self._renew(key, token, held))
        notice = FlightNotice(FlightOutcome.ABANDONED)
        entry: bytes | None = None
        ttl = 0.0
        try:
            result, shared, ttl = await lead()
            if isinstance(shared, bytes):
                entry, notice = shared, FlightNotice(FlightOutcome.STORED)
            elif shared is UNSHAREABLE:
                notice = FlightNotice(FlightOutcome.UNSHARED)
            return result
        except APIStatusError as exc:
            if self._final(exc):
                notice = FlightNotice(FlightOutcome.FAILED, exc)
            raise
        finally:
            renewing.cancel()
            try:
                # Bounded: a Redis client whose socket timeout wraps sends in wait_for can
                # swallow a cancellation on Python 3.11; the lease must be released anyway.
                await asyncio.wait({renewing}, timeout=_RENEWAL_STOP_TIMEOUT)
            finally:
                await self._release(key, token, notice, entry, ttl)

    def _final(self, error: APIStatusError) -> bool:
        """Whether ``error`` is every follower's too, published as the flight's end: not
        one a retry may cure, nor one of the leader's credentials that a follower may not
        share (``shared_credentials``)."""
        if should_retry(error):
            return False
        return not (self.shared_credentials and error.status_code in CREDENTIAL_FAILURES)

    async def _release(
        self, key: str, token: str, notice: FlightNotice, entry: bytes | None, ttl: float
    ) -> None:
        """Release the lease, running to its end even when this task is cancelled
        meanwhile (its last caller gone, ``aclose()``): a release cut short before it
        reached the store would leave the lease to stall every other process for a whole
        lease, with no notice. The cancellation is raised once it is done; the wait is
        bounded by the store's write timeout."""
        releasing, cancelled = await _to_the_end(self._send_release(key, token, notice, entry, ttl))
        if cancelled is not None:
            raise cancelled
        releasing.result()

    async def _send_release(
        self, key: str, token: str, notice: FlightNotice, entry: bytes | None, ttl: float
    ) -> None:
        try:
            await self.store.release(key, token, notice, entry, ttl)
        except CacheUnavailableError as exc:
            self._fault("release", "could not release flights", exc)
            self._release_later(key, token)
        else:
            self._recovered("release")

    def _release_later(self, key: str, token: str) -> None:
        """Send ``token``'s release of ``key`` again once the store answers. Left as it
        is, the lease would stall every other process for a whole lease: a lease taken by
        an acquire whose reply was late may land only after its release failed (Redis
        paused then resumed runs both, the release first or not at all)."""
        self._unreleased.pop((key, token), None)
        self._unreleased[key, token] = time.monotonic()
        while len(self._unreleased) > _MAX_UNRELEASED:
            del self._unreleased[next(iter(self._unreleased))]
        loop = asyncio.get_running_loop()
        releasing = self._releasing
        if releasing is None or releasing.done() or releasing.get_loop() is not loop:
            self._releasing = loop.create_task(self._release_again(), name="limpet-flight-releases")

    async def _release_again(self) -> None:
        """Release the leases in ``_unreleased``, oldest first, until none is left: a
        round stops at the first the store fails to answer, and the next comes after a
        pause that doubles. Each release checks its token, so a lease since taken by
        another leader, or already dropped, is left alone; a notice of ``ABANDONED``
        sends followers to look again: they read the entry if the first release stored
        it after all (its reply lost), and otherwise one of them leads."""
        pause = _RETRY_FIRST
        while self._unreleased:
            # A backoff between attempts on a store that does not answer, not a wait.
            await asyncio.sleep(pause)
            pause = min(pause * 2, _RETRY_MAX)
            for (key, token), since in list(self._unreleased.items()):
                if time.monotonic() - since <= _RETRY_FOR:
                    try:
                        await self.store.release(key, token, _ABANDONED, None, 0.0)
                    except CacheUnavailableError:
                        # Unreachable, or not sent for now (the breaker open after the
                        # pause, no free connection): the whole round waits. A closed
                        # cache ends with ``aclose()``, a lease with ``_RETRY_FOR``.
                        break
                    except Exception:  # a store's own fault: never the end of the others'
                        logger.exception("limpet: releasing a flight's lease again failed")
                self._unreleased.pop((key, token), None)

    async def _renew(self, key: str, token: str, held: bool) -> None:
        """Keep the lease alive while the leader's call runs (LLM calls take minutes);
        stop when it is not ``token``'s, a fault only if it was ``held``."""
        while True:
            await asyncio.sleep(self.config.lease / 3)
            try:
                renewed = await self.store.renew(key, token, self.config.lease)
            except CacheUnavailableError as exc:
                self._fault("renew", "could not renew flight leases", exc)
                continue
            self._recovered("renew")
            if not renewed:
                if held:
                    self._fault("lost", "a flight lease was lost while leading", key)
                return
            held = True
            self._recovered("lost")

    def _fault(self, kind: str, what: str, detail: object) -> None:
        """Log the first fault of a kind; the rest of the outage is silent."""
        if kind not in self._failing:
            self._failing.add(kind)
            logger.warning("limpet: %s (logged once until it works again): %s", what, detail)

    def _recovered(self, kind: str) -> None:
        self._failing.discard(kind)
