"""The request stage: one call's body and options, validated, and its cache decision. Pure.

Every entry point builds a ``Request`` here first, so bad input fails before any network
call, naming the field; what follows (key, lookup, flight, upstream, account, store)
reads everything about the call from this one object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from limpet.config import CachePolicy
from limpet.errors import InvalidRequestError
from limpet.pipeline.calls import Call
from limpet.pipeline.owned import owned_body
from limpet.pipeline.policy import CacheDecision, decide
from limpet.pipeline.validation import (
    check_model,
    response_format_param,
    validate_call_options,
    validate_fields,
    validate_request,
    validate_tenant,
    validate_ttl,
    with_extra_body,
)
from limpet.pipeline.vectors import EmbedInput, embedding_params, validate_inputs


class Request(Call):
    """One chat-completion call as it flows through the pipeline's stages: a ``Call``
    (its deadline, own headers and what it waits for) with its body and what the stages
    learn of it.

    Attributes:
        body: the caller's request body (the key is its canonical form).
        model: the model it asks for.
        decision: what the cache may do with it.
        ttl: seconds its answer may be served from the cache.
        timeout: seconds the whole call may take, or None.
        headers: the call's own upstream headers (``extra_headers``), or None.
        key: its cache key, once the key stage has run (None: not keyed).
        flight_key: its flight key, set with ``key`` (``Keying.flight_key``: the cache
            key, and under ``cache_scope="namespace"`` the call's credential scope).
        text_chars: the messages' text length, when validation summed it (else -1), so
            the key stage need not walk them again to tell a large request.
        tenant: whose entries and flights it shares (``complete(tenant=...)``), or None.
    """

    __slots__ = (
        "body",
        "decision",
        "flight_key",
        "key",
        "model",
        "tenant",
        "text_chars",
        "ttl",
    )

    def __init__(
        self,
        body: dict[str, Any],
        decision: CacheDecision,
        ttl: float,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        text_chars: int = -1,
        tenant: str | None = None,
    ) -> None:
        # The Call's own fields, all but those ``start()`` sets: a hit never needs them.
        self.timeout = timeout
        self.headers = headers
        self.body = body
        self.model: str = body["model"]
        self.decision = decision
        self.ttl = ttl
        self.key: str | None = None
        self.flight_key: str | None = None
        self.text_chars = text_chars
        self.tenant = tenant

    def start(self) -> Call:
        """The call past the hit path: this request itself, its deadline running from
        now."""
        self.begin()
        return self


def chat_request(
    body: dict[str, Any],
    cache: str | None,
    ttl: float | None,
    default_ttl: float,
    policy: CachePolicy,
    timeout: float | None = None,
    extra_headers: Mapping[str, str] | None = None,
    extra_body: Mapping[str, Any] | None = None,
    tenant: str | None = None,
    stream: bool = False,
) -> Request:
    """The ``Request`` of a ``complete()`` or ``stream()`` call, validated. (Its
    arguments may be passed by position: ``complete()`` does, for a hit pays for each
    keyword.)

    Raises:
        InvalidRequestError: naming the first offending field and what was expected.
    """
    if extra_body is not None or "response_format" in body:
        body = with_extras(body, extra_body)
    if not stream and body.get("stream"):
        raise InvalidRequestError("stream", "absent or False in complete()", True)
    text_chars = validate_request(body)
    if timeout is not None or extra_headers is not None:
        timeout, extra_headers = validate_call_options(timeout, extra_headers)
    entry_ttl = default_ttl if ttl is None else validate_ttl(ttl) or default_ttl
    if tenant is not None:
        validate_tenant(tenant)
    decision = decide(body, cache, policy)
    return Request(body, decision, entry_ttl, timeout, extra_headers, text_chars, tenant)


def with_extras(body: dict[str, Any], extra_body: object) -> dict[str, Any]:
    """``body`` with ``extra_body``'s fields merged in (they win); a Pydantic model class as
    ``response_format`` becomes the ``json_schema`` format it stands for."""
    if extra_body is not None:
        body = with_extra_body(body, extra_body)
    if "response_format" in body:
        body["response_format"] = response_format_param(body["response_format"])
    return body


class EmbedRequest:
    """One ``embed()`` call as it flows through the pipeline's stages, per input.

    Attributes:
        model: the embedding model.
        texts: the inputs, in order.
        keyed: the body fields that can change a vector (they enter every input's key).
        wire: the body fields sent as they are.
        decision, ttl, timeout, headers, tenant: as ``Request``'s.
        flight_scope: what each input's flight key adds to its cache key
            (``Keying.flight_scope``: under ``cache_scope="namespace"``, the call's
            credential scope), set with the keys.
    """

    __slots__ = (
        "decision",
        "flight_scope",
        "headers",
        "keyed",
        "model",
        "tenant",
        "texts",
        "timeout",
        "ttl",
        "wire",
    )

    def __init__(
        self,
        model: str,
        texts: list[EmbedInput],
        keyed: dict[str, Any],
        wire: dict[str, Any],
        decision: CacheDecision,
        ttl: float,
        timeout: float | None,
        headers: Mapping[str, str] | None,
        tenant: str | None = None,
    ) -> None:
        self.model = model
        self.texts = texts
        self.keyed = keyed
        self.wire = wire
        self.decision = decision
        self.ttl = ttl
        self.timeout = timeout
        self.headers = headers
        self.tenant = tenant
        self.flight_scope = ""


# What an embed() call's own arguments say, and its extra_body may not (the OpenAI SDK
# would send its extra_body's): each input is keyed by model, batched and sent apart, and
# its vector decoded whatever the encoding, so the body's model, input and
# encoding_format are limpet's to write. Taken from extra_body, the vectors of one model
# would be stored under another's keys; refused, nothing is silently dropped.
_EMBED_ARGUMENTS = ("model", "input", "encoding_format")


def embed_request(
    model: object,
    input: object,
    params: dict[str, Any],
    *,
    dimensions: int | None,
    encoding_format: str | None,
    cache: str | None,
    ttl: float | None,
    default_ttl: float,
    policy: CachePolicy,
    max_inputs: int,
    timeout: float | None = None,
    extra_headers: Mapping[str, str] | None = None,
    extra_body: Mapping[str, Any] | None = None,
    tenant: str | None = None,
) -> EmbedRequest:
    """The ``EmbedRequest`` of an ``embed()`` call, validated (embeddings are
    deterministic: cacheable whatever the policy's temperature).

    Raises:
        InvalidRequestError: naming the first offending field (or input index); a
            ``model``, ``input`` or ``encoding_format`` in ``extra_body`` (they are
            arguments: ``_EMBED_ARGUMENTS``).
    """
    model = check_model(model)
    texts = validate_inputs(input, max_inputs)
    if extra_body is not None:
        params = with_extra_body(params, extra_body)
    for name in _EMBED_ARGUMENTS:
        if name in params:
            raise InvalidRequestError(
                name,
                f"no {name!r} in extra_body: pass it as embed()'s {name}= argument",
                params[name],
            )
    validate_fields(params)  # each field by its rule, and JSON: now, not once sent
    # A copy of limpet's own (``owned_body``): the inputs are keyed now and sent later,
    # from a task of their own, and a caller may change its nested dicts meanwhile.
    keyed, wire = embedding_params(dimensions, encoding_format, owned_body(params))
    timeout, extra_headers = validate_call_options(timeout, extra_headers)
    entry_ttl = default_ttl if ttl is None else validate_ttl(ttl) or default_ttl
    if tenant is not None:
        validate_tenant(tenant)
    decision = decide({"temperature": 0}, cache, policy)
    return EmbedRequest(
        model, texts, keyed, wire, decision, entry_ttl, timeout, extra_headers, tenant
    )
