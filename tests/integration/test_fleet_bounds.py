"""Counters kept by model are capped: the caller names the model (through ``limpet serve``,
any client does), so the Prometheus series, the fleet's deltas in this process and its rows
in Redis keep the first ``MAX_MODELS`` models and count the rest under ``OTHER_MODEL``.
And ``embed()`` calls reach the fleet's counters as they reach the Client's ``Stats``.

Real ``redis-server`` (the shared one, each test under its own prefix); nothing sleeps.
"""

from __future__ import annotations

import pytest
import redis.asyncio
from prometheus_client import CollectorRegistry

from limpet import CacheStatus, Client, Endpoint, MemoryCache, RedisCache, RetryConfig, TieredCache
from limpet.errors import EmbeddingBatchError
from limpet.models import Usage
from limpet.observe.events import CallEvent
from limpet.observe.fleet import FleetCounters, read_fleet_stats
from limpet.observe.metrics import PrometheusMetrics
from limpet.observe.model_cap import MAX_MODELS, OTHER_MODEL
from limpet.testing import FakeGateway
from tests.integration.cancelling import one_cancelled_one_answered
from tests.integration.chat import ask

EMBEDDING_MODEL = "openai/text-embedding-3-small"


def user_model(i: int) -> str:
    return f"user-model-{i}"


def samples(registry: CollectorRegistry, name: str) -> dict[str, float]:
    """``name``'s ``_total`` samples summed by their ``model`` label."""
    found: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name:
                model = sample.labels["model"]
                found[model] = found.get(model, 0.0) + sample.value
    return found


def test_prometheus_series_stop_at_max_models_and_the_rest_add_up_under_other() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    calls = MAX_MODELS + 500
    for i in range(calls):
        for _ in range(2):  # twice each: a folded model is folded every time
            metrics(
                CallEvent(
                    model=user_model(i),
                    cache=CacheStatus.MISS,
                    endpoint="a",
                    usage=Usage(prompt_tokens=3, completion_tokens=5),
                    cost_usd=0.0,
                    saved_usd=0.0,
                    seconds=0.0,
                )
            )
        metrics(
            CallEvent(
                model=user_model(i),
                cache=None,
                endpoint="a",
                usage=Usage(),
                cost_usd=0.0,
                saved_usd=0.0,
                seconds=0.0,
                error="BadRequestError",
            )
        )
    by_model = samples(registry, "limpet_calls_total")
    assert len(by_model) == MAX_MODELS + 1
    assert by_model[user_model(0)] == 2
    assert by_model[user_model(MAX_MODELS - 1)] == 2  # the first ones seen keep their own
    assert user_model(MAX_MODELS) not in by_model
    assert by_model[OTHER_MODEL] == 2 * 500
    assert sum(by_model.values()) == 2 * calls
    tokens = samples(registry, "limpet_tokens_total")
    assert len(tokens) == MAX_MODELS + 1
    assert sum(tokens.values()) == 2 * calls * (3 + 5)
    errors = samples(registry, "limpet_errors_total")
    assert len(errors) == MAX_MODELS + 1
    assert (errors[OTHER_MODEL], sum(errors.values())) == (500, calls)
    assert registry.get_sample_value("limpet_models_folded_total") == 3 * 500
    # A second hook on the same registry shares the cap, as it shares the series.
    PrometheusMetrics(registry)(
        CallEvent(
            model="yet-another",
            cache=CacheStatus.HIT,
            endpoint="a",
            usage=Usage(),
            cost_usd=0.0,
            saved_usd=0.0,
            seconds=0.0,
        )
    )
    assert samples(registry, "limpet_calls_total")[OTHER_MODEL] == 2 * 500 + 1


async def test_deltas_kept_while_redis_is_down_stay_max_models_rows() -> None:
    fleet = FleetCounters(RedisCache.from_url("redis://127.0.0.1:1/0"))
    calls = 3 * MAX_MODELS
    for i in range(calls):
        fleet.record_error(user_model(i))
    await fleet.flush()  # fails: Redis is down, so the deltas are kept
    await fleet.flush()
    pending = fleet._pending
    assert len(pending) == MAX_MODELS + 1
    assert pending[OTHER_MODEL]["errors"] == calls - MAX_MODELS
    assert sum(row["errors"] for row in pending.values()) == calls
    await fleet.aclose()


