"""Cache scopes: Clients with different credentials sharing one Redis never read each
other's answers, unless they share the namespace scope on purpose. Real Redis, the
FakeGateway over loopback; counts of upstream calls, never times."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio

from limpet import CacheStatus, Client, Endpoint, RedisCache
from limpet.errors import ConfigurationError
from limpet.pipeline.credentials import (
    ANONYMOUS_SCOPE,
    CacheScope,
    call_scope,
    credential_scope,
    is_credential_header,
    key_scope,
)
from limpet.testing import FakeGateway
from tests.integration.chat import MODEL, ask

pytestmark = pytest.mark.redis

# For tests about what is stored, not about Redis's speed: a loaded machine must not turn
# them into timeout tests.
PATIENT: dict[str, Any] = {"read_timeout": 1.0, "write_timeout": 1.0}
KEY_A = "sk-or-v1-tenant-a-0123456789"
KEY_B = "sk-or-v1-tenant-b-9876543210"


def tenant(
    gateway: FakeGateway,
    redis_url: str,
    redis_prefix: str,
    *,
    api_key: str | None = None,
    headers: dict[str, str] | None = None,
    cache_scope: CacheScope = "credential",
    namespace: str = "",
    upstream: str = "a",
) -> Client:
    """A Client with its own connection to the shared Redis, as in another process, on
    the gateway's endpoint ``upstream``."""
    endpoint = Endpoint("a", gateway.base_url(upstream), api_key=api_key, headers=headers)
    return Client(
        endpoints=[endpoint],
        cache=RedisCache.from_url(redis_url, prefix=redis_prefix, **PATIENT),
        cache_scope=cache_scope,
        namespace=namespace,
    )


async def answer(client: Client, **request: Any) -> CacheStatus:
    completion = await client.complete(**(request or ask()))
    cache = client.cache
    assert cache is not None
    for tier in cache.tiers:
        assert isinstance(tier, RedisCache)
        await tier.flush()  # the write is visible to the next process
    return completion.cache


