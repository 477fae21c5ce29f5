"""Prefix chains: a request's prompt as a provider renders it, hashed at every point its
prompt cache can end, so requests that share a cached prefix can be routed together.

Routing's input, not the cache key's (``limpet.pipeline.keys``): pure, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from limpet.errors import InvalidRequestError
from limpet.providers.prompt_cache.render_order import is_system, rendered

__all__ = ["PrefixChain", "PrefixLink", "prefix_chain"]

#: Roles rendered into the system section (Anthropic's ``system``), ahead of the messages.
#: Message fields that are not rendered into the prompt as such, or are handled apart.
_UNRENDERED_FIELDS = frozenset({"role", "content", "cache_control"})
_CHAIN_PERSON = b"limpet/prefix"


@dataclass(frozen=True, slots=True)
class PrefixLink:
    """One point of a request's prefix chain.

    Attributes:
        hash: 32 hex digits over the model and everything rendered up to this point, so
            two requests share a link exactly when a provider would see the same prefix.
        depth: this link's index in ``PrefixChain.links``.
        message: the rendered message this link lies in (tools: -1; then system messages,
            then the others, in order).
        breakpoint: a ``cache_control`` marker ends here.
        ttl: that marker's ``ttl`` (``"5m"``, ``"1h"``), or None.
        boundary: a message (or the tools section) ends here.
        final: nothing of the prompt follows this link.
    """

    hash: str
    depth: int
    message: int
    breakpoint: bool = False
    ttl: str | None = None
    boundary: bool = False
    final: bool = False


@dataclass(frozen=True, slots=True)
class PrefixChain:
    """A request's prompt as a provider renders it, hashed at every point a cache can end.

    Attributes:
        model: the requested model (every hash includes it: caches are per model).
        links: one per breakpoint and per message boundary, shallowest first.
        conversation: a key shared by every turn of a conversation: the model, the first
            system message and the first non-system message, rendered (so a string and a
            single text block agree, and ``cache_control`` markers do not count).
        first_turn: depth of the link that closes the first non-system message, or None.
    """

    model: str
    links: tuple[PrefixLink, ...]
    conversation: str
    first_turn: int | None

    @property
    def breakpoints(self) -> tuple[PrefixLink, ...]:
        """The links where a ``cache_control`` marker ends, shallowest first."""
        return tuple(link for link in self.links if link.breakpoint)

    @property
    def trailing_breakpoint(self) -> bool:
        """True when the final block carries a marker: a "rolling" breakpoint, which a
        caller moves to the newest turn of a conversation."""
        return bool(self.links) and self.links[-1].breakpoint


def prefix_chain(body: Mapping[str, Any]) -> PrefixChain:
    """Hash a request's prompt in provider render order: tools, system, then messages.

    A link closes every ``cache_control`` breakpoint and every message. Content is hashed
    the way a provider renders it: string content equals one text block holding it, and
    ``cache_control`` markers are not content, so a caller who keeps history as strings
    and marks only the newest turn still shares every earlier link. A top-level
    ``cache_control`` (OpenRouter's automatic caching) marks the final block.

    Pure, and tolerant: parts that are not dicts are hashed as they are.

    Raises:
        InvalidRequestError: a value that is not JSON.

    Example:
        >>> a = prefix_chain({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        >>> b = prefix_chain({"model": "m", "messages": [{"role": "user", "content": [
        ...     {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]})
        >>> a.links[-1].hash == b.links[-1].hash, b.trailing_breakpoint
        (True, True)
    """
    model = body.get("model")
    model_name = model if isinstance(model, str) else ""
    builder = _ChainBuilder(model_name)
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        for tool in tools:
            marker = _marker(tool)
            builder.add(["tool", _unmarked(tool)], -1)
            if marker is not None:
                builder.mark(marker)
        builder.close_message()
    messages = body.get("messages")
    in_order = rendered(messages if isinstance(messages, list) else [])
    first_turn: int | None = None
    for index, message in enumerate(in_order):
        builder.add_message(message, index)
        if first_turn is None and not is_system(message):
            first_turn = len(builder.links) - 1
    top = body.get("cache_control")
    if isinstance(top, Mapping) and builder.links:
        builder.mark(top)
    links = builder.finish()
    return PrefixChain(
        model=model_name,
        links=links,
        conversation=_conversation(model_name, in_order),
        first_turn=first_turn,
    )


class _ChainBuilder:
    """Accumulates the running hash and the links of one chain."""

    __slots__ = ("_digest", "_message", "_pending", "links", "model")

    def __init__(self, model: str) -> None:
        self.model = model
        self._digest = hashlib.blake2b(
            _dumps(["limpet/prefix/v1", model]), digest_size=16, person=_CHAIN_PERSON
        ).digest()
        self.links: list[dict[str, Any]] = []
        # A link at the current point not yet closed: more flags may land on it.
        self._pending: dict[str, Any] | None = None
        self._message = -1

    def add(self, element: object, message: int) -> None:
        self._digest = hashlib.blake2b(
            self._digest + _dumps(element), digest_size=16, person=_CHAIN_PERSON
        ).digest()
        self._pending = None
        self._message = message

    def _link(self) -> dict[str, Any]:
        if self._pending is None:
            self._pending = {"hash": self._digest.hex(), "message": self._message}
            self.links.append(self._pending)
        return self._pending

    def mark(self, marker: Mapping[str, Any]) -> None:
        link = self._link()
        link["breakpoint"] = True
        ttl = marker.get("ttl")
        # Of two markers on one point, the longer TTL is the one a provider keeps longest.
        if isinstance(ttl, str) and (link.get("ttl") is None or ttl == "1h"):
            link["ttl"] = ttl

    def close_message(self) -> None:
        self._link()["boundary"] = True

    def add_message(self, message: object, index: int) -> None:
        if not isinstance(message, Mapping):
            self.add(["message", message], index)
            self.close_message()
            return
        header = {k: v for k, v in message.items() if k not in _UNRENDERED_FIELDS}
        self.add(["message", message.get("role"), header], index)
        for block in _blocks(message.get("content")):
            marker = _marker(block)
            self.add(["block", _unmarked(block)], index)
            if marker is not None:
                self.mark(marker)
        whole = message.get("cache_control")
        if isinstance(whole, Mapping):
            self.mark(whole)
        self.close_message()

    def finish(self) -> tuple[PrefixLink, ...]:
        last = len(self.links) - 1
        return tuple(
            PrefixLink(
                hash=link["hash"],
                depth=depth,
                message=link["message"],
                breakpoint=link.get("breakpoint", False),
                ttl=link.get("ttl"),
                boundary=link.get("boundary", False),
                final=depth == last,
            )
            for depth, link in enumerate(self.links)
        )


def _blocks(content: object) -> list[object]:
    """Content as the blocks a provider renders: a string is one text block."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return content
    return [content]


def _marker(part: object) -> Mapping[str, Any] | None:
    if isinstance(part, Mapping):
        marker = part.get("cache_control")
        if isinstance(marker, Mapping):
            return marker
    return None


def _unmarked(part: object) -> object:
    if isinstance(part, Mapping) and "cache_control" in part:
        return {k: v for k, v in part.items() if k != "cache_control"}
    return part


def _rendered_message(message: object) -> object:
    if not isinstance(message, Mapping):
        return message
    header = {k: v for k, v in message.items() if k not in _UNRENDERED_FIELDS}
    return [message.get("role"), header, [_unmarked(b) for b in _blocks(message.get("content"))]]


def _conversation(model: str, rendered: list[Any]) -> str:
    first_system = next((m for m in rendered if is_system(m)), None)
    first_other = next((m for m in rendered if not is_system(m)), None)
    data = _dumps(
        [
            "limpet/conversation/v1",
            model,
            None if first_system is None else _rendered_message(first_system),
            None if first_other is None else _rendered_message(first_other),
        ]
    )
    return hashlib.blake2b(data, digest_size=16, person=b"limpet/conv").hexdigest()


def _dumps(value: object) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise InvalidRequestError("messages", "JSON-serialisable content", str(exc)) from exc
