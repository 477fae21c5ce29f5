"""What the proxy keeps beside its Client: the upstream's model listing, kept briefly
per credential, and the Prometheus registry of ``/metrics``."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import aiohttp

from limpet._extras import require_extra
from limpet.endpoint import header_secrets
from limpet.errors import upstream_errors
from limpet.observe.events import EventHook

__all__ = ["MetricsRegistry", "ModelListings"]


class ModelListings:
    """``GET /models`` of the first upstream, kept ``ttl`` seconds per credential (by a
    digest of it: the header itself is never kept). Only a 200 is kept. The session is
    lent: whoever made it closes it."""

    __slots__ = ("_clock", "_kept", "_session", "_ttl", "_url")

    def __init__(
        self, session: aiohttp.ClientSession, url: str, ttl: float, clock: Callable[[], float]
    ) -> None:
        self._session = session
        self._url = url
        self._ttl = ttl
        self._clock = clock
        self._kept: dict[str, tuple[float, bytes]] = {}

    async def get(self, authorization: str | None) -> tuple[int, bytes]:
        """The status and body of the listing this credential may see.

        Raises:
            APIConnectionError: the upstream could not be reached (``APITimeoutError``: not
                in time); limpet's one boundary (``upstream_errors``) maps aiohttp's errors.
        """
        who = hashlib.sha256((authorization or "").encode()).hexdigest()
        now = self._clock()
        kept = self._kept.get(who)
        if kept is not None and kept[0] > now:
            return 200, kept[1]
        headers = {"Authorization": authorization} if authorization else {}
        with upstream_errors("models", header_secrets(headers)):
            async with self._session.get(self._url, headers=headers) as response:
                body = await response.read()
                status = response.status
        if status == 200:
            self._kept = {k: v for k, v in self._kept.items() if v[0] > now}
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
