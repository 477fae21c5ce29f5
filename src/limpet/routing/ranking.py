"""Pure routing decisions: what a request routes by, how a key ranks the endpoints, and
how bounded load and spreading pick among them. No I/O, no state of their own."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from limpet.config import Endpoint, RoutingConfig, UnmarkedRouting
from limpet.routing.base import RoutingKey
from limpet.routing.prefix import PrefixChain, PrefixLink

if TYPE_CHECKING:
    from limpet.http.admission import Admissions

__all__ = [
    "by_load",
    "hrw_rank",
    "long_paused",
    "looked_up",
    "open_first",
    "recorded",
    "routing_key",
    "under_bound",
]

_SCALE = float(1 << 64)


def hrw_rank(routing_key: str, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
    """Endpoints in the order ``routing_key`` prefers them, weights respected.

    Weighted rendezvous hashing: score = -weight / ln(u), with u uniform in (0, 1) drawn
    from a hash of (key, endpoint name), so an endpoint of weight 2 takes twice the keys.
    """
    if len(endpoints) == 1:
        return list(endpoints)
    return sorted(endpoints, key=lambda e: _score(routing_key, e), reverse=True)


def _score(routing_key: str, endpoint: Endpoint) -> float:
    digest = hashlib.blake2b(f"{endpoint.name}\x00{routing_key}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 0.5) / _SCALE
    return -endpoint.weight / math.log(unit)


def routing_key(chain: PrefixChain, unmarked: UnmarkedRouting = "conversation") -> RoutingKey:
    """Pick what a request routes by, from its prefix chain alone (no shared state).

    - The deepest breakpoint that is not on the final block: a RAG request marking a
      shared system prompt and its document routes by the document, so documents spread
      instead of piling onto the system prompt's endpoint.
    - A breakpoint on the final block (a "rolling" one, moved to each new turn) makes the
      request a conversation turn. Its history is what must stay together, and a system
      prompt's breakpoint is shared by every conversation, so only breakpoints inside the
      first non-system message count (a document the first turn marked); with none, the
      conversation key, the same for every turn of the conversation.
    - With no breakpoint at all, ``unmarked`` decides: the conversation key, or spread.
    """
    breakpoints = chain.breakpoints
    first_turn = chain.first_turn
    if not breakpoints:
        if unmarked == "spread":
            return RoutingKey("spread", None, None)
        return RoutingKey("conversation", chain.conversation, first_turn)
    candidates = [link for link in breakpoints if not link.final]
    if chain.trailing_breakpoint and first_turn is not None:
        turn = chain.links[first_turn].message
        candidates = [c for c in candidates if c.message == turn and c.depth < first_turn]
    if candidates:
        return RoutingKey("breakpoint", candidates[-1].hash, candidates[-1].depth)
    return RoutingKey("conversation", chain.conversation, first_turn)


def by_load(available: list[Endpoint], in_flight: Mapping[str, int], turn: int) -> list[Endpoint]:
    """Least loaded first (in-flight per unit of weight), ties taken in turn."""
    count = len(available)
    return [
        e
        for _, e in sorted(
            enumerate(available),
            key=lambda pair: (in_flight[pair[1].name] / pair[1].weight, (pair[0] - turn) % count),
        )
    ]


def under_bound(
    ranked: list[Endpoint],
    available: list[Endpoint],
    in_flight: Mapping[str, int],
    config: RoutingConfig,
) -> int:
    """Index in ``ranked`` of the first endpoint under its bounded-load cap."""
    total = sum(in_flight[e.name] for e in available) + 1  # this request included
    weight = sum(e.weight for e in available)
    floor, slack = config.load_floor, 1.0 + config.max_overload
    for index, endpoint in enumerate(ranked):
        # The tiny subtraction keeps float noise (1.25 * 4 * 0.25 = 1.2500000001)
        # from raising a cap by one.
        cap = max(floor, math.ceil(slack * total * endpoint.weight / weight - 1e-9))
        if in_flight[endpoint.name] < cap:
            return index
    return 0


def recorded(link: PrefixLink, key: RoutingKey) -> bool:
    """Links below the key that the affinity map records: breakpoints; for a
    conversation also the final link, which the next turn's prompt extends."""
    return link.breakpoint or (key.kind == "conversation" and link.final)


def looked_up(link: PrefixLink, key: RoutingKey) -> bool:
    """Links below the key worth looking up: any recorded one, and in a conversation every
    message boundary, since an earlier turn's final link is one of them now."""
    return link.breakpoint or (key.kind == "conversation" and link.boundary)


def open_first(ranked: list[Endpoint], admissions: Admissions | None) -> list[Endpoint]:
    """``ranked`` with endpoints paused by a rate limit moved last, in order."""
    if admissions is None:
        return ranked
    paused = [e for e in ranked if admissions.paused_for(e.name) > 0.0]
    return [e for e in ranked if e not in paused] + paused if paused else ranked


def long_paused(endpoint: Endpoint, admissions: Admissions | None) -> bool:
    """Whether ``endpoint``'s rate-limit pause outlasts ``AdmissionConfig.repin_pause``."""
    if admissions is None:
        return False
    return admissions.paused_for(endpoint.name) > admissions.config.repin_pause
