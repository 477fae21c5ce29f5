"""Native provider APIs a ``FakeGateway`` proxies: Anthropic Messages and Gemini caches.

Each endpoint ``{name}`` also serves, as a gateway that passes native APIs through would:

- ``POST /{name}/anthropic/v1/messages``: Anthropic's Messages API, whole or streamed, with
  usage in Anthropic's dialect (``input_tokens`` excluding cache reads and writes). Cache
  reads and writes come from the endpoint's ``prompt_cache`` model, given the request in
  chat-completion shape (``system`` as a leading system message, blocks and their
  ``cache_control`` kept).
- ``/{name}/google/v1beta/cachedContents``: Gemini's explicit caches. ``POST`` creates
  (400 below ``GEMINI_MIN_CACHE_TOKENS``), ``GET`` lists (``pageSize``, ``pageToken``),
  and ``GET``/``PATCH`` (``updateMask=ttl``)/``DELETE`` on ``.../{id}`` read, extend and
  delete one. Caches expire by the gateway's clock; an expired one is a 404.
- ``POST /{name}/google/v1beta/models/{model}:generateContent``: Gemini's native call, with
  ``usageMetadata`` in which ``promptTokenCount`` includes ``cachedContentTokenCount`` when
  the request names a live cache of the same model.

Errors follow each API's own shape. Native calls count in none of the endpoint's chat
counters, but a taken-down endpoint refuses them too.
"""

from __future__ import annotations

import itertools
import random
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from limpet.testing.content import compose_reply, content_seed, stream_pieces, truncate_to_tokens
from limpet.testing.endpoint import FakeEndpoint
from limpet.testing.tokens import count_prompt_tokens, count_tokens

if TYPE_CHECKING:
    from limpet.testing.gateway import FakeGateway

__all__ = ["GEMINI_DEFAULT_TTL", "GEMINI_MIN_CACHE_TOKENS", "add_native_routes"]

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
_ANTHROPIC_ERROR = {
    400: "invalid_request_error",
    401: "authentication_error",
    503: "overloaded_error",
}


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


@dataclass(slots=True)
class _NativeState:
    gateway: FakeGateway
    caches: dict[str, dict[str, _Cache]] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=itertools.count)

    def live(self, endpoint: str) -> dict[str, _Cache]:
        """The endpoint's caches, the expired ones dropped."""
        now = self.gateway.clock()
        caches = self.caches.setdefault(endpoint, {})
        for cache_id in [i for i, c in caches.items() if c.expires <= now]:
            del caches[cache_id]
        return caches


_STATE = web.AppKey("limpet_native", _NativeState)


def add_native_routes(app: web.Application, gateway: FakeGateway) -> None:
    """Serve the native APIs of this module on ``app``, for ``gateway``'s endpoints."""
    app[_STATE] = _NativeState(gateway)
    prefix = "/{endpoint}/google/v1beta"
    app.router.add_post("/{endpoint}/anthropic/v1/messages", _messages)
    app.router.add_post(prefix + "/cachedContents", _create_cache)
    app.router.add_get(prefix + "/cachedContents", _list_caches)
    app.router.add_get(prefix + "/cachedContents/{id}", _get_cache)
    app.router.add_patch(prefix + "/cachedContents/{id}", _update_cache)
    app.router.add_delete(prefix + "/cachedContents/{id}", _delete_cache)
    app.router.add_post(prefix + "/models/{call}", _generate_content)


# --- Anthropic Messages ------------------------------------------------------------------


