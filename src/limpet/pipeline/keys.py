"""Cache keys: canonical request bytes and a cryptographic hash over them.

A key must be equal for equal requests, whatever their dict key order, and differ when
anything that can change the output differs. A collision would serve someone another
request's answer, so the hash is SHA-256 (cryptographic; with the SHA extensions most
x86 and ARM CPUs have, OpenSSL's is also faster than blake2b), never a fast non-cryptographic
one.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from limpet.errors import InvalidRequestError

__all__ = [
    "KEY_SCHEMA_VERSION",
    "TRANSPORT_ONLY_FIELDS",
    "KeyExplanation",
    "canonical_request",
    "explain_key",
    "key_header",
    "request_key",
    "request_keys",
]

#: Bumped whenever the canonical form changes, so old entries can never be misread.
#: 2: the credential scope.
KEY_SCHEMA_VERSION = 2

#: Fields that change how a response is delivered or attributed, never what it says.
TRANSPORT_ONLY_FIELDS = frozenset(
    {"stream", "stream_options", "user", "session_id", "prompt_cache_key", "usage"}
)

_KEY_PREFIX = f"limpet/key/v{KEY_SCHEMA_VERSION}\x00".encode()


def canonical_request(body: Mapping[str, Any]) -> bytes:
    """The request as canonical JSON: keys sorted at every depth, transport-only fields out.

    Top-level integral floats are written as ints, so ``temperature=0`` and
    ``temperature=0.0`` are one request.

    Raises:
        InvalidRequestError: a value that is not JSON (a set, an object, a non-str dict key).
    """
    kept: Mapping[str, Any] = body
    for name, value in body.items():
        # Copy only when something must be dropped or normalised: usually nothing must.
        if name in TRANSPORT_ONLY_FIELDS or type(value) is float:
            kept = {
                name: int(value) if type(value) is float and value.is_integer() else value
                for name, value in body.items()
                if name not in TRANSPORT_ONLY_FIELDS
            }
            break
    try:
        return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise InvalidRequestError("request body", "JSON-serialisable values", str(exc)) from exc


def request_key(
    canonical: bytes, *, namespace: str = "", scope: str = "", credential: str = ""
) -> str:
    """The cache key: 64 hex digits of SHA-256 over (schema version, namespace, credential
    scope, generations, body).

    Args:
        canonical: ``canonical_request(body)``.
        namespace: isolates tenants or key-schema versions of one application.
        scope: invalidation generations; bumping one changes every key under it.
        credential: the Client's credential scope (``limpet.pipeline.credentials``), or "" when
            entries are shared across credentials (``cache_scope="namespace"``).
    """
    return hashlib.sha256(key_header(namespace, scope, credential) + canonical).hexdigest()


def request_keys(
    prefix: bytes,
    suffixes: Iterable[bytes],
    *,
    namespace: str = "",
    scope: str = "",
    credential: str = "",
) -> list[str]:
    """``request_key(prefix + suffix, ...)`` of each suffix, hashing what they share once
    (``embed()``'s inputs share the model and parameters, and differ by their text)."""
    shared = hashlib.sha256(key_header(namespace, scope, credential) + prefix)
    keys = []
    for suffix in suffixes:
        one = shared.copy()
        one.update(suffix)
        keys.append(one.hexdigest())
    return keys


@functools.lru_cache(maxsize=1024)
def key_header(namespace: str, scope: str, credential: str) -> bytes:
    """What every key hashes ahead of the canonical request: the schema version, the
    namespace, the credential scope and the generations, each length-prefixed."""
    # Length prefixes keep ("ab", "") and ("a", "b") apart. Few distinct triples exist at
    # a time (a namespace, a generation per model), so they are built once, not per call.
    ns, sc, cr = namespace.encode(), scope.encode(), credential.encode()
    return b"%s%d:%s%d:%s%d:%s" % (_KEY_PREFIX, len(ns), ns, len(cr), cr, len(sc), sc)


@dataclass(frozen=True, slots=True)
class KeyExplanation:
    """What went into a cache key, for debugging surprising hits and misses.

    Attributes:
        key: the key itself.
        schema_version: ``KEY_SCHEMA_VERSION``.
        namespace: the namespace hashed in.
        scope: the invalidation generations hashed in.
        credential: the credential scope hashed in ("" when shared across credentials).
        fields: the request fields that count, sorted.
        ignored: the transport-only fields that were present and left out, sorted.
        canonical: the canonical JSON that was hashed.
    """

    key: str
    schema_version: int
    namespace: str
    scope: str
    fields: tuple[str, ...]
    ignored: tuple[str, ...]
    canonical: str
    credential: str = ""


def explain_key(
    body: Mapping[str, Any], *, namespace: str = "", scope: str = "", credential: str = ""
) -> KeyExplanation:
    """Show what goes into the key of a request.

    Example:
        >>> e = explain_key({"model": "m", "messages": [], "temperature": 0, "user": "u1"})
        >>> e.fields, e.ignored
        (('messages', 'model', 'temperature'), ('user',))
    """
    canonical = canonical_request(body)
    return KeyExplanation(
        key=request_key(canonical, namespace=namespace, scope=scope, credential=credential),
        schema_version=KEY_SCHEMA_VERSION,
        namespace=namespace,
        scope=scope,
        fields=tuple(sorted(name for name in body if name not in TRANSPORT_ONLY_FIELDS)),
        ignored=tuple(sorted(name for name in body if name in TRANSPORT_ONLY_FIELDS)),
        canonical=canonical.decode(),
        credential=credential,
    )
