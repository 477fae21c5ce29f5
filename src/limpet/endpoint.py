"""``Endpoint``: one place to send requests (a gateway URL, its key, headers and body
defaults); the gateways limpet knows by name; which header values are secrets."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import orjson

from limpet._checks import (
    check_choice,
    check_flag,
    check_headers,
    check_http_url,
    check_name,
    check_number,
)
from limpet._credentials import KEY_HEADERS, credential_digest, is_credential_header, sent_keys
from limpet._urls import redact_url, url_secrets
from limpet.errors import ConfigurationError, InvalidRequestError, headers_shape
from limpet.pipeline.validation import validate_fields

__all__ = [
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "GATEWAYS",
    "Endpoint",
    "Gateway",
    "default_base_url",
    "header_secrets",
]

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
#: The environment variable that overrides ``DEFAULT_BASE_URL`` (a relay, a FakeGateway).
BASE_URL_ENV = "LIMPET_BASE_URL"

#: Gateways that route each request among providers themselves, each keeping its own
#: prompt cache (see ``Endpoint.gateway``).
Gateway = Literal["openrouter"]
GATEWAYS: frozenset[str] = frozenset({"openrouter"})

# Header values shorter than this are not taken for secrets: scrubbing "gzip" or "en" out
# of every message would garble it and hide nothing.
_MIN_SECRET_CHARS = 8


def _is_openrouter_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host == "openrouter.ai" or host.endswith(".openrouter.ai")


@dataclass(frozen=True)
class Endpoint:
    """One place to send requests: a gateway URL with its key, headers and body defaults.

    ``api_key``, the values of ``headers`` and those of the URL's query (``?key=...``)
    never appear in ``repr`` or in any error. A URL with credentials in it
    (``https://user:password@...``) is refused: pass them in ``headers``.

    Args:
        name: unique, short; shows up in ``Completion.endpoint`` and stats.
        base_url: the OpenAI-compatible API root, e.g. ``https://openrouter.ai/api/v1``;
            without ``user:password@`` (a ``ConfigurationError``).
        api_key: sent as ``Authorization: Bearer ...``.
        headers: extra headers for every request to this endpoint.
        extra_body: fields merged into every request body sent here (the caller's fields win),
            e.g. ``{"provider": {"order": ["anthropic"]}}``. Sent, so keyed: a digest of
            every endpoint's ``extra_body`` enters the Client's cache keys.
        weight: relative share of traffic for routing; must be > 0.
        gateway: which gateway this is, when it routes among providers itself:
            ``"openrouter"`` (inferred from an ``openrouter.ai`` URL; a fake gateway or a
            relay in front of OpenRouter says so explicitly), or None. limpet sends an
            OpenRouter endpoint a ``session_id`` so that OpenRouter keeps a prefix on the
            provider that cached it (see ``RoutingConfig.session_id``).
        embedding_batch_size: at most this many inputs per ``/embeddings`` request;
            ``embed()`` splits larger sets of misses into concurrent requests, each
            sized for every endpoint it may fail over to (the least of their sizes).
        embedding_batch_tokens: at most about this many tokens per ``/embeddings``
            request (estimated on the high side from the UTF-8: 4 bytes a token, more
            for text of several bytes a character; a token array by its count), so that
            a batch of long inputs stays under a provider's limit per request (OpenAI's:
            300,000 tokens) rather than being refused whole; an input over it goes
            alone. None: no budget. The least of the endpoints' applies, as for the size.
        max_in_flight: the most requests limpet sends here at once; callers beyond it
            wait their turn, first come first served (see ``AdmissionConfig``). None: no
            fixed cap, only the limit limpet learns from the endpoint's 429s.
        rpm: requests per minute to send here at most (a token bucket), or None.
        tpm: tokens per minute to send here at most, estimated from each request and
            corrected from its usage, or None.

    Example:
        >>> e = Endpoint("primary", "https://openrouter.ai/api/v1", api_key="sk-or-...")
        >>> "sk-or" in repr(e), e.gateway
        (False, 'openrouter')
    """

    name: str
    base_url: str
    _: KW_ONLY
    api_key: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] | None = field(default=None, repr=False)
    extra_body: Mapping[str, Any] | None = None
    weight: float = 1.0
    gateway: Gateway | None = None
    embedding_batch_size: int = 512
    embedding_batch_tokens: int | None = 200_000
    max_in_flight: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    #: A digest of the key one call sends in place of the endpoint's own (``with_headers``:
    #: an ``Authorization`` in its ``extra_headers``; see ``callers_key``), never the key
    #: itself; None for the endpoint itself. Such a call is admitted on its key's own
    #: learned limit and pause, and a refusal of its key never counts against the
    #: endpoint's health: one caller's key, quota or rate limit says nothing of the
    #: endpoint the others use.
    callers_credentials: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        check_name("Endpoint.name", self.name)
        for limit in ("max_in_flight", "rpm", "tpm"):
            check_number(f"Endpoint.{limit}", getattr(self, limit), integer=True, optional=True)
        check_http_url("Endpoint.base_url", self.base_url)
        check_number("Endpoint.weight", self.weight, above=0)
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if self.gateway is None and _is_openrouter_url(self.base_url):
            object.__setattr__(self, "gateway", "openrouter")
        check_choice("Endpoint.gateway", self.gateway, sorted(GATEWAYS), optional=True)
        if self.headers is not None:
            if not isinstance(self.headers, Mapping) or not all(
                type(name) is str and type(value) is str for name, value in self.headers.items()
            ):
                raise ConfigurationError(  # never the values: they hold keys
                    f"Endpoint.headers: expected a dict of str to str, got "
                    f"{headers_shape(self.headers)}"
                )
            check_headers("Endpoint.headers", self.headers)
            object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))
        if self.api_key is not None:
            if type(self.api_key) is not str:
                raise ConfigurationError(
                    f"Endpoint.api_key: expected a str, got {type(self.api_key).__name__}"
                )
            check_headers("Endpoint.api_key", {"Authorization": self.api_key})
        if self.extra_body is not None:
            object.__setattr__(self, "extra_body", MappingProxyType(_owned(self.extra_body)))
        check_number("Endpoint.embedding_batch_size", self.embedding_batch_size, integer=True)
        check_number(
            "Endpoint.embedding_batch_tokens",
            self.embedding_batch_tokens,
            integer=True,
            optional=True,
        )

    def __repr__(self) -> str:
        parts = [f"name={self.name!r}", f"base_url={redact_url(self.base_url)!r}"]
        if self.api_key is not None:
            parts.append("api_key=***")
        if self.headers:
            parts.append(f"headers=<{', '.join(sorted(self.headers))}>")
        if self.extra_body:
            parts.append(f"extra_body={dict(self.extra_body)!r}")
        parts.append(f"weight={self.weight!r}")
        if self.gateway is not None:
            parts.append(f"gateway={self.gateway!r}")
        parts.extend(
            f"{limit}={getattr(self, limit)!r}"
            for limit in ("max_in_flight", "rpm", "tpm")
            if getattr(self, limit) is not None
        )
        return f"Endpoint({', '.join(parts)})"

    @classmethod
    def openrouter(
        cls,
        provider: str | Sequence[str],
        *,
        api_key: str | None = None,
        name: str | None = None,
        base_url: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        allow_fallbacks: bool = False,
        weight: float = 1.0,
    ) -> Endpoint:
        """An endpoint that pins one OpenRouter provider (or an ordered list of them).

        Each such endpoint stands for one provider's prompt cache, so sticky routing over
        several of them keeps a prefix where it is cached. OpenRouter turns its own
        stickiness off when ``provider.order`` is set, which is why limpet routes itself.

        Args:
            provider: a provider slug such as ``"anthropic"``, or several, tried in order.
            name: the endpoint's name; the slugs joined by ``+`` by default.
            base_url: OpenRouter's API root; ``default_base_url()`` when not given.
            allow_fallbacks: let OpenRouter fall back to providers outside ``provider``.
            extra_body: more body defaults; its own ``provider`` fields are kept, with
                ``order`` and ``allow_fallbacks`` set from the arguments above.

        Example:
            >>> Endpoint.openrouter("anthropic", api_key="sk-or-...").extra_body["provider"]
            {'order': ['anthropic'], 'allow_fallbacks': False}
        """
        check_flag("Endpoint.openrouter.allow_fallbacks", allow_fallbacks)
        order = [provider] if isinstance(provider, str) else list(provider)
        if not order or not all(isinstance(slug, str) and slug for slug in order):
            raise ConfigurationError(
                f"Endpoint.openrouter: expected provider slugs, got {provider!r}"
            )
        body = dict(extra_body or {})
        routing = body.get("provider")
        body["provider"] = {
            **(dict(routing) if isinstance(routing, Mapping) else {}),
            "order": order,
            "allow_fallbacks": allow_fallbacks,
        }
        return cls(
            name if name is not None else "+".join(order),
            base_url or default_base_url(),
            api_key=api_key,
            headers=headers,
            extra_body=body,
            weight=weight,
            gateway="openrouter",
        )

    @property
    def pinned(self) -> bool:
        """True when the body defaults pin OpenRouter providers (``provider.order`` or
        ``provider.only``): the gateway then has no choice of provider to keep sticky."""
        routing = (self.extra_body or {}).get("provider")
        return isinstance(routing, Mapping) and bool(routing.get("order") or routing.get("only"))

    def with_headers(self, headers: Mapping[str, str]) -> Endpoint:
        """This endpoint with ``headers`` on top of its own (they win): what one call sends
        with its own headers (``extra_headers``), scrubbed from errors like the endpoint's.
        The endpoint's checks are not run again (it was checked when made; a call's
        headers are checked by the call's validation): this is on every such call's path.

        A key sent in place of the endpoint's own makes the call the caller's
        (``callers_credentials``, see ``callers_key``).

        Example:
            >>> e = Endpoint("a", "https://x.test/v1", api_key="sk-1")
            >>> e.with_headers({"X-Title": "demo"}).callers_credentials is None
            True
            >>> e.with_headers({"Authorization": "bearer sk-1"}).callers_credentials is None
            True
            >>> len(e.with_headers({"Authorization": "Bearer sk-2"}).callers_credentials)
            32
        """
        origin = self._origin
        merged = {**(self.headers or {}), **headers}
        sent = copy.copy(origin)
        object.__setattr__(sent, "headers", MappingProxyType(merged))
        sent.__dict__.pop("secrets", None)  # found again, with the call's headers
        sent.__dict__["_copied_from"] = origin
        object.__setattr__(sent, "callers_credentials", origin._callers_key(merged))
        return sent

    def callers_key(self, headers: Mapping[str, str]) -> str | None:
        """A digest of the key a call sending ``headers`` on top of this endpoint's (its
        ``extra_headers``) sends in place of the endpoint's own, or None when the endpoint's
        own key goes out as it is. Keys are what ``limpet._credentials.KEY_HEADERS`` and
        the endpoint's own credential headers carry (``Authorization`` with ``api_key``):
        a call replacing or dropping one the endpoint sends is the caller's, and so is one
        sending any key to an endpoint that sends none; a key header added beside the
        endpoint's own key is not (the provider still bills the endpoint's)."""
        return self._origin._callers_key({**(self.headers or {}), **headers})

    def _callers_key(self, merged: Mapping[str, str]) -> str | None:
        names, own = self._keys
        sent = sent_keys(self.api_key, merged, names)
        if all(sent.get(name) == value for name, value in own.items()) if own else not sent:
            return None
        return credential_digest(name + ":" + value for name, value in sent.items())

    @property
    def _origin(self) -> Endpoint:
        """The endpoint itself, or the one a call's ``with_headers`` copied."""
        origin: Endpoint = self.__dict__.get("_copied_from", self)
        return origin

    @cached_property
    def _keys(self) -> tuple[frozenset[str], dict[str, str]]:
        """The headers that carry keys here (``KEY_HEADERS`` and this endpoint's own
        credential headers), and the keys it sends in them."""
        names = KEY_HEADERS | {
            name.lower() for name in self.headers or {} if is_credential_header(name)
        }
        return names, sent_keys(self.api_key, self.headers or {}, names)

    @cached_property
    def secrets(self) -> tuple[str, ...]:
        """Strings that must never be shown: the key, every header value, a header's
        bare credential (``sk-...`` of ``Bearer sk-...``) and the values of the URL's query
        (``limpet._urls.url_secrets``). Found once: an Endpoint and its headers never
        change. ``limpet.errors.scrub`` finds each in the forms an upstream may echo it in.
        """
        values = (self.api_key,) if self.api_key else ()
        return values + header_secrets(self.headers or {}) + url_secrets(self.base_url)


