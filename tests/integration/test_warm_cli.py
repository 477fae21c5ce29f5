"""Warm-up and the ``limpet`` command, run as subprocesses against Redis and a FakeGateway."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from limpet import (
    CacheStatus,
    Client,
    Endpoint,
    InvalidRequestError,
    MemoryCache,
    RedisCache,
    TieredCache,
)
from limpet import __file__ as limpet_init
from limpet import __version__ as limpet_version
from limpet.cli.parser import build_parser
from limpet.errors import LimpetError
from limpet.models import Completion, Embeddings
from limpet.observe.warm import MAX_WARM_CONCURRENCY, warm
from limpet.testing import FakeGateway
from tests.integration.chat import MODEL, ask
from tests.redis_servers import free_port

SRC = str(Path(__file__).resolve().parents[2] / "src")


async def limpet(*args: str) -> tuple[int, str, str]:
    """Run ``python -m limpet ARGS`` without blocking the event loop the gateway runs on."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "limpet",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_warm_skips_what_is_cached_and_respects_its_concurrency(
    gateway: FakeGateway,
) -> None:
    ep = gateway.endpoint("a")
    ep.latency = 0.05
    requests = [ask(f"question {i}") for i in range(20)]
    extra = [ask("sampled", temperature=0.8), {"model": MODEL, "messages": []}]
    async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))]) as client:
        first = await client.warm(requests + extra, concurrency=3)
        assert (first.warmed, first.skipped, first.uncacheable, first.failed) == (20, 0, 1, 1)
        assert first.errors[0].startswith("InvalidRequestError: messages")
        assert ep.max_in_flight == 3
        calls = ep.calls
        again = await client.warm(iter(requests), concurrency=5)
        assert (again.warmed, again.skipped) == (0, 20)
        assert ep.calls == calls
        assert (await client.complete(**requests[7])).cache is CacheStatus.HIT


async def test_a_warm_up_starts_no_more_workers_than_it_has_requests(
    gateway: FakeGateway,
) -> None:
    # Regression: ``concurrency`` workers were started whatever the number of requests
    # (a million for one request took ten seconds and a gigabyte). Three requests start
    # as many of limpet's tasks under a concurrency of 10 000 as under one of 3, but for
    # one worker started as the last request was drawn, which finds none left (the
    # gateway's connection handlers, kept alive between rounds, are not counted).
    package = str(Path(limpet_init).parent)
    loop = asyncio.get_running_loop()
    created = 0

    def counting(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **options: Any
    ) -> asyncio.Task[Any]:
        nonlocal created
        created += coro.cr_code.co_filename.startswith(package)  # type: ignore[attr-defined]
        return asyncio.Task(coro, loop=loop, **options)

    async def tasks_of(client: Client, round_: int, concurrency: int) -> int:
        nonlocal created
        created = 0
        requests = [ask(f"round {round_}, question {i}") for i in range(3)]
        loop.set_task_factory(counting)  # type: ignore[arg-type]
        try:
            report = await client.warm(requests, concurrency=concurrency)
        finally:
            loop.set_task_factory(None)
        assert report.warmed == 3
        return created

    async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))]) as client:
        # First, the one task of a Client's first answer: its price listing's fetch.
        await client.complete(**ask("round 0"))
        as_many = await tasks_of(client, 1, 3)
        many_more_allowed = await tasks_of(client, 2, MAX_WARM_CONCURRENCY)
    assert as_many > 3  # the workers at least
    assert many_more_allowed == as_many + 1


async def test_warm_sends_no_more_than_its_cap_at_once_whatever_concurrency_allows() -> None:
    total = MAX_WARM_CONCURRENCY + 5
    in_flight = peak = 0
    crowded = asyncio.Event()  # no call ends before the cap's worth are in

    async def complete(**request: object) -> Completion | Embeddings:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == MAX_WARM_CONCURRENCY:
            crowded.set()
        await crowded.wait()
        # One turn of the loop (a yield, not a wait): any call begun in the same turn as
        # the last of the crowd is counted before it ends.
        await asyncio.sleep(0)
        in_flight -= 1
        raise LimpetError("counted, not raised")

    report = await warm(complete, ({} for _ in range(total)), concurrency=2 * total)
    assert peak == MAX_WARM_CONCURRENCY
    assert report.failed == total


