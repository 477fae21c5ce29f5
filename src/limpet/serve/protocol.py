"""The proxy's wire rules, without I/O: which control headers a request may carry and
which of its headers go upstream, whether a streaming caller asked for usage, what an answer
says about how it was served, and OpenAI's embeddings answer. OpenAI's error shape for
every failure is ``limpet.serve.errors``'s."""

from __future__ import annotations

import base64
import hmac
import ipaddress
import math
import struct
from collections.abc import Collection, Mapping
from typing import Any, Final, Literal, Protocol, cast, get_args

from limpet.errors import InvalidRequestError
from limpet.models import CacheStatus, Completion, Embeddings
from limpet.pipeline.credentials import key_scope
from limpet.pipeline.policy import CacheMode
from limpet.pipeline.validation import validate_ttl

__all__ = [
    "ATTRIBUTION_HEADERS",
    "BODY_RESERVED",
    "CACHE_HEADER",
    "CACHE_MODE_HEADER",
    "COST_HEADER",
    "ENDPOINT_HEADER",
    "INPUTS_HEADER",
    "KEY_HEADER",
    "ORGANIZATION_HEADERS",
    "TTL_HEADER",
    "BadHeaderError",
    "VectorEncoding",
    "answer_headers",
    "as_served",
    "call_options",
    "client_key_allowed",
    "client_tenant",
    "embeddings_body",
    "embeddings_headers",
    "encoding_problem",
    "from_this_host",
    "has_money",
    "split_body",
    "undecodable_header",
    "usage_wanted",
    "vector_encoding",
]

CACHE_HEADER: Final = "X-Limpet-Cache"
ENDPOINT_HEADER: Final = "X-Limpet-Endpoint"
KEY_HEADER: Final = "X-Limpet-Key"
COST_HEADER: Final = "X-Limpet-Cost-USD"
#: On an embeddings answer: how many inputs were hits, misses and coalesced.
INPUTS_HEADER: Final = "X-Limpet-Inputs"
CACHE_MODE_HEADER: Final = "X-Limpet-Cache-Mode"
TTL_HEADER: Final = "X-Limpet-TTL"

#: Body fields whose names are parameters of ``Client.complete()``, ``stream()`` or
#: ``embed()`` with another meaning (``self`` included: a bound method's own): they go
#: upstream through ``extra_body``, so a body can never set a call option nor clash with one.
BODY_RESERVED: Final = frozenset(
    {"self", "cache", "ttl", "timeout", "extra_headers", "extra_body", "tenant"}
)

#: A caller's headers sent upstream with its call, whoever's key goes: OpenRouter's app
#: attribution. Never part of the cache key.
ATTRIBUTION_HEADERS: Final = ("HTTP-Referer", "X-Title")
#: A caller's headers that choose what its key bills (OpenAI's organization and project):
#: sent upstream only with the caller's own key, never with the proxy's.
ORGANIZATION_HEADERS: Final = ("OpenAI-Organization", "OpenAI-Project")

#: How ``/v1/embeddings`` answers vectors (OpenAI's ``encoding_format``).
VectorEncoding = Literal["float", "base64"]


class BadHeaderError(InvalidRequestError):
    """A control header with a value the proxy does not take."""


def call_options(
    headers: Mapping[str, str], *, forward_authorization: bool = True
) -> dict[str, Any]:
    """The ``Client.complete()``/``stream()``/``embed()`` options a request's headers ask
    for.

    With ``forward_authorization``, the caller's ``Authorization`` and
    ``ORGANIZATION_HEADERS`` go upstream as they are; its key also scopes the cache entries
    and flights of the call (``limpet.pipeline.credentials.call_scope``). Without it, the
    proxy's own key is sent. The ``ATTRIBUTION_HEADERS`` go either way.

    Raises:
        BadHeaderError: ``X-Limpet-Cache-Mode`` or ``X-Limpet-TTL`` has a bad value.
    """
    options: dict[str, Any] = {}
    forwarded = _forwarded_headers(headers, forward_authorization)
    if forwarded:
        options["extra_headers"] = forwarded
    mode = headers.get(CACHE_MODE_HEADER)
    if mode is not None:
        options["cache"] = _cache_mode(mode)
    ttl = headers.get(TTL_HEADER)
    if ttl is not None:
        options["ttl"] = _ttl(ttl)
    return options