@pytest.mark.redis
async def test_redis_keeps_max_models_rows_across_processes_and_the_rest_add_up_under_other(
    redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis
) -> None:
    # Two processes, each under its own cap, seeing different models: Redis still keeps
    # one cap for the fleet.
    each = MAX_MODELS // 2 + 200
    rc = RedisCache.from_url(redis_url, prefix=redis_prefix)
    first, second = FleetCounters(rc), FleetCounters(rc)
    for offset, fleet in ((0, first), (each, second)):
        for i in range(offset, offset + each):
            fleet.record_error(user_model(i))
        await fleet.aclose()
    assert first._pending == {} and second._pending == {}
    assert await raw.scard(redis_prefix + "stats-models") == MAX_MODELS + 1
    rows = await read_fleet_stats(rc)
    await rc.aclose()
    assert len(rows) == MAX_MODELS + 1
    assert rows[OTHER_MODEL]["errors"] == 2 * each - MAX_MODELS
    assert sum(row["errors"] for row in rows.values()) == 2 * each
    assert rows[user_model(0)]["errors"] == 1


@pytest.mark.redis
async def test_an_increment_redis_refuses_is_dropped_and_the_others_count_once(
    redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis
) -> None:
    # Regression: one HINCRBY past i64 failed the whole batch, which was kept and sent
    # again at every flush, and Redis applied its other increments every time.
    rc = RedisCache.from_url(redis_url, prefix=redis_prefix)
    fleet = FleetCounters(rc)
    model = user_model(0)
    await raw.hset(f"{redis_prefix}stats:{model}", "prompt_tokens", 2**63 - 10)
    for _ in range(3):
        fleet.record_spent(model, Usage(prompt_tokens=100, completion_tokens=7), None)
        fleet.record_error(model)
        await fleet.flush()
    rows = await read_fleet_stats(rc)
    await fleet.aclose()
    await rc.aclose()
    assert fleet._pending == {}
    assert (rows[model]["errors"], rows[model]["completion_tokens"]) == (3, 21)
    assert rows[model]["prompt_tokens"] == 2**63 - 10


@pytest.mark.redis
async def test_limpet_stats_counts_embed_calls_as_the_clients_stats_do(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    cache = TieredCache(MemoryCache(), RedisCache.from_url(redis_url, prefix=redis_prefix))
    client = Client(
        endpoints=[Endpoint("a", gateway.base_url("a"))],
        cache=cache,
        retry=RetryConfig(max_attempts=1),
    )
    async with client:
        for question in ("one", "two", "one"):
            await client.complete(**ask(question))
        await client.embed(model=EMBEDDING_MODEL, input=["x", "y", "x"])
        await client.embed(model=EMBEDDING_MODEL, input=["x", "z"])
        gateway.endpoint("a").fail(400)
        with pytest.raises(EmbeddingBatchError):
            await client.embed(model=EMBEDDING_MODEL, input=["refused"])
        stats = client.stats
    rc = RedisCache.from_url(redis_url, prefix=redis_prefix)
    rows = await read_fleet_stats(rc)
    await rc.aclose()
    assert rows[EMBEDDING_MODEL]["prompt_tokens"] > 0
    assert rows[EMBEDDING_MODEL]["errors"] == 1
    assert rows[EMBEDDING_MODEL]["cost_usd"] > 0
    assert sum(row["prompt_tokens"] for row in rows.values()) == stats.prompt_tokens
    assert sum(row["errors"] for row in rows.values()) == stats.errors == 1
    assert sum(row["cost_usd"] for row in rows.values()) == pytest.approx(stats.cost_usd)
    # The second call's "x" was a hit, and the first's second "x" its twin's: both saved.
    assert rows[EMBEDDING_MODEL]["saved_usd"] > 0
    assert sum(row["saved_usd"] for row in rows.values()) == pytest.approx(stats.saved_usd)


async def test_cancelled_calls_reach_the_fleets_counters(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    cache = TieredCache(MemoryCache(), RedisCache.from_url(redis_url, prefix=redis_prefix))
    upstream = gateway.endpoint("a")
    client = Client(endpoints=[Endpoint("a", gateway.base_url("a"))], cache=cache)
    async with client:
        await one_cancelled_one_answered(client, upstream)
        stats = client.stats
    rc = RedisCache.from_url(redis_url, prefix=redis_prefix)
    rows = await read_fleet_stats(rc)
    await rc.aclose()
    row = next(iter(rows.values()))
    assert (row["cancelled"], row["misses"], row["errors"]) == (1, 1, 0)
    assert stats.cancelled == 1
