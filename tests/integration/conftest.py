"""The gateway the integration tests call: the FakeGateway over loopback.

``gateway`` serves one endpoint, ``"a"``, for the test alone. A module or a test that
needs another gateway says how with the ``gateway`` marker, whose keyword arguments go to
:class:`~limpet.testing.FakeGateway` as they are::

    pytestmark = pytest.mark.gateway(endpoints=("a", "b"), api_key=KEY)

The request the tests send is :func:`tests.integration.chat.ask`; fake clocks are in
``tests/fakes.py``. The soaks (``test_soak*.py``) share ``shared``, the shared tier of their
two Clients (Redis; Redis with an ``hmac_key``; a Redis Cluster; Memcached: see
``soak_tiers``), and ``ticks``, the counter that orders their events. The cancellation
sweep and the one-tick storms share ``world``, a ``Sweep`` on the tier setup the test is
parametrized with (``cancel_sweep.TIERS``).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

# Before it is imported: its checks say what they found when they fail.
pytest.register_assert_rewrite("tests.integration.cancel_sweep")

from limpet.testing import FakeGateway  # noqa: E402
from tests.integration.cancel_sweep import Sweep, open_sweep  # noqa: E402
from tests.integration.soak_adversity import Shared  # noqa: E402
from tests.integration.soak_tiers import TIER_PARAMS, soak_tier  # noqa: E402


@pytest.fixture
async def gateway(request: pytest.FixtureRequest) -> AsyncIterator[FakeGateway]:
    """A FakeGateway on loopback: endpoint ``"a"``, or what the ``gateway`` marker says."""
    options: dict[str, Any] = {"endpoints": ("a",)}
    marker = request.node.get_closest_marker("gateway")
    if marker is not None:
        options.update(marker.kwargs)
    async with FakeGateway(**options) as gw:
        yield gw


@pytest.fixture(params=TIER_PARAMS)
async def shared(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Shared]:
    """The soaks' shared tier of both Clients: Redis, signed Redis or a Redis Cluster
    (whose connections they kill), or Memcached; its refused lease releases recorded."""
    async with soak_tier(request, monkeypatch) as tier:
        yield tier


@pytest.fixture
def ticks() -> Iterator[int]:
    """The soaks' event counter: when each call started and each answer was produced."""
    return itertools.count()


@pytest.fixture
async def world(
    request: pytest.FixtureRequest,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[Sweep]:
    """The ``Sweep`` of one test, on the tier setup it is parametrized with
    (``@pytest.mark.parametrize("world", TIERS, indirect=True)``)."""
    async with open_sweep(request.param, request, gateway, monkeypatch, caplog) as found:
        yield found
