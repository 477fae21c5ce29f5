"""Gemini's explicit caches and native call as a ``FakeGateway`` passes them through.

- ``/{endpoint}/google/v1beta/cachedContents``: ``POST`` creates (400 below
  ``GEMINI_MIN_CACHE_TOKENS``), ``GET`` lists (``pageSize``, ``pageToken``), and
  ``GET``/``PATCH`` (``updateMask=ttl``)/``DELETE`` on ``.../{id}`` read, extend and
  delete one. Caches expire by the gateway's clock; an expired one is a 404.
- ``POST /{endpoint}/google/v1beta/models/{model}:generateContent``: with
  ``usageMetadata`` in which ``promptTokenCount`` includes ``cachedContentTokenCount``
  when the request names a live cache of the same model.

Errors take Google's shape.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from limpet.testing.content import compose_reply
from limpet.testing.native_requests import admit, dumps, json_body, reply_rng
from limpet.testing.tokens import count_tokens

if TYPE_CHECKING:
    from limpet.testing.gateway import FakeGateway

#: Gemini refuses an explicit cache smaller than this many tokens.
GEMINI_MIN_CACHE_TOKENS = 1024
#: Seconds a cache lives when created without a TTL, as Gemini's default.
GEMINI_DEFAULT_TTL = 3600.0

_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    503: "UNAVAILABLE",
}


class GeminiCaches:
    """The explicit caches of every endpoint of ``gateway``, and the calls that use them."""

    __slots__ = ("_caches", "_gateway", "_ids")

    def __init__(self, gateway: FakeGateway) -> None:
        self._gateway = gateway
        self._caches: dict[str, dict[str, _Cache]] = {}
        self._ids = itertools.count()

    def live(self, endpoint: str) -> dict[str, _Cache]:
        """The endpoint's caches, the expired ones dropped."""
        now = self._gateway.clock()
        caches = self._caches.setdefault(endpoint, {})
        for cache_id in [i for i, c in caches.items() if c.expires <= now]:
            del caches[cache_id]
        return caches

    async def create_cache(self, request: web.Request) -> web.Response:
        """``POST .../cachedContents``: a new cache, for ``ttl`` or the default."""
        endpoint, refusal = admit(self._gateway, request, google_error)
        if refusal is not None:
            return refusal
        assert endpoint is not None
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return google_error(400, "model is required")
        if not str(body["model"]).startswith("models/"):
            return google_error(400, "model must be of the form models/{model}")
        ttl = _duration(body.get("ttl")) if "ttl" in body else GEMINI_DEFAULT_TTL
        if ttl is None:
            return google_error(400, "ttl: expected a duration such as '3600s'")
        tokens = _gemini_tokens(body)
        if tokens < GEMINI_MIN_CACHE_TOKENS:
            return google_error(
                400,
                f"Cached content is too small. total_token_count={tokens}, "
                f"min_total_token_count={GEMINI_MIN_CACHE_TOKENS}",
            )
        now = self._gateway.clock()
        display = body.get("displayName")
        cache = _Cache(
            id=f"fake{next(self._ids)}{secrets.token_hex(4)}",
            model=body["model"],
            tokens=tokens,
            display_name=display if isinstance(display, str) else None,
            created=now,
            updated=now,
            expires=now + ttl,
        )
        self.live(endpoint.name)[cache.id] = cache
        return web.json_response(cache.resource(), dumps=dumps)

    async def list_caches(self, request: web.Request) -> web.Response:
        """``GET .../cachedContents``: the live caches, a page at a time."""
        endpoint, refusal = admit(self._gateway, request, google_error)
        if refusal is not None:
            return refusal
        assert endpoint is not None
        caches = sorted(self.live(endpoint.name).values(), key=lambda c: (c.created, c.id))
        try:
            size = int(request.query.get("pageSize", "50"))
            start = int(request.query.get("pageToken", "0"))
        except ValueError:
            return google_error(400, "pageSize and pageToken must be integers")
        size = max(1, min(size, 1000))
        page: dict[str, Any] = {
            "cachedContents": [c.resource() for c in caches[start : start + size]]
        }
        if start + size < len(caches):
            page["nextPageToken"] = str(start + size)
        return web.json_response(page, dumps=dumps)

    async def get_cache(self, request: web.Request) -> web.Response:
        """``GET .../cachedContents/{id}``."""
        cache, refusal = self._find(request)
        if refusal is not None:
            return refusal
        assert cache is not None
        return web.json_response(cache.resource(), dumps=dumps)

    async def update_cache(self, request: web.Request) -> web.Response:
        """``PATCH .../cachedContents/{id}``: a new ``ttl`` or ``expireTime``."""
        cache, refusal = self._find(request)
        if refusal is not None:
            return refusal
        assert cache is not None
        body = await json_body(request)
        mask = request.query.get("updateMask", "")
        now = self._gateway.clock()
        if mask == "ttl" and isinstance(body, dict):
            ttl = _duration(body.get("ttl"))
            if ttl is None:
                return google_error(400, "ttl: expected a duration such as '3600s'")
            cache.expires = now + ttl
        elif mask == "expireTime" and isinstance(body, dict):
            expires = _parse_rfc3339(body.get("expireTime"))
            if expires is None:
                return google_error(400, "expireTime: expected an RFC 3339 time")
            cache.expires = expires
        else:
            return google_error(400, "updateMask must be ttl or expireTime")
        cache.updated = now
        return web.json_response(cache.resource(), dumps=dumps)

    async def delete_cache(self, request: web.Request) -> web.Response:
        """``DELETE .../cachedContents/{id}``."""
        cache, refusal = self._find(request)
        if refusal is not None:
            return refusal
        assert cache is not None
        del self.live(request.match_info["endpoint"])[cache.id]
        return web.json_response({})

    async def generate_content(self, request: web.Request) -> web.Response:
        """``POST .../models/{model}:generateContent``, from a cache when named."""
        endpoint, refusal = admit(self._gateway, request, google_error)
        if refusal is not None:
            return refusal
        assert endpoint is not None
        model, _, method = request.match_info["call"].partition(":")
        if method != "generateContent":
            return google_error(404, f"unknown method {method!r}")
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("contents"), list):
            return google_error(400, "contents is required")
        cached = 0
        name = body.get("cachedContent")
        if name is not None:
            cache = self.live(endpoint.name).get(str(name).removeprefix("cachedContents/"))
            if cache is None:
                return google_error(404, f"CachedContent not found (or permission denied): {name}")
            if cache.model != f"models/{model}":
                return google_error(
                    400, "the model of the request and of the cached content differ"
                )
            cached = cache.tokens
        prompt = cached + _gemini_tokens(body)
        seed_body = {"model": model, "temperature": 0, "contents": body["contents"], "cache": name}
        text = compose_reply(reply_rng(seed_body))
        candidates = count_tokens(text)
        usage: dict[str, Any] = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": candidates,
            "totalTokenCount": prompt + candidates,
        }
        if cached:
            usage["cachedContentTokenCount"] = cached
        reply = {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": text}]},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": usage,
            "modelVersion": model,
        }
        return web.json_response(reply, dumps=dumps)

    def _find(self, request: web.Request) -> tuple[_Cache | None, web.Response | None]:
        """The live cache a request names, or the refusal to send instead."""
        endpoint, refusal = admit(self._gateway, request, google_error)
        if refusal is not None or endpoint is None:
            return None, refusal
        cache_id = request.match_info["id"]
        cache = self.live(endpoint.name).get(cache_id)
        if cache is None:
            message = f"CachedContent not found (or permission denied): cachedContents/{cache_id}"
            return None, google_error(404, message)
        return cache, None


