"""The ``limpet`` command never shows a traceback: every error is one line on stderr
naming the cause, exit status 2 for a usage error and 1 for a failure; ``--verbose``
adds the traceback. And ``limpet warm`` builds its cache as a service would.

Each case runs the real command as a subprocess, against the FakeGateway and real
redis-server processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio

from limpet import CacheStatus, Client, Endpoint, MemoryCache, RedisCache, TieredCache
from limpet.testing import FakeGateway
from tests.integration.chat import ask
from tests.integration.test_warm_cli import limpet
from tests.redis_servers import RedisServer, free_port

pytestmark = pytest.mark.redis

HMAC_ENV = "LIMPET_TEST_WARM_HMAC"


def jsonl(tmp_path: Path, *requests: dict[str, Any] | bytes) -> Path:
    file = tmp_path / "faq.jsonl"
    lines = [r if isinstance(r, bytes) else orjson.dumps(r) for r in requests]
    file.write_bytes(b"\n".join(lines) + b"\n")
    return file


async def test_warm_without_prefix_uses_the_services_default_and_says_where(
    gateway: FakeGateway, redis_server: RedisServer, tmp_path: Path
) -> None:
    file = jsonl(tmp_path, ask("faq 1"), ask("faq 2"))
    code, out, err = await limpet(
        "warm", str(file), "--redis", redis_server.url, "--base-url", gateway.base_url("a")
    )
    assert (code, err.count("Traceback")) == (0, 0)
    where = f"127.0.0.1:{redis_server.port}/0 (prefix 'limpet:', namespace '', credential scope)"
    assert out.splitlines()[0] == (
        f"warmed 2 into {where}; skipped 0 (cached), uncacheable 0, failed 0"
    )
    async with Client(  # a service with the defaults finds them
        endpoints=[Endpoint("a", gateway.base_url("a"))],
        cache=TieredCache(MemoryCache(), RedisCache.from_url(redis_server.url)),
    ) as client:
        assert (await client.complete(**ask("faq 2"))).cache is CacheStatus.HIT


async def test_warm_signs_entries_with_the_services_hmac_key(
    gateway: FakeGateway,
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(HMAC_ENV, "fleet-secret")
    file = jsonl(tmp_path, ask("signed"))
    code, _, _ = await limpet(
        "warm",
        str(file),
        "--redis",
        redis_server.url,
        "--base-url",
        gateway.base_url("a"),
        "--hmac-key-env",
        HMAC_ENV,
        "--namespace",
        "support",
    )
    assert code == 0

    def service(hmac_key: bytes) -> Client:
        cache = TieredCache(MemoryCache(), RedisCache.from_url(redis_server.url), hmac_key=hmac_key)
        return Client(
            endpoints=[Endpoint("a", gateway.base_url("a"))], cache=cache, namespace="support"
        )

    async with service(b"fleet-secret") as client:
        assert (await client.complete(**ask("signed"))).cache is CacheStatus.HIT
    async with service(b"another-secret") as client:  # a forged signature is never served
        assert (await client.complete(**ask("signed"))).cache is CacheStatus.MISS


async def test_warm_with_redis_unreachable_pays_for_nothing_and_fails(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    port = free_port()
    file = jsonl(tmp_path, ask("faq 1"), ask("faq 2"))
    code, out, err = await limpet(
        "warm", str(file), "--redis", f"redis://127.0.0.1:{port}/0",
        "--base-url", gateway.base_url("a"),
    )  # fmt: skip
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1
    assert err.startswith(f"limpet warm: nothing warmed: redis GET failed (127.0.0.1:{port}/0)")
    assert gateway.total_calls == 0


async def test_warm_reports_bad_lines_by_number_and_keeps_going(
    gateway: FakeGateway, redis_server: RedisServer, tmp_path: Path
) -> None:
    bad_role = ask("x")
    bad_role["messages"] = [{"role": "bot", "content": "x"}]
    file = jsonl(tmp_path, ask("ok"), b'{"model": "m", "messages": [', b"[1, 2]", bad_role)
    code, out, _ = await limpet(
        "warm", str(file), "--redis", redis_server.url, "--base-url", gateway.base_url("a"),
        "--concurrency", "1", "--json",
    )  # fmt: skip
    assert code == 1
    report = orjson.loads(out)
    assert (report["warmed"], report["failed"], report["unstored"]) == (1, 3, 0)
    errors = sorted(report["errors"])
    assert errors[0].startswith("line 2: not valid JSON (")
    assert errors[1] == "line 3: expected a JSON object of complete() arguments, got list"
    assert errors[2].startswith("line 4: messages[0].role: expected one of")


async def test_warm_lists_a_line_of_unknown_arguments_with_its_message(
    gateway: FakeGateway, redis_server: RedisServer, tmp_path: Path
) -> None:
    embedding = {"model": "openai/text-embedding-3-small", "input": "a", "self": 2}
    file = jsonl(tmp_path, ask("ok"), ask("x", self=1), embedding)
    args = ["warm", str(file), "--redis", redis_server.url, "--base-url", gateway.base_url("a")]
    code, out, _ = await limpet(*args, "--json")
    assert code == 1
    report = orjson.loads(out)
    assert report["failed"] == 2
    errors = sorted(report["errors"])
    assert len(errors) == 2
    assert errors[0].startswith("line 2: ") and "'self'" in errors[0]
    assert errors[1].startswith("line 3: ") and "'self'" in errors[1]
    code, out, _ = await limpet(*args)  # the table lists them too
    assert code == 1
    assert sorted(line.split(":")[0] for line in out.splitlines()[1:]) == ["  line 2", "  line 3"]


async def test_warm_counts_an_answer_too_large_to_store_as_unstored_and_says_why(
    gateway: FakeGateway, redis_server: RedisServer, tmp_path: Path
) -> None:
    huge = {"model": "openai/text-embedding-3-small", "input": "hi", "dimensions": 1_300_000}
    file = jsonl(tmp_path, ask("small"), huge)
    code, out, err = await limpet(
        "warm", str(file), "--redis", redis_server.url, "--base-url", gateway.base_url("a")
    )
    assert code == 1
    assert out.startswith("warmed 1 into ")  # of 2 answered: the embedding was not stored
    assert err.splitlines()[-1] == (
        f"limpet warm: 1 of 2 answers could not be stored in 127.0.0.1:{redis_server.port}/0: "
        "1 larger than max_entry_bytes (4194304)"
    )
    assert "Traceback" not in err


async def test_stats_leaves_out_an_unreadable_row_naming_its_key_and_prints_the_rest(
    redis_url: str, redis_prefix: str
) -> None:
    models, row = f"{redis_prefix}stats-models", f"{redis_prefix}stats:"
    client = redis.asyncio.Redis.from_url(redis_url)
    async with client:
        await client.sadd(models, "good", "garbled", "negative", "nan", b"\xff\xfe")
        await client.hset(f"{row}good", mapping={"hits": 3, "misses": 1, "cost_usd": "0.5"})
        await client.hset(f"{row}garbled", mapping={"hits": "lots", "misses": 1})
        await client.hset(f"{row}negative", mapping={"hits": -5, "misses": 1})
        await client.hset(f"{row}nan", mapping={"misses": 1, "cost_usd": "nan"})
    common = ["stats", "--redis", redis_url, "--prefix", redis_prefix]

    code, out, err = await limpet(*common, "--json")
    assert code == 1  # a row could not be read
    rows = orjson.loads(out)
    assert list(rows) == ["good"]
    assert (rows["good"]["hits"], rows["good"]["hit_rate"]) == (3, 0.75)
    assert sorted(err.splitlines()) == [
        f"limpet stats: a row left out, unreadable: {models}: member b'\\xff\\xfe' is not UTF-8",
        f"limpet stats: a row left out, unreadable: {row}garbled: field hits is 'lots', "
        "not a number",
        f"limpet stats: a row left out, unreadable: {row}nan: field cost_usd is 'nan', "
        "not a finite number",
        f"limpet stats: a row left out, unreadable: {row}negative: field hits is '-5', below 0",
    ]
    code, table, err = await limpet(*common)
    assert code == 1
    assert table.splitlines()[1].split()[:2] == ["good", "4"]
    assert len(table.splitlines()) == 2 and len(err.splitlines()) == 4


@pytest.mark.parametrize(
    ("args", "status", "line"),
    [
        (
            ["flush", "--redis", "localhost:6379"],
            2,
            "limpet flush: RedisCache.url: Redis URL must specify one of the following "
            "schemes (redis://, rediss://, unix://)",
        ),
        (
            ["warm", "missing.jsonl", "--redis", "redis://127.0.0.1:6379/0"],
            2,
            "limpet warm: cannot read missing.jsonl: No such file or directory",
        ),
        (
            ["flush", "--redis", "redis://127.0.0.1:6379/0", "--cache-scope", "credential",
             "--api-key-env", "LIMPET_TEST_UNSET_KEY"],
            2,
            "limpet flush: $LIMPET_TEST_UNSET_KEY is not set",
        ),
        (
            ["warm", "faq.jsonl", "--redis", "redis://127.0.0.1:6379/0",
             "--hmac-key-env", "LIMPET_TEST_UNSET_HMAC"],
            2,
            "limpet warm: $LIMPET_TEST_UNSET_HMAC (--hmac-key-env) is not set",
        ),
    ],
)  # fmt: skip
async def test_each_error_is_one_line_with_its_status(
    args: list[str], status: int, line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "faq.jsonl").write_bytes(orjson.dumps(ask("x")) + b"\n")
    monkeypatch.delenv("LIMPET_TEST_UNSET_KEY", raising=False)
    monkeypatch.delenv("LIMPET_TEST_UNSET_HMAC", raising=False)
    code, out, err = await limpet(*args)
    assert (code, out, err.splitlines()) == (status, "", [line])


async def test_verbose_adds_the_traceback() -> None:
    code, _, err = await limpet("flush", "--redis", "localhost:6379", "--verbose")
    assert code == 2
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("limpet flush: RedisCache.url:")


async def test_a_flag_names_the_shared_tier_whatever_the_environment_says(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIMPET_MEMCACHED_URL", f"memcached://127.0.0.1:{free_port()}")
    monkeypatch.setenv("LIMPET_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    code, out, err = await limpet("flush", "--redis", redis_server.url)
    assert (code, err) == (0, "")
    assert out.startswith("flushed every model in every namespace")
    code, _, err = await limpet(
        "flush", "--redis", redis_server.url, "--memcached", "memcached://127.0.0.1:11211"
    )
    assert code == 2
    assert "argument --memcached: not allowed with argument --redis" in err