def undecodable_header(headers: Mapping[str, str]) -> BadHeaderError | None:
    """The error for a request whose credential or attribution header holds bytes that
    are not UTF-8 (none of them can be sent, hashed for a scope, or compared), or None.
    The value is never quoted: it may be a key."""
    for name in ("Authorization", *ORGANIZATION_HEADERS, *ATTRIBUTION_HEADERS):
        value = headers.get(name)
        if value is not None and not _utf8(value):
            return BadHeaderError(name, "UTF-8 text", described="bytes that are not UTF-8")
    return None


class _MultiHeaders(Protocol):
    """Request headers, each name's every value (aiohttp's ``CIMultiDictProxy``)."""

    def getall(self, key: str, default: Collection[str]) -> Collection[str]: ...


def encoding_problem(headers: _MultiHeaders) -> str | None:
    """Why a request's body is refused unread (415), or None: one sent compressed
    (``Content-Encoding``, in any of its headers or values) is not read, for unpacked it
    would be whole before any limit applied to what it unpacks to (61 KB of gzip is 63 MB
    of JSON), whoever sent it, a key or not."""
    for header in headers.getall("Content-Encoding", ()):
        for encoding in header.split(","):
            coding = encoding.strip().lower()
            if coding not in ("", "identity"):
                return (
                    f"Content-Encoding {coding[:40]!r} is not accepted: send the request body "
                    "as it is"
                )
    return None


def from_this_host(remote: str | None) -> bool:
    """Whether a request's peer address (``request.remote``) is this host's own.

    Example:
        >>> from_this_host("127.0.0.1"), from_this_host("::ffff:127.0.0.1"), from_this_host("::1")
        (True, True, True)
        >>> from_this_host("10.0.0.7"), from_this_host("::ffff:10.0.0.7"), from_this_host(None)
        (False, False, False)
    """
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback


def _utf8(value: str) -> bool:
    """Whether a header value aiohttp decoded came from UTF-8 (its other bytes are kept
    as lone surrogates)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _forwarded_headers(headers: Mapping[str, str], with_credentials: bool) -> dict[str, str]:
    names = ("Authorization", *ORGANIZATION_HEADERS) if with_credentials else ()
    return {name: value for name in (*names, *ATTRIBUTION_HEADERS) if (value := headers.get(name))}


def _cache_mode(value: str) -> CacheMode:
    for mode in get_args(CacheMode):
        if value.strip().lower() == mode:
            return cast(CacheMode, mode)
    raise BadHeaderError(CACHE_MODE_HEADER, "bypass, refresh or force", value)


def _ttl(value: str) -> float:
    """The header's seconds, held to what ``complete(ttl=)`` takes (one home for the
    rule: ``validate_ttl``), so a TTL no cache tier can hold is refused before any call."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    try:
        checked = validate_ttl(seconds, TTL_HEADER)
    except InvalidRequestError as exc:
        raise BadHeaderError(TTL_HEADER, exc.expected, value) from None
    assert checked is not None  # a float is never None
    return checked


def client_key_allowed(authorization: str | None, allowed: Collection[str]) -> bool:
    """Whether ``Authorization: Bearer <key>`` presents one of the ``allowed`` keys.

    Every key is compared, each in constant time, so the time taken says nothing about
    which key was close.
    """
    scheme, _, given = (authorization or "").partition(" ")
    presented = given.strip().encode(errors="surrogateescape")  # whatever its bytes
    found = False
    for key in allowed:
        found |= hmac.compare_digest(presented, key.encode())
    return found and scheme.lower() == "bearer" and bool(presented)


def client_tenant(authorization: str | None) -> str:
    """The tenant of a caller presenting ``Authorization: Bearer <client key>``: a keyed
    digest of its key (``key_scope``), never the key itself.

    Example:
        >>> client_tenant("Bearer ck-1") == client_tenant("bearer  ck-1") != client_tenant(
        ...     "Bearer ck-2"
        ... )
        True
    """
    _, _, given = (authorization or "").partition(" ")
    return "client-key:" + key_scope(given.strip())


