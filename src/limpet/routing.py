"""Choosing an endpoint: rendezvous (highest-random-weight) hashing. Pure.

Every process ranks endpoints for a routing key the same way with no coordination, and
removing an endpoint moves only the keys it held, each to its own next choice.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from limpet.config import Endpoint

__all__ = ["hrw_rank"]

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
