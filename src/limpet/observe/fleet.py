"""Fleet-wide counters in Redis, per model: what every process sharing a cache did.

Calls add to in-process deltas (a dict update, no I/O); a background task sends them as
one pipelined batch of ``HINCRBY``/``HINCRBYFLOAT`` every ``flush_interval`` seconds, so
no call ever waits on Redis for its counters. A batch is applied at most once: deltas that
certainly did not reach Redis (refused, breaker open, or failed before the increments were
sent) are kept and sent with the next batch; a batch whose increments were sent but whose
answer never came (a late reply, a dropped connection) is dropped, for Redis may have
applied it, and the rows are running totals that a batch counted twice would spoil for
good. ``aclose()`` waits for a batch on its way, then sends what is left.
``read_fleet_stats`` is what ``limpet stats`` shows.

The caller names the model, so the rows are capped twice (``limpet.observe.model_cap``):
a process keeps deltas for the first ``MAX_MODELS`` models it sees and counts the rest
under ``OTHER_MODEL`` (so the deltas kept while Redis is down are at most that many rows
of ten numbers, however long it stays down); and Redis admits a model to the fleet's set
only while the set has fewer than ``MAX_MODELS`` others (a script on that one key, so
every process and every restart shares the one cap), the rest again counting under
``OTHER_MODEL``. Rows never expire: they are the fleet's running totals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import defaultdict
from functools import partial
from typing import TYPE_CHECKING, Any

from limpet.errors import CacheRejectedError, CacheUnavailableError
from limpet.models import CacheStatus, Completion, Cost, Usage
from limpet.observe.model_cap import MAX_MODELS, OTHER_MODEL, ModelCap

if TYPE_CHECKING:
    from limpet.cache.redis.backend import RedisCache

__all__ = ["DEFAULT_FLUSH_INTERVAL", "FLEET_FIELDS", "FleetCounters", "read_fleet_stats"]

logger = logging.getLogger("limpet.fleet")

DEFAULT_FLUSH_INTERVAL = 1.0

#: Integer counters, then dollar amounts.
FLEET_FIELDS = (
    "hits",
    "misses",
    "coalesced",
    "bypassed",
    "errors",
    "cancelled",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
    "saved_usd",
)
_FLOATS = frozenset({"cost_usd", "saved_usd"})
_STATUS_FIELD = {
    CacheStatus.HIT: "hits",
    CacheStatus.MISS: "misses",
    CacheStatus.COALESCED: "coalesced",
    CacheStatus.BYPASS: "bypassed",
}


# Which of ARGV[3..] may have rows of their own: the members of KEYS[1], and new ones while
# it has fewer than ARGV[1] members besides ARGV[2] (the row of the rest), which it then
# gains. One key, so it runs on a cluster too.
_ADMIT = """
local other = ARGV[2]
local room = tonumber(ARGV[1]) - redis.call('SCARD', KEYS[1])
    + redis.call('SISMEMBER', KEYS[1], other)