def default_base_url() -> str:
    """``$LIMPET_BASE_URL``, else OpenRouter's API root."""
    return os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL


def header_secrets(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The strings in request headers that must never be shown: every value of 8 or more
    characters, and the credential of a ``<scheme> <credential>`` value (``Bearer sk-...``),
    which an upstream may echo without its scheme."""
    found: list[str] = []
    for value in headers.values():
        if len(value) >= _MIN_SECRET_CHARS:
            found.append(value)
        scheme, _, credential = value.partition(" ")
        if scheme and len(credential) >= _MIN_SECRET_CHARS:
            found.append(credential)
    return tuple(found)


# What each call sets for itself: sent from an endpoint's extra_body, every complete()
# would pay for a stream it then fails to read as JSON.
_PER_CALL = ("stream", "stream_options")


def _owned(extra_body: object) -> dict[str, Any]:
    """A copy of ``extra_body`` sharing nothing mutable with the caller's: it enters the
    Client's keys when the Client is built and is sent with each request afterwards, so a
    nested dict the caller changes in between would send one body under another's key.

    Raises:
        ConfigurationError: not a dict of JSON fields, naming the first that is not; a
            field a call sets itself (``_PER_CALL``).
    """
    if not isinstance(extra_body, Mapping):
        raise ConfigurationError(
            f"Endpoint.extra_body: expected a dict of JSON fields, got {type(extra_body).__name__}"
        )
    for name in extra_body:
        if type(name) is not str:
            raise ConfigurationError(
                f"Endpoint.extra_body: expected str field names, got {type(name).__name__}"
            )
    for name in _PER_CALL:
        if name in extra_body:
            raise ConfigurationError(
                f"Endpoint.extra_body: {name}: expected no {name!r} field (whether a call "
                f"streams is the call's: stream() or complete()), got {extra_body[name]!r}"
            )
    plain = _plain(extra_body)  # another Endpoint's (read-only) extra_body, say
    try:
        validate_fields(plain)
        owned: dict[str, Any] = orjson.loads(orjson.dumps(plain))
    except InvalidRequestError as exc:
        raise ConfigurationError(f"Endpoint.extra_body: {exc}") from None
    except (orjson.JSONEncodeError, TypeError) as exc:  # a key of a str subclass, nested
        raise ConfigurationError(f"Endpoint.extra_body: not JSON ({exc})") from None
    return owned


def _plain(value: Any) -> Any:
    """``value`` with every mapping a dict and every tuple a list, as JSON has them."""
    if isinstance(value, Mapping):
        return {name: _plain(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