async def _messages(request: web.Request) -> web.StreamResponse:
    state, endpoint, refusal = _admit(request, _anthropic_error)
    if refusal is not None:
        return refusal
    assert endpoint is not None
    body = await _json_body(request)
    problem = _messages_problem(body)
    if problem is not None:
        return _anthropic_error(400, problem)
    assert isinstance(body, dict)
    chat = _as_chat(body)
    model: str = body["model"]
    prompt_tokens = count_prompt_tokens(chat)
    cache = endpoint.prompt_cache.account(model, chat, prompt_tokens, now=state.gateway.clock())
    text, cut = truncate_to_tokens(compose_reply(_rng(chat)), body["max_tokens"])
    written = cache.cache_write_tokens
    usage = {
        "input_tokens": prompt_tokens - cache.total,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cache.cached_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": written - cache.cache_write_1h_tokens,
            "ephemeral_1h_input_tokens": cache.cache_write_1h_tokens,
        },
        "output_tokens": count_tokens(text),
    }
    message = {
        "id": f"msg_{secrets.token_hex(12)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "max_tokens" if cut else "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    if body.get("stream") is True:
        return await _send_events(request, _message_events(message))
    return web.json_response(message, dumps=_dumps)


def _messages_problem(body: object) -> str | None:
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{index}.role: expected 'user' or 'assistant'"
    if "system" in body and not isinstance(body["system"], str | list):
        return "system: expected a string or a list of text blocks"
    return None


def _as_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Messages request in chat-completion shape, for the tokenizer and the prompt
    cache: ``system`` becomes a leading system message, blocks stay as they are."""
    messages: list[Any] = []
    if body.get("system"):
        messages.append({"role": "system", "content": body["system"]})
    messages.extend(body["messages"])
    chat = {key: value for key, value in body.items() if key not in ("system", "messages")}
    chat["messages"] = messages
    return chat


def _message_events(message: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The Messages stream: ``message_start`` carries the input usage, ``message_delta`` the
    cumulative output tokens, as Anthropic sends them."""
    usage = message["usage"]
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {**usage, "output_tokens": 1},
    }
    text = message["content"][0]["text"]
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    events.extend(
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            },
        )
        for piece in stream_pieces(text)
    )
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


async def _send_events(
    request: web.Request, events: list[tuple[str, dict[str, Any]]]
) -> web.StreamResponse:
    response = web.StreamResponse(status=200)
    response.content_type = "text/event-stream"
    response.headers["Cache-Control"] = "no-cache"
    await response.prepare(request)
    for name, data in events:
        await response.write(
            b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
        )
    await response.write_eof()
    return response


# --- Gemini cachedContents and generateContent ---------------------------------------------


async def _create_cache(request: web.Request) -> web.Response:
    state, endpoint, refusal = _admit(request, _google_error)
    if refusal is not None:
        return refusal
    assert endpoint is not None
    body = await _json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return _google_error(400, "model is required")
    if not str(body["model"]).startswith("models/"):
        return _google_error(400, "model must be of the form models/{model}")
    ttl = _duration(body.get("ttl")) if "ttl" in body else GEMINI_DEFAULT_TTL
    if ttl is None:
        return _google_error(400, "ttl: expected a duration such as '3600s'")
    tokens = _gemini_tokens(body)
    if tokens < GEMINI_MIN_CACHE_TOKENS:
        return _google_error(
            400,
            f"Cached content is too small. total_token_count={tokens}, "
            f"min_total_token_count={GEMINI_MIN_CACHE_TOKENS}",
        )
    now = state.gateway.clock()
    display = body.get("displayName")
    cache = _Cache(
        id=f"fake{next(state.ids)}{secrets.token_hex(4)}",
        model=body["model"],
        tokens=tokens,
        display_name=display if isinstance(display, str) else None,
        created=now,
        updated=now,
        expires=now + ttl,
    )
    state.live(endpoint.name)[cache.id] = cache
    return web.json_response(cache.resource(), dumps=_dumps)


async def _list_caches(request: web.Request) -> web.Response:
    state, endpoint, refusal = _admit(request, _google_error)
    if refusal is not None:
        return refusal
    assert endpoint is not None
    caches = sorted(state.live(endpoint.name).values(), key=lambda c: (c.created, c.id))
    try:
        size = int(request.query.get("pageSize", "50"))
        start = int(request.query.get("pageToken", "0"))
    except ValueError:
        return _google_error(400, "pageSize and pageToken must be integers")
    size = max(1, min(size, 1000))
    page: dict[str, Any] = {"cachedContents": [c.resource() for c in caches[start : start + size]]}
    if start + size < len(caches):
        page["nextPageToken"] = str(start + size)
    return web.json_response(page, dumps=_dumps)


async def _get_cache(request: web.Request) -> web.Response:
    _, cache, refusal = _find_cache(request)
    if refusal is not None:
        return refusal
    assert cache is not None
    return web.json_response(cache.resource(), dumps=_dumps)


