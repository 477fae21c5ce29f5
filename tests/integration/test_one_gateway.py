"""One OpenRouter endpoint: the ``session_id`` limpet sends it, over real loopback HTTP.

What the fake gateway receives is what OpenRouter would: requests sharing a marked prefix
carry one ``session_id``, each RAG document its own, a caller's own is kept, and endpoints
that pin a provider get none.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from limpet import Client, Endpoint, RetryConfig
from limpet.config import RoutingConfig
from limpet.pipeline.keys import canonical_request
from limpet.routing.sticky import StickyRouter
from limpet.testing import FakeGateway

MODEL = "anthropic/claude-sonnet-4.6"
CC = {"type": "ephemeral"}
SYSTEM = "You answer from the tenant's handbook, citing sections. " * 40
ONCE = RetryConfig(max_attempts=1)


def rag(tenant: str, question: str) -> dict[str, Any]:
    handbook = f"Handbook of {tenant}. " + "Each section explains one procedure. " * 300
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM, "cache_control": CC}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": handbook, "cache_control": CC},
                    {"type": "text", "text": question},
                ],
            },
        ],
        "temperature": 0,
        "max_tokens": 20,
    }


def openrouter(gateway: FakeGateway, name: str = "or") -> Endpoint:
    return Endpoint(name, gateway.base_url(name), gateway="openrouter")


async def sent_bodies(endpoint: Endpoint, bodies: list[dict[str, Any]], **config: Any) -> None:
    router = StickyRouter([endpoint], config=RoutingConfig(**config))
    async with Client(router=router, cache=None, retry=ONCE) as client:
        for body in bodies:
            await client.complete(**body)


async def test_requests_sharing_a_prefix_carry_one_session_id_and_documents_their_own() -> None:
    async with FakeGateway(endpoints=("or",)) as gateway:
        bodies = [rag("acme", "q1"), rag("acme", "q2"), rag("globex", "q1")]
        await sent_bodies(openrouter(gateway), bodies)
        sent = [r["session_id"] for r in gateway.endpoint("or").requests]
    assert sent[0] == sent[1]
    assert sent[2] != sent[0]
    assert all(s.startswith("limpet-") for s in sent)


async def test_a_fresh_process_derives_the_same_session_id() -> None:
    async with FakeGateway(endpoints=("or",)) as gateway:
        await sent_bodies(openrouter(gateway), [rag("acme", "q1")])
        ours = gateway.endpoint("or").requests[0]["session_id"]
    script = (
        "import json, sys\n"
        "from limpet import Endpoint\n"
        "from limpet.routing.sticky import StickyRouter\n"
        "e = Endpoint('or', 'https://openrouter.ai/api/v1')\n"
        "print(StickyRouter([e]).select(json.load(sys.stdin)).body['session_id'])\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={"PYTHONHASHSEED": "777", "PATH": ""},
    )
    theirs, _ = await process.communicate(json.dumps(rag("acme", "q1")).encode())
    assert process.returncode == 0
    assert theirs.decode().strip() == ours


async def test_a_callers_session_id_is_kept_and_none_enters_the_cache_key() -> None:
    mine = {**rag("acme", "q1"), "session_id": "user-42"}
    async with FakeGateway(endpoints=("or",)) as gateway:
        await sent_bodies(openrouter(gateway), [mine, rag("acme", "q1")])
        first, second = gateway.endpoint("or").requests
    assert first["session_id"] == "user-42"
    assert second["session_id"].startswith("limpet-")
    assert canonical_request(mine) == canonical_request(rag("acme", "q1"))


async def test_a_callers_own_session_header_gets_no_derived_session_id_beside_it() -> None:
    # Regression: the router sees no call's own headers, and added a body session_id
    # that contradicted (and on OpenRouter, overrode) the caller's x-session-id.
    own = {**rag("acme", "q1"), "extra_headers": {"X-Session-Id": "user-42"}}
    async with FakeGateway(endpoints=("or",)) as gateway:
        await sent_bodies(openrouter(gateway), [own, rag("acme", "q1")])
        first, second = gateway.endpoint("or").requests
    assert "session_id" not in first
    assert second["session_id"].startswith("limpet-")


async def test_pinned_providers_other_gateways_and_the_switch_get_none() -> None:
    async with FakeGateway(endpoints=("pin", "plain", "off")) as gateway:
        pinned = Endpoint.openrouter("anthropic", name="pin", base_url=gateway.base_url("pin"))
        await sent_bodies(pinned, [rag("acme", "q1")])
        await sent_bodies(Endpoint("plain", gateway.base_url("plain")), [rag("acme", "q1")])
        await sent_bodies(openrouter(gateway, "off"), [rag("acme", "q1")], session_id=False)
        bodies = [gateway.endpoint(n).requests[0] for n in ("pin", "plain", "off")]
    assert pinned.gateway == "openrouter" and pinned.pinned
    assert [("session_id" in b) for b in bodies] == [False, False, False]


async def test_a_provider_order_in_the_request_gets_no_session_id() -> None:
    body = {**rag("acme", "q1"), "provider": {"order": ["anthropic"]}}
    async with FakeGateway(endpoints=("or",)) as gateway:
        await sent_bodies(openrouter(gateway), [body])
        assert "session_id" not in gateway.endpoint("or").requests[0]


async def test_a_failover_carries_the_session_id_only_to_endpoints_that_route_by_it() -> None:
    # Regression (adversarial review): the body derived for the first endpoint went to every
    # endpoint, so a failover from OpenRouter to a plain OpenAI-compatible server sent it a
    # session_id, which a strict one (OpenAI) refuses with 400; and a failover the other way
    # reached OpenRouter without one.
    bodies = [rag(f"tenant{i}", "q") for i in range(12)]
    async with FakeGateway(endpoints=("or", "plain")) as gateway:
        endpoints = [openrouter(gateway), Endpoint("plain", gateway.base_url("plain"))]
        router = StickyRouter(endpoints, config=RoutingConfig(failure_threshold=100))
        async with Client(router=router, cache=None, retry=ONCE) as client:
            for failing in ("or", "plain"):
                gateway.endpoint(failing).fail(502, times=len(bodies))
                for body in bodies:
                    await client.complete(**body)
                gateway.endpoint(failing).clear_faults()
        to_or, to_plain = (gateway.endpoint(n).requests for n in ("or", "plain"))
    # Each endpoint was the first choice of some bodies and the failover of the others.
    assert len(to_or) + len(to_plain) == len(bodies) * 3
    assert len(to_or) > len(bodies) and len(to_plain) > len(bodies)
    assert not [r for r in to_plain if "session_id" in r]
    assert all(r.get("session_id", "").startswith("limpet-") for r in to_or)
