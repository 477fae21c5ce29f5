"""Lease tokens that say how long their holder's lease is. Pure.

A follower takes a lease over when nobody renewed it for a whole lease; but the lease is
its holder's, renewed every third of the holder's ``FlightConfig.lease``, which a Client
of another configuration (a rolling change) does not share. So a token carries its
holder's lease, in milliseconds (``"<32 hex digits>/<ms>"``), and the lease value built
from it (``token:n``, in every ``FlightStore``) tells a follower how long to wait. A
value without one (a lease of an older build, or another writer's) is judged by the
follower's own lease, as it always was.
"""

from __future__ import annotations

import secrets

__all__ = ["holders_lease", "lease_token"]

#: A recorded lease past this (a day, in ms) is no lease of a FlightConfig: ignored.
_MAX_MILLIS = 86_400_000


def lease_token(lease: float) -> str:
    """A fresh random token for a holder whose lease is ``lease`` seconds.

    Example:
        >>> token = lease_token(30.0)
        >>> len(token), token.endswith("/30000"), holders_lease(token + ":2")
        (38, True, 30.0)
    """
    return f"{secrets.token_hex(16)}/{max(1, round(lease * 1000))}"


def holders_lease(holder: str) -> float | None:
    """The lease, in seconds, that the holder of a lease whose value is ``holder``
    renews by, or None when the value does not say (an older build's ``token:n``).

    Example:
        >>> holders_lease("0f" * 16 + "/500:3"), holders_lease("0f" * 16 + ":3")
        (0.5, None)
    """
    token = holder.partition(":")[0]
    _, slash, millis = token.rpartition("/")
    if not slash or not 0 < len(millis) <= 9 or not millis.isdigit() or not millis.isascii():
        return None
    value = int(millis)
    return value / 1000 if 0 < value <= _MAX_MILLIS else None
