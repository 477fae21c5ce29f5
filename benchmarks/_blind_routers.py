"""Baselines for ``sticky``: routers that ignore the prompt's prefix (round-robin and
random), behind the Router protocol the Client calls."""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from typing import Any

from limpet import Endpoint
from limpet.models import Usage
from limpet.routing.sticky import Attempt, Route


class _Blind:
    """An observer that learns nothing from calls."""

    def attempt_started(self, attempt: Attempt) -> None:
        pass

    def attempt_served(self, attempt: Attempt, usage: Usage | None) -> None:
        pass

    def attempt_ended(self, attempt: Attempt, error: BaseException | None) -> None:
        pass


class RoundRobinRouter:
    """Each call to the next endpoint in turn."""

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self._endpoints = tuple(endpoints)
        self._turn = itertools.count()

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    async def route(self, body: Mapping[str, Any]) -> Route:
        start = next(self._turn) % len(self._endpoints)
        order = self._endpoints[start:] + self._endpoints[:start]
        return Route(body, order, _Blind())

    async def aclose(self) -> None:
        pass


class RandomRouter(RoundRobinRouter):
    """Each call to an endpoint drawn at random (seeded)."""

    def __init__(self, endpoints: Sequence[Endpoint], seed: int = 7) -> None:
        super().__init__(endpoints)
        self._rng = random.Random(seed)

    async def route(self, body: Mapping[str, Any]) -> Route:
        order = list(self.endpoints)
        self._rng.shuffle(order)
        return Route(body, order, _Blind())