async def test_different_credentials_never_share_an_answer(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    async with (
        tenant(gateway, redis_url, redis_prefix, api_key=KEY_A) as a,
        tenant(gateway, redis_url, redis_prefix, api_key=KEY_B) as b,
    ):
        assert await answer(a) is CacheStatus.MISS
        assert await answer(b) is CacheStatus.MISS
        assert gateway.total_calls == 2
        assert await answer(a) is CacheStatus.HIT
        assert await answer(b) is CacheStatus.HIT
        assert gateway.total_calls == 2


async def test_the_same_credentials_share_across_processes_and_endpoint_names(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    async with (
        tenant(gateway, redis_url, redis_prefix, api_key=KEY_A) as a,
        tenant(gateway, redis_url, redis_prefix, api_key=KEY_A) as again,
        # The same key given as the header it is sent as is the same credential.
        tenant(
            gateway, redis_url, redis_prefix, headers={"Authorization": f"Bearer {KEY_A}"}
        ) as by_header,
    ):
        assert await answer(a) is CacheStatus.MISS
        assert await answer(again) is CacheStatus.HIT
        assert await answer(by_header) is CacheStatus.HIT
        assert gateway.total_calls == 1


async def test_the_namespace_scope_shares_across_credentials_on_purpose(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    shared: CacheScope = "namespace"
    async with (
        tenant(gateway, redis_url, redis_prefix, api_key=KEY_A, cache_scope=shared) as a,
        tenant(gateway, redis_url, redis_prefix, api_key=KEY_B, cache_scope=shared) as b,
        tenant(
            gateway, redis_url, redis_prefix, api_key=KEY_B, cache_scope=shared, namespace="x"
        ) as elsewhere,
        tenant(gateway, redis_url, redis_prefix, api_key=KEY_B) as scoped,
    ):
        assert await answer(a) is CacheStatus.MISS
        assert await answer(b) is CacheStatus.HIT
        assert gateway.total_calls == 1
        # Still per namespace; and a credential-scoped Client never reads shared entries.
        assert await answer(elsewhere) is CacheStatus.MISS
        assert await answer(scoped) is CacheStatus.MISS
        assert gateway.total_calls == 3


@pytest.mark.gateway(endpoints=("a", "b"))
@pytest.mark.parametrize("cache_scope", ["credential", "namespace"])
async def test_clients_on_different_gateways_never_share_an_answer(
    gateway: FakeGateway, redis_url: str, redis_prefix: str, cache_scope: CacheScope
) -> None:
    # Regression: the key held no trace of where a request goes, so two self-hosted
    # servers without keys (the anonymous scope), or one key on two gateways, or fleets
    # sharing across keys, answered each other's requests.
    async with (
        tenant(gateway, redis_url, redis_prefix, cache_scope=cache_scope) as here,
        tenant(gateway, redis_url, redis_prefix, cache_scope=cache_scope, upstream="b") as there,
        tenant(gateway, redis_url, redis_prefix, cache_scope=cache_scope) as here_again,
    ):
        assert await answer(here) is CacheStatus.MISS
        assert await answer(there) is CacheStatus.MISS
        assert await answer(here_again) is CacheStatus.HIT  # one gateway: shared as before
        assert (gateway.endpoint("a").calls, gateway.endpoint("b").calls) == (1, 1)


async def test_endpoint_headers_that_may_change_an_answer_separate_entries(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    beta = {"anthropic-beta": "output-128k-2025-02-19"}
    shared: CacheScope = "namespace"
    async with (
        tenant(gateway, redis_url, redis_prefix, cache_scope=shared) as plain,
        tenant(gateway, redis_url, redis_prefix, cache_scope=shared, headers=beta) as beta_on,
        # Credentials are the credential scope's to tell apart, or (here) to share across.
        tenant(
            gateway,
            redis_url,
            redis_prefix,
            cache_scope=shared,
            headers={**beta, "Authorization": f"Bearer {KEY_B}"},
        ) as beta_keyed,
    ):
        assert await answer(plain) is CacheStatus.MISS
        assert await answer(beta_on) is CacheStatus.MISS
        assert await answer(beta_keyed) is CacheStatus.HIT
        assert gateway.total_calls == 2


async def test_concurrent_misses_of_different_credentials_do_not_coalesce(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    gateway.endpoint("a").latency = 0.05
    async with (
        tenant(gateway, redis_url, redis_prefix, api_key=KEY_A) as a,
        tenant(gateway, redis_url, redis_prefix, api_key=KEY_B) as b,
    ):
        results = await asyncio.gather(*(client.complete(**ask()) for client in (a, b, a, b)))
    assert gateway.total_calls == 2
    assert sorted(r.cache for r in results) == sorted(
        [CacheStatus.MISS, CacheStatus.MISS, CacheStatus.COALESCED, CacheStatus.COALESCED]
    )
    assert results[0].key == results[2].key != results[1].key == results[3].key


async def test_the_key_appears_in_no_key_repr_or_redis_name_or_value(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    async with tenant(gateway, redis_url, redis_prefix, api_key=KEY_A) as a:
        completion = await a.complete(**ask())
        await a.invalidate(MODEL)
        text = f"{a!r} {completion!r} {completion.key}"
    digest = credential_scope([Endpoint("x", "https://x.test/v1", api_key=KEY_A)])
    raw = redis.asyncio.Redis.from_url(redis_url)
    try:
        names = [name async for name in raw.scan_iter(match=redis_prefix + "*")]
        values = [await raw.get(name) for name in names if await raw.type(name) == b"string"]
    finally:
        await raw.aclose()
    assert names
    for secret in (KEY_A, KEY_A[-10:]):
        assert secret not in text
        assert all(secret.encode() not in name for name in names)
        assert all(secret.encode() not in (value or b"") for value in values)
    # The digest names the tenant's generation counters; it is in no repr or value.
    assert digest not in text
    assert all(digest.encode() not in (value or b"") for value in values)


def test_the_credential_scope_is_stable_across_processes_and_never_the_key() -> None:
    script = (
        "from limpet import Endpoint; from limpet.pipeline.credentials import credential_scope; "
        f"print(credential_scope([Endpoint('a', 'https://x.test/v1', api_key={KEY_A!r})]))"
    )
    there = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.strip()
    here = credential_scope(
        [
            Endpoint("b", "https://y.test/v1", api_key=KEY_A),
            Endpoint("c", "https://z.test/v1", api_key=KEY_A),
        ]
    )
    assert here == there
    assert len(here) == 32 and KEY_A not in here and KEY_A[-8:] not in here
    assert credential_scope([Endpoint("a", "https://x.test/v1", api_key=KEY_B)]) != here
    assert credential_scope([Endpoint("a", "https://x.test/v1")]) == ANONYMOUS_SCOPE
    # Other headers are not credentials; credential headers are, by any capitalisation.
    plain = Endpoint("a", "https://x.test/v1", headers={"X-Title": "app"})
    assert credential_scope([plain]) == ANONYMOUS_SCOPE
    keyed = Endpoint("a", "https://x.test/v1", headers={"x-API-key": KEY_A})
    assert credential_scope([keyed]) not in (ANONYMOUS_SCOPE, here)


async def test_one_tenants_invalidation_leaves_the_others_entries(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    async with (
        tenant(gateway, redis_url, redis_prefix, api_key=KEY_A) as a,
        tenant(gateway, redis_url, redis_prefix, api_key=KEY_B) as b,
    ):
        assert await answer(a) is CacheStatus.MISS
        assert await answer(b) is CacheStatus.MISS
        await a.invalidate()
        assert await answer(b) is CacheStatus.HIT
        assert await answer(a) is CacheStatus.MISS
        assert gateway.total_calls == 3


async def limpet(*args: str, **env: str) -> tuple[int, str, str]:
    """Run ``python -m limpet ARGS`` with ``env`` added to this environment."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "limpet",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_command_line_warms_and_flushes_either_scope(
    gateway: FakeGateway, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    file = tmp_path / "requests.jsonl"
    file.write_bytes(orjson.dumps(ask()) + b"\n")
    common = ["--redis", redis_url, "--prefix", redis_prefix]
    warm = ["warm", str(file), *common, "--base-url", gateway.base_url("a"), "--json"]
    secrets = {"TENANT_A_KEY": KEY_A}

    code, out, _ = await limpet(*warm, "--api-key-env", "TENANT_A_KEY", **secrets)
    assert (code, orjson.loads(out)["warmed"]) == (0, 1)
    code, out, _ = await limpet(*warm, "--cache-scope", "namespace")
    assert (code, orjson.loads(out)["warmed"]) == (0, 1)
    assert gateway.total_calls == 2

    def clients() -> tuple[Client, Client, Client]:
        return (
            tenant(gateway, redis_url, redis_prefix, api_key=KEY_A),
            tenant(gateway, redis_url, redis_prefix, api_key=KEY_B),
            tenant(gateway, redis_url, redis_prefix, api_key=KEY_B, cache_scope="namespace"),
        )

    async def statuses() -> list[CacheStatus]:
        a, b, shared = clients()
        async with a, b, shared:
            return [await answer(client) for client in (a, b, shared)]

    miss, hit = CacheStatus.MISS, CacheStatus.HIT
    assert await statuses() == [hit, miss, hit]  # B's key was never warmed
    assert gateway.total_calls == 3

    flush = ["flush", *common, "--namespace", "", "--model", MODEL]
    code, out, _ = await limpet(
        *flush, "--cache-scope", "credential", "--api-key-env", "TENANT_A_KEY", **secrets
    )
    assert code == 0 and "TENANT_A_KEY" in out and KEY_A not in out
    assert await statuses() == [miss, hit, hit]  # A's entries only
    assert gateway.total_calls == 4

    code, _, _ = await limpet(*flush)  # the namespace: every credential's and the shared
    assert code == 0
    assert await statuses() == [miss, miss, miss]
    assert gateway.total_calls == 7

    code, _, err = await limpet(*flush, "--cache-scope", "credential", "--api-key-env", "NONE")
    assert code == 2 and "$NONE is not set" in err


async def test_a_flush_of_one_key_reaches_the_entries_of_calls_that_send_it(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    # A proxy's Client (no key of its own; each caller sends theirs) and one with a key
    # whose callers send others: a flush of tenant A's key reaches A's entries in both,
    # however a caller writes the key, and nobody else's. Before, it reached only a
    # Client whose own key was A's: the proxy kept serving A's answers after A's flush.
    def as_(key: str) -> dict[str, Any]:
        return {"extra_headers": {"Authorization": f"Bearer {key}"}}

    # The same key written otherwise, with an organisation: its own entries (another
    # tenant's, for isolation), still A's key's to flush.
    written_otherwise = {
        "extra_headers": {"Authorization": f"bearer   {KEY_A}", "OpenAI-Organization": "org-1"}
    }

    def clients() -> tuple[Client, Client]:
        return (
            tenant(gateway, redis_url, redis_prefix),
            tenant(gateway, redis_url, redis_prefix, api_key=KEY_B),
        )

    async def statuses() -> list[CacheStatus]:
        proxy, keyed = clients()
        async with proxy, keyed:
            return [
                await answer(proxy, **ask(), **as_(KEY_A)),
                await answer(proxy, **ask(), **as_(KEY_B)),
                await answer(keyed, **ask(), **as_(KEY_A)),
                await answer(keyed, **ask()),
                await answer(proxy, **ask(), **written_otherwise),
            ]

    miss, hit = CacheStatus.MISS, CacheStatus.HIT
    assert await statuses() == [miss, miss, miss, miss, miss]
    assert await statuses() == [hit, hit, hit, hit, hit]
    flush = ["flush", "--redis", redis_url, "--prefix", redis_prefix, "--namespace", ""]
    code, _, _ = await limpet(
        *flush, "--cache-scope", "credential", "--api-key-env", "TENANT_A_KEY", TENANT_A_KEY=KEY_A
    )
    assert code == 0
    assert await statuses() == [miss, hit, miss, hit, miss]  # A's entries only
    async with tenant(gateway, redis_url, redis_prefix, api_key=KEY_B) as keyed:
        # Its own entries, its callers' (whatever key they send), and B's key's wherever
        # a call sends it: as a flush of B's key would.
        await keyed.invalidate()
    assert await statuses() == [hit, miss, miss, miss, hit]
    assert gateway.total_calls == 11


async def test_a_flush_of_one_key_reaches_clients_that_send_it_in_their_endpoints_headers(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    # Regression: a Client's generations were named by every credential its endpoints
    # sent, as written: a key in X-Api-Key, a lower-case bearer, or beside an
    # organisation, and `limpet flush --cache-scope credential` with it reached nothing.
    sent_so: list[dict[str, Any]] = [
        {"headers": {"Authorization": f"bearer {KEY_A}"}},
        {"headers": {"X-Api-Key": KEY_A}},
        {"headers": {"api-key": KEY_A}},
        {"api_key": KEY_A, "headers": {"OpenAI-Organization": "org-1"}},
        {"api_key": KEY_B},
    ]

    async def statuses() -> list[CacheStatus]:
        found = []
        for how in sent_so:
            async with tenant(gateway, redis_url, redis_prefix, **how) as client:
                found.append(await answer(client))
        return found

    miss, hit = CacheStatus.MISS, CacheStatus.HIT
    assert await statuses() == [miss] * 5  # each its own entries: the credentials differ
    assert await statuses() == [hit] * 5
    flush = ["flush", "--redis", redis_url, "--prefix", redis_prefix, "--namespace", ""]
    code, _, _ = await limpet(
        *flush, "--cache-scope", "credential", "--api-key-env", "TENANT_A_KEY", TENANT_A_KEY=KEY_A
    )
    assert code == 0
    assert await statuses() == [miss, miss, miss, miss, hit]


def test_the_scope_of_a_lone_key_is_its_clients() -> None:
    endpoint = Endpoint("a", "https://x.test/v1", api_key=KEY_A)
    assert key_scope(KEY_A) == credential_scope([endpoint])
    assert key_scope(None) == ANONYMOUS_SCOPE


def test_cache_scope_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="cache_scope"):
        Client(api_key="sk-x", cache_scope="tenant")  # type: ignore[arg-type]


async def test_a_per_call_authorization_header_gets_its_own_scope(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    def as_(key: str) -> dict[str, Any]:
        return {"extra_headers": {"Authorization": f"Bearer {key}"}}

    async with tenant(gateway, redis_url, redis_prefix, api_key=KEY_A) as client:
        own = await client.complete(**ask())
        first = await client.complete(**ask(), **as_(KEY_B))
        again = await client.complete(**ask(), **as_(KEY_B))
        other = await client.complete(**ask(), **as_("sk-or-v1-tenant-c-5555555555"))
        stream = client.stream(**ask(), **as_(KEY_B))
        replayed = [chunk async for chunk in stream]
    assert [own.cache, first.cache, again.cache, other.cache] == ["miss", "miss", "hit", "miss"]
    assert len({own.key, first.key, other.key}) == 3 and again.key == first.key
    assert replayed and stream.completion is not None
    assert (stream.completion.cache, stream.completion.key) == ("hit", first.key)
    assert gateway.endpoint("a").calls == 3
    seen = [r.get("messages") for r in gateway.endpoint("a").requests]
    assert len(seen) == 3


# The gateways' own credential and account headers (Portkey, Cloudflare AI Gateway,
# Google, Helicone, OpenAI's organisation and project).
GATEWAY_CREDENTIALS = [
    "X-Portkey-Api-Key",
    "cf-aig-authorization",
    "x-goog-api-key",
    "Helicone-Auth",
    "OpenAI-Organization",
    "OpenAI-Project",
]


@pytest.mark.parametrize("header", GATEWAY_CREDENTIALS)
async def test_a_gateways_own_credential_header_separates_tenants(
    gateway: FakeGateway, redis_url: str, redis_prefix: str, header: str
) -> None:
    async with (
        tenant(gateway, redis_url, redis_prefix, api_key=KEY_A, headers={header: "one"}) as a,
        tenant(gateway, redis_url, redis_prefix, api_key=KEY_A, headers={header: "two"}) as b,
    ):
        assert await answer(a) is CacheStatus.MISS
        assert await answer(b) is CacheStatus.MISS
        # Sent per call, the same header gives the call a scope of its own too.
        assert await answer(a, **ask(), extra_headers={header: "three"}) is CacheStatus.MISS
        assert await answer(a, **ask(), extra_headers={header: "three"}) is CacheStatus.HIT
    assert gateway.total_calls == 3


@pytest.mark.parametrize(
    "header",
    ["HTTP-Referer", "X-Title", "X-Request-Id", "traceparent", "Idempotency-Key", "User-Agent"],
)
def test_attribution_and_tracing_headers_are_no_credentials(header: str) -> None:
    assert not is_credential_header(header)
    assert call_scope("c0ffee", {header: "per-call value"}) == "c0ffee"


@pytest.mark.parametrize("header", [*GATEWAY_CREDENTIALS, "Authorization", "x-api-key", "Cookie"])
def test_credential_headers_are_told_whatever_their_case(header: str) -> None:
    assert is_credential_header(header) and is_credential_header(header.upper())


async def test_a_namespace_scoped_client_shares_whatever_key_a_call_sends(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    async with tenant(
        gateway, redis_url, redis_prefix, api_key=KEY_A, cache_scope="namespace"
    ) as client:
        first = await client.complete(**ask())
        second = await client.complete(**ask(), extra_headers={"Authorization": f"Bearer {KEY_B}"})
    assert (first.cache, second.cache, first.key == second.key) == ("miss", "hit", True)
