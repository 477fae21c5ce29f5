"""The gateway the integration tests call: the FakeGateway over loopback.

``gateway`` serves one endpoint, ``"a"``, for the test alone. A module or a test that
needs another gateway says how with the ``gateway`` marker, whose keyword arguments go to
:class:`~limpet.testing.FakeGateway` as they are::

    pytestmark = pytest.mark.gateway(endpoints=("a", "b"), api_key=KEY)

The request the tests send is :func:`tests.integration.chat.ask`; fake clocks are in
``tests/fakes.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from limpet.testing import FakeGateway


@pytest.fixture
async def gateway(request: pytest.FixtureRequest) -> AsyncIterator[FakeGateway]:
    """A FakeGateway on loopback: endpoint ``"a"``, or what the ``gateway`` marker says."""
    options: dict[str, Any] = {"endpoints": ("a",)}
    marker = request.node.get_closest_marker("gateway")
    if marker is not None:
        options.update(marker.kwargs)
    async with FakeGateway(**options) as gw:
        yield gw
