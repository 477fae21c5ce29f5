"""Explicit Gemini context caches (``cachedContents``): create, get, update TTL, delete, list.

Gemini caches a prompt prefix explicitly as a *cachedContent*: a resource holding
contents, a system instruction and tools for one model, alive until its TTL runs out.
Requests that name it are billed the cheap cache-read price for its tokens; in exchange,
its storage is billed per token-hour for as long as it lives. ``CachedContents`` manages
them over the native REST API, wherever the gateway proxies it (by default
``{base_url}/google/v1beta/cachedContents``; Google's own is
``https://generativelanguage.googleapis.com/v1beta/cachedContents``), and keeps the
storage cost in a ``StorageLedger``.

It talks HTTP through an ``HTTPCall``, a one-method protocol, so it needs nothing from
the Client: ``AiohttpCall`` adapts an ``aiohttp.ClientSession`` it borrows.

Example:
    >>> async with aiohttp.ClientSession() as session:
    ...     http = AiohttpCall(session, headers={"Authorization": "Bearer sk-or-..."})
    ...     caches = CachedContents(http, "https://gateway.example/api")
    ...     cache = await caches.create(model="google/gemini-2.5-flash", ttl=3600,
    ...                                 system_instruction=LONG_MANUAL)
    ...     body = with_cached_content(request, cache.name)     # reference it
    ...     await caches.update(cache.name, ttl=7200)             # keep it longer
    ...     await caches.delete(cache.name)                       # stop paying for it
    ...     print(caches.ledger.cost_usd(time.time()))
"""

from __future__ import annotations

import builtins
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
import orjson

from limpet.errors import (
    BODY_EXCERPT_CHARS,
    APIResponseError,
    ConfigurationError,
    InvalidRequestError,
    excerpt,
    header_secrets,
    scrub,
    status_error,
    upstream_errors,
)
from limpet.providers.pricing import storage_cost_usd
from limpet.providers.prompt_cache import DEFAULT_CAPABILITIES, CapabilityTable

__all__ = [
    "DEFAULT_CACHED_CONTENTS_PATH",
    "AiohttpCall",
    "CachedContent",
    "CachedContents",
    "HTTPCall",
    "HTTPReply",
    "StorageEntry",
    "StorageLedger",
    "native_model",
    "with_cached_content",
]

#: Where a gateway proxies Gemini's native API, relative to its base URL.
DEFAULT_CACHED_CONTENTS_PATH = "/google/v1beta/cachedContents"

_MAX_PAGES = 1000
_NAME_PREFIX = "cachedContents/"
_ID = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class HTTPReply:
    """What an ``HTTPCall`` returns.

    Attributes:
        status: the HTTP status.
        body: the parsed JSON body, or None when it was empty or not JSON.
        text: the first characters of the body as received, for error messages.
        request_id: the server's request id header, when it sent one.
    """

    status: int
    body: object
    text: str = ""
    request_id: str | None = None


