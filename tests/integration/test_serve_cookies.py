"""Nothing an upstream keeps per caller crosses to another caller of ``limpet serve``:
its cookies (a gateway's session, Cloudflare's ``__cf_bm``) are kept by no session of
the proxy, so none goes out with another tenant's call, or a keyless one's."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from limpet.serve import ServeConfig, create_app
from tests.integration.scripted import completion
from tests.loopback import served


class CookieSetter:
    """An upstream that sets a session cookie for each key it is shown, records the
    ``Authorization`` and ``Cookie`` of each request, and (as many behind an auth proxy
    do) takes its session cookie for the key."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def _answer(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        key, cookie = request.headers.get("Authorization", ""), request.headers.get("Cookie", "")
        self.seen.append((key, cookie))
        if not key and not cookie:
            return web.json_response({"error": {"message": "no key"}}, status=401)
        response = web.json_response(body)
        if key:
            response.set_cookie("session", f"session-of-{key.rpartition(' ')[2]}")
        return response

    async def chat(self, request: web.Request) -> web.Response:
        await request.read()
        return self._answer(request, completion())

    async def models(self, request: web.Request) -> web.Response:
        return self._answer(request, {"object": "list", "data": [{"id": "m"}]})


@contextlib.asynccontextmanager
async def proxied(upstream: CookieSetter) -> AsyncIterator[str]:
    """The proxy's base URL, in front of ``upstream`` served as ``localhost`` (aiohttp
    keeps no cookie of a bare IP address)."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream.chat)
    app.router.add_get("/v1/models", upstream.models)
    async with served(app) as url:
        upstream_url = url.replace("127.0.0.1", "localhost") + "/v1"
        async with served(create_app(ServeConfig(upstreams=(upstream_url,)))) as proxy:
            yield proxy + "/v1"


def ask(text: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "temperature": 0}


async def test_no_callers_upstream_cookie_goes_out_with_anothers_call() -> None:
    upstream = CookieSetter()
    async with proxied(upstream) as proxy, aiohttp.ClientSession() as caller:
        for key in ("sk-tenant-a", "sk-tenant-b"):
            headers = {"Authorization": f"Bearer {key}"}
            async with caller.post(f"{proxy}/chat/completions", json=ask(key), headers=headers):
                pass
            async with caller.get(f"{proxy}/models", headers=headers):
                pass
        async with caller.post(f"{proxy}/chat/completions", json=ask("no key")) as keyless:
            assert keyless.status == 401  # not answered on tenant a's or b's session
    # Each tenant's calls, the keyless one's, and the proxy's own price listing fetch
    # (it holds no key): none with a cookie.
    assert {cookie for _, cookie in upstream.seen} == {""}
    assert {key for key, _ in upstream.seen} == {"Bearer sk-tenant-a", "Bearer sk-tenant-b", ""}
