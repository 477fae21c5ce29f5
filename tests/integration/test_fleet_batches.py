"""Each batch of fleet counters reaches Redis at most once, and ``aclose()`` loses none.

Real ``redis-server`` behind ``RedisProxy``, which holds Redis's replies while the
commands still run; nothing sleeps.
"""

from __future__ import annotations

from typing import Any

import pytest

from limpet import RedisCache
from limpet.observe import fleet as fleet_module
from limpet.observe.fleet import FleetCounters, read_fleet_stats
from tests.redis_servers import RedisProxy

MODEL = "openai/gpt-5-mini"


def errors_by_model(rows: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {model: row["errors"] for model, row in rows.items()}


@pytest.mark.redis
async def test_a_batch_whose_answer_came_too_late_is_not_sent_again(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: a flush that timed out waiting for the increments' answer kept its
    # deltas and sent them again with the next batch, though Redis had applied them.
    async with (
        RedisProxy.for_url(redis_url) as proxy,
        RedisCache.from_url(proxy.url, prefix=redis_prefix, write_timeout=0.2) as cache,
    ):
        fleet = FleetCounters(cache)
        admitted = fleet_module._admitted

        async def admitted_then_stalled(*args: Any) -> dict[str, dict[str, float]]:
            rows = await admitted(*args)
            proxy.stall_replies()  # the increments run in Redis; their answer is held
            return rows

        monkeypatch.setattr(fleet_module, "_admitted", admitted_then_stalled)
        fleet.record_error(MODEL)
        await fleet.flush()  # times out
        await proxy.reply_held.wait()  # Redis did answer: the increments landed
        monkeypatch.undo()
        proxy.resume()
        fleet.record_error(MODEL)
        await fleet.flush()
        await fleet.aclose()
        rows = await read_fleet_stats(cache)
    assert fleet._pending == {}
    assert errors_by_model(rows) == {MODEL: 2}


@pytest.mark.redis
async def test_aclose_waits_for_the_batch_on_its_way_to_redis(
    redis_url: str, redis_prefix: str
) -> None:
    # Regression: aclose() cancelled the background flush while it waited on Redis, and
    # the batch it had taken was lost.
    async with (
        RedisProxy.for_url(redis_url) as proxy,
        RedisCache.from_url(proxy.url, prefix=redis_prefix) as cache,
    ):
        fleet = FleetCounters(cache, flush_interval=0)
        await cache.delete("warm the pool")
        proxy.stall_replies()
        fleet.record_error(MODEL)  # the background flush starts at once...
        await proxy.reply_held.wait()  # ...and waits on Redis's answer
        proxy.resume()  # the answer is on its way; aclose() comes before it is read
        await fleet.aclose()
        rows = await read_fleet_stats(cache)
    assert fleet._pending == {}
    assert errors_by_model(rows) == {MODEL: 1}