local admitted = {}
for i = 3, #ARGV do
    local model = ARGV[i]
    if model == other or redis.call('SISMEMBER', KEYS[1], model) == 1 then
        admitted[#admitted + 1] = 1
    elseif room > 0 then
        redis.call('SADD', KEYS[1], model)
        room = room - 1
        admitted[#admitted + 1] = 1
    else
        admitted[#admitted + 1] = 0
    end
end
return admitted
"""


def _models_key(cache: RedisCache) -> str:
    return cache.redis_key("stats-models")


def _stats_key(cache: RedisCache, model: str) -> str:
    return cache.redis_key("stats:" + model)


class FleetCounters:
    """Counts calls per model into Redis, batched in the background.

    At most ``MAX_MODELS`` models have rows of their own, in this process and in Redis;
    the calls of the rest count under ``OTHER_MODEL``.

    Args:
        cache: the Redis tier whose connection, breaker and timeouts it shares.
        flush_interval: seconds between batches.
    """

    __slots__ = ("_cache", "_closing", "_flusher", "_models", "_pending", "flush_interval")

    def __init__(
        self, cache: RedisCache, *, flush_interval: float = DEFAULT_FLUSH_INTERVAL
    ) -> None:
        self._cache = cache
        self.flush_interval = flush_interval
        self._pending: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._flusher: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._models = ModelCap()

    def record(self, model: str, completion: Completion) -> None:
        """Count one finished call (no I/O)."""
        counts = self._pending[self._models.row(model)]
        counts[_STATUS_FIELD[completion.cache]] += 1
        # What its upstream answer spent was counted as it came (``record_spent``).
        if completion.cost is not None:
            self.record_saved(model, completion.cost.saved_usd)
        self._schedule()

    def record_saved(self, model: str, saved_usd: float) -> None:
        """Count what one call saved (no I/O): a completion's, or an ``embed()`` call's
        hits and coalesced inputs'."""
        if saved_usd and math.isfinite(saved_usd):
            self._pending[self._models.row(model)]["saved_usd"] += saved_usd
            self._schedule()

    def record_spent(self, model: str, usage: Usage, cost: Cost | None) -> None:
        """Count what one upstream answer cost, as it comes (no I/O): its tokens and
        dollars, as the Client's ``Stats`` count them."""
        counts = self._pending[self._models.row(model)]
        counts["prompt_tokens"] += usage.prompt_tokens
        counts["completion_tokens"] += usage.completion_tokens
        counts["cached_tokens"] += usage.cached_tokens
        if cost is not None and math.isfinite(cost.usd):
            counts["cost_usd"] += cost.usd
        self._schedule()

    def record_error(self, model: str) -> None:
        """Count one call that raised (no I/O)."""
        self._count(model, "errors")

    def record_cancelled(self, model: str) -> None:
        """Count one call that ended with neither an answer nor an error (no I/O)."""
        self._count(model, "cancelled")

    def _count(self, model: str, field: str) -> None:
        self._pending[self._models.row(model)][field] += 1
        self._schedule()

    async def flush(self) -> None:
        """Send the deltas counted so far now."""
        pending, self._pending = self._pending, defaultdict(lambda: defaultdict(float))
        if not pending:
            return
        cache = self._cache
        sent = False  # the increments went out: from here on, Redis may have applied them

        async def send() -> None:
            nonlocal sent
            rows = await _admitted(cache, pending)
            pipe = cache.redis.pipeline(transaction=False)
            for model, counts in rows.items():
                key = _stats_key(cache, model)
                pipe.sadd(_models_key(cache), model)
                for field, value in counts.items():
                    if field in _FLOATS:
                        pipe.hincrbyfloat(key, field, value)
                    else:
                        pipe.hincrby(key, field, int(value))
            sent = True
            # Each increment's own answer: one Redis refuses (a field past i64) is dropped,
            # not kept, for the others were applied, and sent again they would count twice.
            refused = [
                r for r in await pipe.execute(raise_on_error=False) if isinstance(r, Exception)
            ]
            if refused:
                logger.warning(
                    "limpet: Redis refused %d fleet counter increments (dropped): %s",
                    len(refused),
                    refused[0],
                )

        try:
            await cache.run("fleet counters", cache.write_timeout, send)
        except CacheUnavailableError as exc:
            if sent and not isinstance(exc, CacheRejectedError):
                # No way to tell whether they landed: dropping them may lose one batch,
                # sending them again may count it twice, forever.
                logger.warning(
                    "limpet: fleet counters dropped, Redis may have applied them: %s", exc
                )
                return
            self._keep(pending)
            logger.debug("limpet: fleet counters kept for later: %s", exc)
        except asyncio.CancelledError:
            if not sent:
                self._keep(pending)
            raise

    def _keep(self, pending: dict[str, dict[str, float]]) -> None:
        """Put ``pending`` back, for the next batch: at most MAX_MODELS + 1 rows (ModelCap)."""
        for model, counts in pending.items():
            for field, value in counts.items():
                self._pending[model][field] += value

    async def aclose(self) -> None:
        """Send what is left (best effort): the batch the background task may be sending
        is waited for (within its own ``write_timeout``), not cancelled, then the rest."""
        self._closing.set()  # wakes a background task still waiting out its interval
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            await asyncio.gather(flusher, return_exceptions=True)
        await self.flush()

    def _schedule(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_later(), name="limpet-fleet-counters"
            )

    async def _flush_later(self) -> None:
        # Woken early by aclose(), never cancelled by it: a batch cancelled on its way to
        # Redis could neither be kept (it may have landed) nor be known to have landed.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.flush_interval):
                await self._closing.wait()
        await self.flush()


async def _admitted(
    cache: RedisCache, pending: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """``pending`` with the rows of the models Redis has no room for added into
    ``OTHER_MODEL``'s."""
    models = list(pending)
    answer = await cache.redis.eval(
        _ADMIT, 1, _models_key(cache), str(MAX_MODELS), OTHER_MODEL, *models
    )
    rows: dict[str, dict[str, float]] = {}
    for model, admitted in zip(models, answer, strict=True):
        row = rows.setdefault(model if admitted else OTHER_MODEL, defaultdict(float))
        for field, value in pending[model].items():
            row[field] += value
    return rows


async def read_fleet_stats(
    cache: RedisCache, *, skipped: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Every model's fleet counters, with ``requests`` and ``hit_rate`` derived.

    A row that cannot be read (a model name that is not UTF-8, a counter that is not a
    number >= 0, a dollar amount that is not finite: written by something else, or
    damaged) is left out, the others still read; ``skipped`` gets one line per row left
    out, naming its Redis key and why.
    """
    redis = cache.redis
    models_key = _models_key(cache)
    models = await cache.run("SMEMBERS", cache.read_timeout, lambda: redis.smembers(models_key))
    result: dict[str, dict[str, Any]] = {}
    for raw in sorted(models):
        try:
            model = raw.decode() if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError:
            if skipped is not None:
                skipped.append(f"{models_key}: member {raw!r} is not UTF-8")
            continue
        key = _stats_key(cache, model)
        fields = await cache.run("HGETALL", cache.read_timeout, partial(redis.hgetall, key))
        try:
            row = _fleet_row(fields)
        except ValueError as exc:
            if skipped is not None:
                skipped.append(f"{key}: {exc}")
            continue
        result[model] = row
    return result


def _fleet_row(fields: dict[Any, Any]) -> dict[str, Any]:
    """One model's counters as stored, with ``requests`` and ``hit_rate`` derived.

    Raises:
        ValueError: a counter is not an int >= 0, or a dollar amount not finite.
    """
    row: dict[str, Any] = {}
    for name in FLEET_FIELDS:
        value = fields.get(name.encode(), b"0")
        try:
            row[name] = float(value) if name in _FLOATS else int(value)
        except ValueError:
            raise ValueError(f"field {name} is {_shown(value)}, not a number") from None
        if name in _FLOATS and not math.isfinite(row[name]):
            raise ValueError(f"field {name} is {_shown(value)}, not a finite number")
        if name not in _FLOATS and row[name] < 0:
            raise ValueError(f"field {name} is {_shown(value)}, below 0")
    served = row["hits"] + row["coalesced"]
    row["requests"] = served + row["misses"] + row["bypassed"]
    row["hit_rate"] = served / (served + row["misses"]) if served + row["misses"] else 0.0
    return row


def _shown(value: bytes | str) -> str:
    """A stored value as a message shows it: its first 40 characters, escaped."""
    text = value.decode(errors="backslashreplace") if isinstance(value, bytes) else value
    return repr(text[:40] + ("..." if len(text) > 40 else ""))
