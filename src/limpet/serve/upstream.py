"""What the proxy keeps beside its Client: the upstream's model listing, kept briefly
per credential, and the Prometheus registry of ``/metrics``."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Final

import aiohttp

from limpet._extras import require_extra
from limpet.endpoint import header_secrets
from limpet.errors import upstream_errors
from limpet.flight.local import SingleFlight
from limpet.observe.events import EventHook

__all__ = ["DEFAULT_MAX_LISTINGS", "MetricsRegistry", "ModelListings"]

#: Credentials whose ``/models`` listing is kept at once. A public listing answers any
#: key, and OpenRouter's is megabytes: without a cap, callers sending made-up keys would
#: fill the proxy's memory within one ``ttl``.
DEFAULT_MAX_LISTINGS: Final = 64


class ModelListings:
    """``GET /models`` of the first upstream, kept ``ttl`` seconds per credential (by a
    digest of it: the header itself is never kept), for at most ``max_kept`` credentials
    at once (the oldest listing makes way). Only a 200 is kept. Concurrent requests of
    one credential share one fetch. The session is lent: whoever made it closes it."""

    __slots__ = ("_clock", "_fetches", "_kept", "_max_kept", "_session", "_ttl", "_url")

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        ttl: float,
        clock: Callable[[], float],
        max_kept: int = DEFAULT_MAX_LISTINGS,
    ) -> None:
        self._session = session
        self._url = url
        self._ttl = ttl
        self._clock = clock
        self._max_kept = max_kept
        self._kept: dict[str, tuple[float, bytes]] = {}
        self._fetches: SingleFlight[tuple[int, bytes]] = SingleFlight()

    async def get(self, authorization: str | None) -> tuple[int, bytes]:
        """The status and body of the listing this credential may see.

        Raises:
            APIConnectionError: the upstream could not be reached (``APITimeoutError``: not
                in time); limpet's one boundary (``upstream_errors``) maps aiohttp's errors.
        """
        who = hashlib.sha256((authorization or "").encode()).hexdigest()
        kept = self._kept.get(who)
        if kept is not None and kept[0] > self._clock():
            return 200, kept[1]
        answer, _ = await self._fetches.do(who, self._fetch, authorization, who)
        return answer

    async def _fetch(self, authorization: str | None, who: str) -> tuple[int, bytes]:
        """One ``GET /models`` with ``authorization``; a 200 kept for ``who``."""
        headers = {"Authorization": authorization} if authorization else {}
        with upstream_errors("models", header_secrets(headers)):
            # A redirect is not followed (the credential would go wherever it points): its
            # 3xx is answered as any other status that is not 200, without its body.
            async with self._session.get(
                self._url, headers=headers, allow_redirects=False
            ) as response:
                body = await response.read()
                status = response.status
        if status == 200:
            now = self._clock()
            # Live listings in the order they were fetched: the first is the oldest.
            live = [(k, v) for k, v in self._kept.items() if v[0] > now and k != who]
            self._kept = dict(live[max(0, len(live) - self._max_kept + 1) :])
            self._kept[who] = (now + self._ttl, body)
        return status, body


class MetricsRegistry:
    """The proxy's own Prometheus registry (not the process-wide default one)."""

    __slots__ = ("hook", "registry")

    def __init__(self) -> None:
        # Imported here: only --metrics needs the prometheus extra.
        with require_extra("limpet serve --metrics", "prometheus", "prometheus_client"):
            from prometheus_client import CollectorRegistry

        from limpet.metrics import PrometheusMetrics

        self.registry = CollectorRegistry()
        self.hook: EventHook = PrometheusMetrics(self.registry)

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