@dataclass(slots=True)
class _Cache:
    id: str
    model: str
    tokens: int
    display_name: str | None
    created: float
    updated: float
    expires: float

    def resource(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": f"cachedContents/{self.id}",
            "model": self.model,
            "createTime": _rfc3339(self.created),
            "updateTime": _rfc3339(self.updated),
            "expireTime": _rfc3339(self.expires),
            "usageMetadata": {"totalTokenCount": self.tokens},
        }
        if self.display_name is not None:
            data["displayName"] = self.display_name
        return data


def _gemini_tokens(body: Mapping[str, Any]) -> int:
    """Tokens of a Gemini request's or cache's contents, system instruction and tools."""
    tokens = 0
    contents = body.get("contents")
    for content in contents if isinstance(contents, list) else ():
        tokens += _parts_tokens(content)
    tokens += _parts_tokens(body.get("systemInstruction"))
    if "tools" in body:
        tokens += count_tokens(orjson.dumps(body["tools"], option=orjson.OPT_SORT_KEYS).decode())
    return tokens


def _parts_tokens(content: object) -> int:
    parts = content.get("parts") if isinstance(content, Mapping) else None
    tokens = 0
    for part in parts if isinstance(parts, list) else ():
        text = part.get("text") if isinstance(part, Mapping) else None
        tokens += count_tokens(text) if isinstance(text, str) else 0
    return tokens


def google_error(status: int, message: str) -> web.Response:
    """An error in Google's shape."""
    error = {"code": status, "message": message, "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}
    return web.json_response({"error": error}, status=status, dumps=dumps)


def _duration(value: object) -> float | None:
    """A Duration string (``"3600s"``, ``"1.5s"``) in seconds, or None when malformed."""
    if not isinstance(value, str) or not value.endswith("s"):
        return None
    try:
        seconds = float(value[:-1])
    except ValueError:
        return None
    return seconds if 0 < seconds < float("inf") else None


def _rfc3339(unix: float) -> str:
    """Unix time as Google writes it: UTC with nanoseconds, ``...T10:00:00.123456789Z``."""
    moment = datetime.fromtimestamp(unix, tz=UTC)
    nanos = round((unix - int(unix)) * 1e9) % 1_000_000_000
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"


def _parse_rfc3339(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    text = value.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:
        digits = "".join(itertools.takewhile(str.isdigit, rest))
        text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
