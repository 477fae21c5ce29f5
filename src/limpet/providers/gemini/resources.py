"""Gemini's ``cachedContent`` resource as the native API describes it, and how that API
spells models, cache names, durations and times. Pure."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from limpet.errors import APIResponseError, InvalidRequestError
from limpet.scrub import BODY_EXCERPT_CHARS

__all__ = [
    "CachedContent",
    "cache_id",
    "capability_slug",
    "duration",
    "full_name",
    "native_model",
    "with_cached_content",
]

_NAME_PREFIX = "cachedContents/"
_ID = re.compile(r"[A-Za-z0-9_.-]+")


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
    """A copy of ``body`` that references the cache ``name``: a request body as sent (to
    ``limpet serve``, say).

    Args:
        body: a request body; it is not modified.
        name: the cache's resource name.
        native: for Gemini's native ``generateContent`` (``cachedContent``); otherwise for
            its OpenAI-compatible chat API (a field ``extra_body`` holding
            ``google.cached_content``).

    ``Client.complete(**body)`` would take that ``extra_body`` field for its own
    ``extra_body=`` option (the OpenAI SDK's, merged into the body) and send the
    reference one level up: give the Client the reference as that option instead,
    ``client.complete(**request, extra_body=with_cached_content({}, name))``.

    The reference is part of the request, hence of limpet's cache key: answers that read
    different caches are never confused.
    """
    full = full_name(name)
    if native:
        return {**body, "cachedContent": full}
    extra = body.get("extra_body")
    extra = dict(extra) if isinstance(extra, Mapping) else {}
    google = extra.get("google")
    extra["google"] = {**(google if isinstance(google, Mapping) else {}), "cached_content": full}
    return {**body, "extra_body": extra}


def full_name(name: str) -> str:
    """A cache's resource name, ``cachedContents/{id}``, from the name or the bare id."""
    return name if name.startswith(_NAME_PREFIX) else _NAME_PREFIX + name


def cache_id(name: str) -> str:
    """The id of a cache named ``cachedContents/{id}`` or ``{id}``.

    Raises:
        InvalidRequestError: ``name`` is neither.
    """
    found = name.removeprefix(_NAME_PREFIX) if isinstance(name, str) else ""
    if not _ID.fullmatch(found):
        raise InvalidRequestError("name", "cachedContents/{id} or an id", name)
    return found


def capability_slug(model: str) -> str:
    """``models/gemini-2.5-flash`` as the capability table spells it."""
    bare = model.removeprefix("models/")
    return bare if "/" in bare else "google/" + bare


def duration(seconds: float) -> str:
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