async def _update_cache(request: web.Request) -> web.Response:
    state, cache, refusal = _find_cache(request)
    if refusal is not None:
        return refusal
    assert cache is not None
    body = await _json_body(request)
    mask = request.query.get("updateMask", "")
    now = state.gateway.clock()
    if mask == "ttl" and isinstance(body, dict):
        ttl = _duration(body.get("ttl"))
        if ttl is None:
            return _google_error(400, "ttl: expected a duration such as '3600s'")
        cache.expires = now + ttl
    elif mask == "expireTime" and isinstance(body, dict):
        expires = _parse_rfc3339(body.get("expireTime"))
        if expires is None:
            return _google_error(400, "expireTime: expected an RFC 3339 time")
        cache.expires = expires
    else:
        return _google_error(400, "updateMask must be ttl or expireTime")
    cache.updated = now
    return web.json_response(cache.resource(), dumps=_dumps)


async def _delete_cache(request: web.Request) -> web.Response:
    state, cache, refusal = _find_cache(request)
    if refusal is not None:
        return refusal
    assert cache is not None
    del state.live(request.match_info["endpoint"])[cache.id]
    return web.json_response({})


async def _generate_content(request: web.Request) -> web.Response:
    state, endpoint, refusal = _admit(request, _google_error)
    if refusal is not None:
        return refusal
    assert endpoint is not None
    model, _, method = request.match_info["call"].partition(":")
    if method != "generateContent":
        return _google_error(404, f"unknown method {method!r}")
    body = await _json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("contents"), list):
        return _google_error(400, "contents is required")
    cached = 0
    name = body.get("cachedContent")
    if name is not None:
        cache = state.live(endpoint.name).get(str(name).removeprefix("cachedContents/"))
        if cache is None:
            return _google_error(404, f"CachedContent not found (or permission denied): {name}")
        if cache.model != f"models/{model}":
            return _google_error(400, "the model of the request and of the cached content differ")
        cached = cache.tokens
    prompt = cached + _gemini_tokens(body)
    seed_body = {"model": model, "temperature": 0, "contents": body["contents"], "cache": name}
    text = compose_reply(_rng(seed_body))
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
    return web.json_response(reply, dumps=_dumps)


def _find_cache(
    request: web.Request,
) -> tuple[_NativeState, _Cache | None, web.Response | None]:
    state, endpoint, refusal = _admit(request, _google_error)
    if refusal is not None or endpoint is None:
        return state, None, refusal
    cache_id = request.match_info["id"]
    cache = state.live(endpoint.name).get(cache_id)
    if cache is None:
        message = f"CachedContent not found (or permission denied): cachedContents/{cache_id}"
        return state, None, _google_error(404, message)
    return state, cache, None


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


# --- shared ------------------------------------------------------------------------------


def _admit(
    request: web.Request, error: Callable[[int, str], web.Response]
) -> tuple[_NativeState, FakeEndpoint | None, web.Response | None]:
    """The state and endpoint of a native request, or the refusal to send instead."""
    state = request.app[_STATE]
    endpoint = state.gateway.endpoints.get(request.match_info["endpoint"])
    if endpoint is None:
        return state, None, error(404, f"No endpoint {request.match_info['endpoint']!r}")
    if not state.gateway._authorised(request):
        return state, None, error(401, "invalid x-api-key or bearer token")
    if not endpoint.up:
        return state, None, error(503, f"Endpoint {endpoint.name!r} is down")
    return state, endpoint, None


async def _json_body(request: web.Request) -> object:
    raw = await request.read()
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _google_error(status: int, message: str) -> web.Response:
    error = {"code": status, "message": message, "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}
    return web.json_response({"error": error}, status=status, dumps=_dumps)


def _anthropic_error(status: int, message: str) -> web.Response:
    kind = _ANTHROPIC_ERROR.get(status, "api_error")
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.json_response(body, status=status, dumps=_dumps)


def _rng(body: Mapping[str, Any]) -> random.Random:
    seed = content_seed(body)
    return random.Random(seed) if seed is not None else random.Random(secrets.randbits(64))


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


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