def split_body(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``body`` as ``Client`` keyword arguments: the fields, and the reserved ones apart
    (to be sent as ``extra_body``: they are body fields like any other, not options)."""
    fields = {name: value for name, value in body.items() if name not in BODY_RESERVED}
    reserved = {name: value for name, value in body.items() if name in BODY_RESERVED}
    return fields, reserved or None


def usage_wanted(stream_options: object) -> bool:
    """Whether a streaming caller asked for the usage chunk (``stream_options:
    {"include_usage": true}``), as OpenAI sends it only then.

    Raises:
        InvalidRequestError: ``stream_options`` is not an object, or its
            ``include_usage`` not a bool.
    """
    if stream_options is None:
        return False
    if not isinstance(stream_options, dict):
        raise InvalidRequestError("stream_options", "an object", stream_options)
    include = stream_options.get("include_usage")
    if include is not None and not isinstance(include, bool):
        raise InvalidRequestError("stream_options.include_usage", "true or false", include)
    return include is True


def vector_encoding(value: object) -> VectorEncoding:
    """The ``encoding_format`` an embeddings caller asked for (``"float"`` by default).

    Raises:
        InvalidRequestError: neither ``"float"`` nor ``"base64"``.
    """
    if value is None or value == "float":
        return "float"
    if value == "base64":
        return "base64"
    raise InvalidRequestError("encoding_format", "'float' or 'base64'", value)


def answer_headers(completion: Completion) -> dict[str, str]:
    """What an answer says about how it was served."""
    headers = {CACHE_HEADER: completion.cache.value, ENDPOINT_HEADER: completion.endpoint}
    if completion.key is not None:
        headers[KEY_HEADER] = completion.key
    if completion.cost is not None:
        headers[COST_HEADER] = f"{completion.cost.usd:.10g}"
    return headers


def embeddings_body(result: Embeddings, encoding: VectorEncoding = "float") -> dict[str, Any]:
    """OpenAI's embeddings answer for ``result``: ``{"object": "list", "data": [{"object":
    "embedding", "index", "embedding"}], "model", "usage"}``, each vector a list of floats,
    or with ``"base64"`` (what the OpenAI SDK asks for by default) the base64 of its
    little-endian float32 bytes. The caller's ``encoding_format`` is checked before the
    call, by ``vector_encoding``."""
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": _base64_floats(vector) if encoding == "base64" else vector,
        }
        for index, vector in enumerate(result.vectors)
    ]
    sent = result.usage.prompt_tokens
    return {
        "object": "list",
        "data": data,
        "model": result.model,
        "usage": {"prompt_tokens": sent, "total_tokens": sent},
    }


def _base64_floats(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def embeddings_headers(result: Embeddings) -> dict[str, str]:
    """What an embeddings answer says about how its inputs were served."""
    headers = {
        CACHE_HEADER: result.cache.value,
        INPUTS_HEADER: f"hits={result.hits} misses={result.misses} coalesced={result.coalesced}",
    }
    if result.cost is not None:
        headers[COST_HEADER] = f"{result.cost.usd:.10g}"
    return headers


def as_served(body: dict[str, Any], status: CacheStatus) -> dict[str, Any]:
    """An answer's body (or a chunk of it) as a caller served ``status`` is told it: a hit
    or a coalesced call spent nothing, so the gateway's ``usage.cost`` (OpenRouter's
    dollars, which clients add up) is 0 in it, and so are the BYOK ``cost_details``
    (``upstream_inference_cost``...), as OpenRouter's own response cache reports it; the
    tokens stay as the call that paid for them used them (``X-Limpet-Cost-USD`` says the
    same: 0). Changes a copy, never ``body``."""
    usage = body.get("usage")
    if (status is not CacheStatus.HIT and status is not CacheStatus.COALESCED) or not has_money(
        body
    ):
        return body
    assert isinstance(usage, dict)
    spent = dict(usage)
    if "cost" in spent:
        spent["cost"] = 0
    details = spent.get("cost_details")
    if isinstance(details, dict):  # BYOK: the provider's own bill, beside OpenRouter's
        spent["cost_details"] = {
            name: 0 if type(value) in (int, float) else value for name, value in details.items()
        }
    return {**body, "usage": spent}


def has_money(body: dict[str, Any]) -> bool:
    """Whether a body's (or a chunk's) usage says dollars (``cost``, ``cost_details``),
    which ``as_served`` rewrites for a caller who spent none."""
    usage = body.get("usage")
    return isinstance(usage, dict) and ("cost" in usage or "cost_details" in usage)