@pytest.mark.parametrize("concurrency", [0, -1, 1.5, True, "8", None])
async def test_warm_refuses_a_bad_concurrency_before_reading_a_request(
    gateway: FakeGateway, concurrency: object
) -> None:
    drawn: list[int] = []

    def requests() -> Iterator[dict[str, Any]]:
        for i in range(2):
            drawn.append(i)
            yield ask(f"never {i}")

    async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))]) as client:
        with pytest.raises(InvalidRequestError, match=r"^concurrency: expected") as raised:
            await client.warm(requests(), concurrency=concurrency)  # type: ignore[arg-type]
    assert raised.value.field == "concurrency"
    assert drawn == []
    assert gateway.endpoint("a").calls == 0


async def test_warm_refuses_a_progress_it_cannot_call_before_any_request(
    gateway: FakeGateway,
) -> None:
    # Regression: ``progress=5`` raised TypeError once the first request had gone upstream.
    async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))]) as client:
        with pytest.raises(InvalidRequestError, match=r"^progress: expected") as raised:
            await client.warm([ask("never")], progress=5)  # type: ignore[arg-type]
    assert raised.value.field == "progress"
    assert gateway.endpoint("a").calls == 0


@pytest.mark.redis
async def test_limpet_warm_then_flush_from_the_command_line(
    gateway: FakeGateway, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    lines = [orjson.dumps(ask(f"faq {i}")) for i in range(3)]
    lines += [lines[0], b"", b"{not json"]
    file = tmp_path / "requests.jsonl"
    file.write_bytes(b"\n".join(lines) + b"\n")
    common = ["--redis", redis_url, "--prefix", redis_prefix]
    base = ["--base-url", gateway.base_url("a")]

    code, out, err = await limpet("warm", str(file), *common, *base, "--concurrency", "1", "--json")
    report = orjson.loads(out)
    assert (report["warmed"], report["skipped"], report["failed"]) == (3, 1, 1)
    assert "line 6" in report["errors"][0]
    assert code == 1  # a failed line is an error for a script
    assert "warming: 5 done" in err
    assert gateway.endpoint("a").calls == 3

    def fresh_client() -> Client:
        cache = TieredCache(MemoryCache(), RedisCache.from_url(redis_url, prefix=redis_prefix))
        return Client(endpoints=[Endpoint("a", gateway.base_url("a"))], cache=cache)

    async with fresh_client() as client:
        assert (await client.complete(**ask("faq 1"))).cache is CacheStatus.HIT

    code, out, _ = await limpet("flush", *common, "--model", MODEL, "--namespace", "")
    assert code == 0
    assert f"flushed model '{MODEL}' in namespace ''" in out
    async with fresh_client() as client:
        assert (await client.complete(**ask("faq 1"))).cache is CacheStatus.MISS
        assert (await client.complete(**ask("faq 2"))).cache is CacheStatus.MISS


@pytest.mark.redis
@pytest.mark.gateway(endpoints=("a", "b"))
async def test_limpet_warm_fills_a_service_of_several_endpoints(
    gateway: FakeGateway, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    # Every endpoint's URL enters the keys: warm is given them all, as the service has.
    file = tmp_path / "requests.jsonl"
    file.write_bytes(orjson.dumps(ask("faq")) + b"\n")
    urls = [gateway.base_url("a"), gateway.base_url("b")]
    code, _, err = await limpet(
        "warm", str(file), "--redis", redis_url, "--prefix", redis_prefix,
        "--base-url", urls[0], "--base-url", urls[1],
    )  # fmt: skip
    assert code == 0, err
    shared = RedisCache.from_url(redis_url, prefix=redis_prefix)
    endpoints = [Endpoint(name, url) for name, url in zip("ab", urls, strict=True)]
    async with Client(endpoints=endpoints, cache=shared) as service:
        assert (await service.complete(**ask("faq"))).cache is CacheStatus.HIT
    assert gateway.total_calls == 1


@pytest.mark.redis
async def test_flush_of_a_model_without_a_namespace_flushes_the_default_one_and_says_so(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    def client(namespace: str) -> Client:
        cache = RedisCache.from_url(redis_url, prefix=redis_prefix)
        return Client(
            endpoints=[Endpoint("a", gateway.base_url("a"))], cache=cache, namespace=namespace
        )

    async def statuses() -> list[CacheStatus]:
        async with client("") as default, client("ns1") as other:
            return [(await c.complete(**ask("faq"))).cache for c in (default, other)]

    assert await statuses() == [CacheStatus.MISS, CacheStatus.MISS]
    assert await statuses() == [CacheStatus.HIT, CacheStatus.HIT]

    code, out, err = await limpet("flush", "--redis", redis_url, "--prefix", redis_prefix,
                                  "--model", MODEL)  # fmt: skip
    assert (code, err) == (0, "")
    assert out.startswith(f"flushed model '{MODEL}' in the default namespace '' (generation ")
    assert out.rstrip().endswith("; pass --namespace for another")
    assert "every namespace" not in out
    assert await statuses() == [CacheStatus.MISS, CacheStatus.HIT]  # ns1's is untouched


async def test_limpet_flush_fails_loudly_when_redis_is_down() -> None:
    code, _, err = await limpet("flush", "--redis", f"redis://127.0.0.1:{free_port()}/0")
    assert code == 1
    assert "limpet flush:" in err


async def test_warm_and_flush_need_a_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIMPET_REDIS_URL", raising=False)
    monkeypatch.delenv("LIMPET_MEMCACHED_URL", raising=False)
    code, _, err = await limpet("flush")
    assert code == 2
    assert "--redis URL" in err


async def test_limpet_demo_prints_its_table_as_json() -> None:
    code, out, _ = await limpet(
        "demo",
        "--requests",
        "60",
        "--burst",
        "10",
        "--concurrency",
        "8",
        "--latency",
        "0.01",
        "--json",
    )
    assert code == 0
    result = orjson.loads(out)
    plain, cached = result["without_limpet"], result["with_limpet"]
    assert plain["upstream_calls"] == 60
    assert cached["upstream_calls"] < plain["upstream_calls"]
    assert cached["statuses"]["miss"] == cached["upstream_calls"]
    assert cached["saved_usd"] > 0


@pytest.mark.parametrize("latency", ["nan", "inf", "-inf", "-0.5", "soon"])
def test_demo_latency_must_be_a_finite_number_of_seconds(
    latency: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:  # parsed in-process: a nan would hang the demo
        build_parser().parse_args(["demo", f"--latency={latency}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --latency: expected a finite number >= 0, got {latency}" in err


def test_demo_latency_of_zero_is_allowed() -> None:
    assert build_parser().parse_args(["demo", "--latency", "0"]).latency == 0.0


async def test_limpet_version_and_demo_help() -> None:
    code, out, _ = await limpet("--version")
    assert (code, out.strip()) == (0, f"limpet {limpet_version}")
    code, out, _ = await limpet("demo", "--help")
    assert code == 0
    assert "calls in the workload" in out and "calls in flight at once" in out


async def test_limpet_bench_needs_a_source_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", SRC)
    code, _, err = await limpet("bench")
    assert code == 2
    assert "source checkout" in err


@pytest.mark.redis
async def test_fleet_counters_from_two_clients_add_up_and_limpet_stats_shows_them(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    def shared_client() -> Client:
        cache = TieredCache(MemoryCache(), RedisCache.from_url(redis_url, prefix=redis_prefix))
        return Client(endpoints=[Endpoint("a", gateway.base_url("a"))], cache=cache)

    spent = 0.0
    async with shared_client() as a, shared_client() as b:
        for client in (a, b):
            for question in ("one", "two", "one"):
                completion = await client.complete(**ask(question))
                spent += completion.cost.usd if completion.cost else 0.0
    # a: miss, miss, hit. b: its memory is cold, but Redis has both: hit, hit, hit.
    code, out, _ = await limpet("stats", "--redis", redis_url, "--prefix", redis_prefix, "--json")
    assert code == 0
    row = orjson.loads(out)[MODEL]
    assert (row["requests"], row["hits"], row["misses"]) == (6, 4, 2)
    assert row["hit_rate"] == pytest.approx(4 / 6)
    assert row["cost_usd"] == pytest.approx(spent)
    assert row["saved_usd"] > 0
    code, table, _ = await limpet("stats", "--redis", redis_url, "--prefix", redis_prefix)
    assert code == 0
    assert MODEL in table and "66.7%" in table
