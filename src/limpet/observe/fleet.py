"""Fleet-wide counters in Redis, per model: what every process sharing a cache did.

Calls add to in-process deltas (a dict update, no I/O); a background task sends them as
one pipelined batch of ``HINCRBY``/``HINCRBYFLOAT`` every ``flush_interval`` seconds, so
no call ever waits on Redis for its counters. Deltas that fail to send are kept and sent
with the next batch; ``aclose()`` sends what is left. ``read_fleet_stats`` is what
``limpet stats`` shows.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from functools import partial
from typing import TYPE_CHECKING, Any

from limpet.errors import CacheUnavailableError
from limpet.models import CacheStatus, Completion

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


def _models_key(cache: RedisCache) -> str:
    return cache.redis_key("stats-models")


def _stats_key(cache: RedisCache, model: str) -> str:
    return cache.redis_key("stats:" + model)


class FleetCounters:
    """Counts calls per model into Redis, batched in the background.

    Args:
        cache: the Redis tier whose connection, breaker and timeouts it shares.
        flush_interval: seconds between batches.
    """

    __slots__ = ("_cache", "_flusher", "_pending", "flush_interval")

    def __init__(
        self, cache: RedisCache, *, flush_interval: float = DEFAULT_FLUSH_INTERVAL
    ) -> None:
        self._cache = cache
        self.flush_interval = flush_interval
        self._pending: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._flusher: asyncio.Task[None] | None = None

    def record(self, model: str, completion: Completion) -> None:
        """Count one finished call (no I/O)."""
        counts = self._pending[model]
        counts[_STATUS_FIELD[completion.cache]] += 1
        if completion.cache in (CacheStatus.MISS, CacheStatus.BYPASS):
            usage = completion.usage
            counts["prompt_tokens"] += usage.prompt_tokens
            counts["completion_tokens"] += usage.completion_tokens
            counts["cached_tokens"] += usage.cached_tokens
        if completion.cost is not None:
            counts["cost_usd"] += completion.cost.usd
            counts["saved_usd"] += completion.cost.saved_usd
        self._schedule()

    def record_error(self, model: str) -> None:
        self._pending[model]["errors"] += 1
        self._schedule()

    async def flush(self) -> None:
        """Send the deltas counted so far now."""
        pending, self._pending = self._pending, defaultdict(lambda: defaultdict(float))
        if not pending:
            return
        cache = self._cache

        async def send() -> None:
            pipe = cache.redis.pipeline(transaction=False)
            for model, counts in pending.items():
                key = _stats_key(cache, model)
                pipe.sadd(_models_key(cache), model)
                for field, value in counts.items():
                    if field in _FLOATS:
                        pipe.hincrbyfloat(key, field, value)
                    else:
                        pipe.hincrby(key, field, int(value))
            await pipe.execute()

        try:
            await cache.run("fleet counters", cache.write_timeout, send)
        except CacheUnavailableError as exc:
            # Keep them for the next batch: counters are few (per model), so this is bounded.
            for model, counts in pending.items():
                for field, value in counts.items():
                    self._pending[model][field] += value
            logger.debug("limpet: fleet counters kept for later: %s", exc)

    async def aclose(self) -> None:
        """Stop the background task and send what is left (best effort)."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.done():
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
        await self.flush()

    def _schedule(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_later(), name="limpet-fleet-counters"
            )

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.flush_interval)
        await self.flush()


async def read_fleet_stats(cache: RedisCache) -> dict[str, dict[str, Any]]:
    """Every model's fleet counters, with ``requests`` and ``hit_rate`` derived."""
    redis = cache.redis
    models = await cache.run(
        "SMEMBERS", cache.read_timeout, lambda: redis.smembers(_models_key(cache))
    )
    result: dict[str, dict[str, Any]] = {}
    for raw in sorted(models):
        model = raw.decode() if isinstance(raw, bytes) else str(raw)
        key = _stats_key(cache, model)
        fields = await cache.run("HGETALL", cache.read_timeout, partial(redis.hgetall, key))
        row: dict[str, Any] = {}
        for name in FLEET_FIELDS:
            value = fields.get(name.encode(), b"0")
            row[name] = float(value) if name in _FLOATS else int(value)
        served = row["hits"] + row["coalesced"]
        row["requests"] = served + row["misses"] + row["bypassed"]
        row["hit_rate"] = served / (served + row["misses"]) if served + row["misses"] else 0.0
        result[model] = row
    return result