class HTTPCall(Protocol):
    """Sends one HTTP request with an optional JSON body; raises only ``limpet.errors``
    (``APIConnectionError``, ``APITimeoutError``) when no answer arrives. What it returns
    is already scrubbed of its credentials: errors are built from it as it is."""

    async def __call__(
        self,
        method: str,
        url: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> HTTPReply: ...


class AiohttpCall:
    """An ``HTTPCall`` over an ``aiohttp.ClientSession`` it borrows and never closes.

    Its credentials (the values of ``headers``) are scrubbed from every reply (body, text,
    request id) and error, whatever the server echoes back.

    Args:
        session: the session to send through.
        headers: sent with every request: ``{"Authorization": "Bearer ..."}`` for a
            gateway, ``{"x-goog-api-key": ...}`` for Google's own API. Never shown.
        name: names the service in error messages.
    """

    __slots__ = ("_headers", "_name", "_secrets", "_session")

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        headers: Mapping[str, str] | None = None,
        name: str = "gemini",
    ) -> None:
        self._session = session
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._secrets = header_secrets(headers or {})
        self._name = name

    def __repr__(self) -> str:
        return f"AiohttpCall(name={self._name!r})"

    async def __call__(
        self,
        method: str,
        url: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> HTTPReply:
        data = None if json is None else orjson.dumps(json)
        with upstream_errors(self._name, self._secrets):
            async with self._session.request(
                method, url, data=data, params=params, headers=self._headers
            ) as response:
                raw = await response.read()
                status = response.status
                request_id = response.headers.get("x-request-id")
        try:
            # Parsed after scrubbing: a secret inside a JSON string leaves it valid JSON.
            body = orjson.loads(scrub(raw.decode(), self._secrets)) if raw else None
        except (orjson.JSONDecodeError, UnicodeDecodeError):
            body = None
        text = excerpt(raw, self._secrets)
        if request_id is not None:
            request_id = scrub(request_id, self._secrets)
        return HTTPReply(status, body, text, request_id)


@dataclass(frozen=True, slots=True)
class CachedContent:
    """One cachedContent as the API describes it.

    Attributes:
        name: its resource name, ``cachedContents/{id}``; requests reference it by this.
        model: the model it serves, ``models/...``.
        display_name: the label given at creation, or None.
        create_time: Unix time of creation, when reported.
        update_time: Unix time of the last update, when reported.
        expire_time: Unix time it expires, when reported.
        total_tokens: tokens it holds (``usageMetadata.totalTokenCount``).
        raw: the resource JSON as received.
    """

    name: str
    model: str
    display_name: str | None
    create_time: float | None
    update_time: float | None
    expire_time: float | None
    total_tokens: int
    raw: Mapping[str, Any]

    @classmethod
    def from_json(cls, data: object) -> CachedContent:
        """Raises:
        APIResponseError: ``data`` is not a cachedContent (no ``name``).
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise APIResponseError(
                "not a cachedContent", status_code=200, body=repr(data)[:BODY_EXCERPT_CHARS]
            )
        usage = data.get("usageMetadata")
        tokens = usage.get("totalTokenCount") if isinstance(usage, Mapping) else None
        display = data.get("displayName")
        return cls(
            name=data["name"],
            model=str(data.get("model") or ""),
            display_name=display if isinstance(display, str) else None,
            create_time=_timestamp(data.get("createTime")),
            update_time=_timestamp(data.get("updateTime")),
            expire_time=_timestamp(data.get("expireTime")),
            total_tokens=tokens if isinstance(tokens, int) and tokens > 0 else 0,
            raw=data,
        )


@dataclass(slots=True)
class StorageEntry:
    """One cache's storage in the ledger: ``tokens`` stored from ``start`` to ``end``."""

    name: str
    tokens: int
    usd_per_mtok_hour: float
    start: float
    end: float

    def cost_usd(self, now: float) -> float:
        """Storage accrued up to ``now`` (or to its end, when earlier)."""
        return storage_cost_usd(
            self.tokens, min(now, self.end) - self.start, self.usd_per_mtok_hour
        )


class StorageLedger:
    """The storage cost of explicit caches, prorated by the second from creation until they
    expire or are deleted. One ledger may be shared by several ``CachedContents``."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[str, StorageEntry] = {}

    def __repr__(self) -> str:
        return f"StorageLedger(caches={len(self._entries)})"

    @property
    def entries(self) -> Mapping[str, StorageEntry]:
        """Every cache recorded, by name."""
        return self._entries

    def record(
        self, name: str, *, tokens: int, usd_per_mtok_hour: float, start: float, end: float
    ) -> None:
        """Record a cache's storage, or move its end (a TTL update) and token count."""
        entry = self._entries.get(name)
        if entry is None:
            self._entries[name] = StorageEntry(name, tokens, usd_per_mtok_hour, start, end)
        else:
            entry.tokens = tokens or entry.tokens
            entry.end = end

    def end(self, name: str, at: float) -> None:
        """A cache was deleted at ``at``: storage stops accruing then."""
        entry = self._entries.get(name)
        if entry is not None:
            entry.end = min(entry.end, at)

    def cost_usd(self, now: float) -> float:
        """Storage dollars accrued by every cache up to ``now`` (Unix time)."""
        return sum(entry.cost_usd(now) for entry in self._entries.values())


class CachedContents:
    """Gemini ``cachedContents`` over the native REST API, with a storage ledger.

    Errors: a non-2xx answer raises the matching ``APIStatusError`` (``NotFoundError`` for a
    cache that expired or was deleted), no answer ``APIConnectionError``; nothing is retried.

    Args:
        http: sends the requests.
        base_url: the gateway's (or Google's) API root.
        path: the collection's path under ``base_url``.
        ledger: where storage cost goes; a new one when None.
        capabilities: gives each model's storage price (``storage_usd_per_mtok_hour``).
        storage_usd_per_mtok_hour: a storage price for every cache, over the table's.
        clock: Unix time, for deletions and when the server sends no times.
    """

    __slots__ = ("_capabilities", "_http", "_price", "_url", "clock", "ledger")

    def __init__(
        self,
        http: HTTPCall,
        base_url: str,
        *,
        path: str = DEFAULT_CACHED_CONTENTS_PATH,
        ledger: StorageLedger | None = None,
        capabilities: CapabilityTable = DEFAULT_CAPABILITIES,
        storage_usd_per_mtok_hour: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"CachedContents.base_url: expected an http(s) URL, got {base_url!r}"
            )
        if not isinstance(path, str) or (path and not path.startswith("/")):
            raise ConfigurationError(f"CachedContents.path: expected a path from '/', got {path!r}")
        self._http = http
        self._url = base_url.rstrip("/") + path.rstrip("/")
        self.ledger = ledger if ledger is not None else StorageLedger()
        self._capabilities = capabilities
        self._price = storage_usd_per_mtok_hour
        self.clock = clock

    def __repr__(self) -> str:
        return f"CachedContents({self._url!r})"

    @property
    def url(self) -> str:
        """The collection's URL."""
        return self._url

    async def create(
        self,
        *,
        model: str,
        contents: Sequence[Mapping[str, Any]] | None = None,
        system_instruction: str | Mapping[str, Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_config: Mapping[str, Any] | None = None,
        ttl: float | None = None,
        display_name: str | None = None,
    ) -> CachedContent:
        """Create a cache of ``contents``, ``system_instruction`` and ``tools`` for ``model``.

        Args:
            model: ``google/gemini-2.5-flash``, ``gemini-2.5-flash`` or ``models/...``.
            contents: Gemini ``Content`` objects (``{"role", "parts": [{"text"}]}``).
            system_instruction: text, or a Gemini ``Content``.
            ttl: seconds it lives; the API's default (1 h) when None.
            display_name: a label for listings.
        """
        body: dict[str, Any] = {"model": native_model(model)}
        if contents is not None:
            body["contents"] = list(contents)
        if isinstance(system_instruction, str):
            body["systemInstruction"] = {"parts": [{"text": system_instruction}]}
        elif system_instruction is not None:
            body["systemInstruction"] = system_instruction
        if tools is not None:
            body["tools"] = list(tools)
        if tool_config is not None:
            body["toolConfig"] = tool_config
        if ttl is not None:
            body["ttl"] = _duration(ttl)
        if display_name is not None:
            body["displayName"] = display_name
        cache = await self._send("POST", self._url, json=body)
        self._record(cache)
        return cache

    async def get(self, name: str) -> CachedContent:
        """The cache named ``name`` (``cachedContents/{id}`` or just the id)."""
        cache = await self._send("GET", self._item(name))
        self._record(cache)
        return cache

    async def update(self, name: str, *, ttl: float) -> CachedContent:
        """Set the cache to expire ``ttl`` seconds from now; its storage cost follows."""
        url = self._item(name)
        cache = await self._send(
            "PATCH", url, json={"ttl": _duration(ttl)}, params={"updateMask": "ttl"}
        )
        self._record(cache)
        return cache

    async def delete(self, name: str) -> None:
        """Delete the cache; its storage stops accruing now."""
        url = self._item(name)
        reply = await self._http("DELETE", url)
        self._raise_for(reply)
        self.ledger.end(_full_name(name), self.clock())

    async def list(self, *, page_size: int | None = None) -> builtins.list[CachedContent]:
        """Every cache the account holds, following ``nextPageToken`` to the end."""
        found: builtins.list[CachedContent] = []
        params: dict[str, str] = {}
        if page_size is not None:
            params["pageSize"] = str(page_size)
        seen: set[str] = set()
        for _ in range(_MAX_PAGES):
            reply = await self._http("GET", self._url, params=params or None)
            self._raise_for(reply)
            page = reply.body if isinstance(reply.body, Mapping) else {}
            items = page.get("cachedContents")
            for item in items if isinstance(items, list) else ():
                cache = CachedContent.from_json(item)
                self._record(cache)
                found.append(cache)
            token = page.get("nextPageToken")
            if not isinstance(token, str) or not token or token in seen:
                break
            seen.add(token)
            params["pageToken"] = token
        return found

    def storage_price(self, model: str) -> float | None:
        """USD per million tokens per hour of storage for ``model``, or None when free or
        unknown."""
        if self._price is not None:
            return self._price
        capability = self._capabilities.lookup(_slug(model))
        return None if capability is None else capability.storage_usd_per_mtok_hour

    async def _send(
        self,
        method: str,
        url: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> CachedContent:
        reply = await self._http(method, url, json=json, params=params)
        self._raise_for(reply)
        return CachedContent.from_json(reply.body)

    def _raise_for(self, reply: HTTPReply) -> None:
        if 200 <= reply.status < 300:
            return
        error = reply.body.get("error") if isinstance(reply.body, Mapping) else None
        message = error.get("message") if isinstance(error, Mapping) else None
        raise status_error(reply.status)(
            message if isinstance(message, str) else reply.text or "no message",
            status_code=reply.status,
            body=reply.text,
            request_id=reply.request_id,
        )

    def _item(self, name: str) -> str:
        cache_id = name.removeprefix(_NAME_PREFIX) if isinstance(name, str) else ""
        if not _ID.fullmatch(cache_id):
            raise InvalidRequestError("name", "cachedContents/{id} or an id", name)
        return f"{self._url}/{cache_id}"

    def _record(self, cache: CachedContent) -> None:
        price = self.storage_price(cache.model)
        if price is None:
            return
        now = self.clock()
        start = cache.create_time if cache.create_time is not None else now
        end = cache.expire_time if cache.expire_time is not None else math.inf
        self.ledger.record(
            cache.name, tokens=cache.total_tokens, usd_per_mtok_hour=price, start=start, end=end
        )


def native_model(model: str) -> str:
    """A model as Gemini's native API names it: ``google/gemini-2.5-flash`` →
    ``models/gemini-2.5-flash``."""
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("model", "a non-empty str", model)
    if model.startswith("models/"):
        return model
    return "models/" + model.removeprefix("google/")


def with_cached_content(
    body: Mapping[str, Any], name: str, *, native: bool = False
) -> dict[str, Any]:
    """A copy of ``body`` that references the cache ``name``.

    Args:
        body: a request body; it is not modified.
        name: the cache's resource name.
        native: for Gemini's native ``generateContent`` (``cachedContent``); otherwise for
            its OpenAI-compatible chat API (``extra_body.google.cached_content``).

    The reference is part of the request, hence of limpet's cache key: answers that read
    different caches are never confused.
    """
    full = _full_name(name)
    if native:
        return {**body, "cachedContent": full}
    extra = body.get("extra_body")
    extra = dict(extra) if isinstance(extra, Mapping) else {}
    google = extra.get("google")
    extra["google"] = {**(google if isinstance(google, Mapping) else {}), "cached_content": full}
    return {**body, "extra_body": extra}


def _full_name(name: str) -> str:
    return name if name.startswith(_NAME_PREFIX) else _NAME_PREFIX + name


def _slug(model: str) -> str:
    """``models/gemini-2.5-flash`` as the capability table spells it."""
    bare = model.removeprefix("models/")
    return bare if "/" in bare else "google/" + bare


def _duration(seconds: float) -> str:
    """Seconds in the API's Duration format: ``"3600s"``, ``"1.5s"``."""
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 < seconds < math.inf
    ):
        raise InvalidRequestError("ttl", "a finite number of seconds > 0", seconds)
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{seconds!r}s"


_FRACTION = re.compile(r"\.(\d{6})\d+")


def _timestamp(value: object) -> float | None:
    """RFC 3339 time (``2026-01-01T10:00:00.123456789Z``) as Unix time, or None."""
    if not isinstance(value, str):
        return None
    # Python before 3.12 reads at most six fractional digits; Google sends nine.
    text = _FRACTION.sub(r".\1", value).replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
