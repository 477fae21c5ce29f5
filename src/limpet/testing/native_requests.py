"""What the native APIs of a ``FakeGateway`` share: admitting a request to its endpoint,
reading its JSON body, seeding a reply, writing JSON."""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from limpet.testing.content import content_seed
from limpet.testing.endpoint import FakeEndpoint

if TYPE_CHECKING:
    from limpet.testing.gateway import FakeGateway

#: Makes the error response of one native API from a status and a message.
ErrorResponse = Callable[[int, str], web.Response]


def admit(
    gateway: FakeGateway, request: web.Request, error: ErrorResponse
) -> tuple[FakeEndpoint | None, web.Response | None]:
    """The endpoint of a native request, or the refusal to send instead."""
    endpoint = gateway.endpoints.get(request.match_info["endpoint"])
    if endpoint is None:
        return None, error(404, f"No endpoint {request.match_info['endpoint']!r}")
    if not gateway._authorised(request):
        return None, error(401, "invalid x-api-key or bearer token")
    if not endpoint.up:
        return None, error(503, f"Endpoint {endpoint.name!r} is down")
    return endpoint, None


async def json_body(request: web.Request) -> object:
    """The request's JSON body, or None when it is empty or not JSON."""
    raw = await request.read()
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def reply_rng(body: Mapping[str, Any]) -> random.Random:
    """The RNG a reply to ``body`` is drawn from: seeded by the request when it is
    deterministic (``content_seed``), fresh otherwise."""
    seed = content_seed(body)
    return random.Random(seed) if seed is not None else random.Random(secrets.randbits(64))


def dumps(value: Any) -> str:
    """JSON text, as ``web.json_response`` wants it."""
    return orjson.dumps(value).decode()
