"""Prices from the gateway's ``/models`` listing against the cost it reports, over
loopback (the PriceTable's own tests, without a gateway, are in tests/test_pricing.py)."""

from __future__ import annotations

from decimal import Decimal

import aiohttp
import pytest

from limpet.models import Usage
from limpet.providers.pricing import PriceTable, cost_usd, prompt_cache_savings
from limpet.providers.prompt_cache import inject_cache_control
from limpet.providers.usage import normalize_usage, reported_cost
from limpet.testing import FakeGateway
from limpet.testing.provider_cache import ProviderPromptCache

pytestmark = pytest.mark.gateway(prompt_cache=ProviderPromptCache)


async def test_prices_from_the_gateway_reproduce_its_reported_cost(gateway: FakeGateway) -> None:
    async with aiohttp.ClientSession() as session:

        async def fetch() -> object:
            async with session.get(gateway.base_url("a") + "/models") as response:
                return await response.json()

        table = PriceTable(fetch, fallback=False)
        model = "anthropic/claude-sonnet-4.6"
        prices = await table.prices(model)
        assert prices is not None and prices.source == "gateway"
        assert (prices.prompt, prices.write_1h_price) == (Decimal("0.000003"), Decimal("0.000006"))
        assert gateway.endpoint("a").model_listings == 1
        system = "The manual, chapter one. " * 400
        costs: list[tuple[float, Usage]] = []
        for question in ("What is a limpet?", "Where do limpets live?"):
            body = inject_cache_control(
                {
                    "model": model,
                    "temperature": 0,
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": question},
                    ],
                }
            )
            url = gateway.base_url("a") + "/chat/completions"
            async with session.post(url, json=body) as response:
                usage = (await response.json())["usage"]
            normalised = normalize_usage(usage)
            reported = reported_cost(usage)
            assert reported is not None
            assert cost_usd(normalised, prices) == pytest.approx(reported, abs=1e-12)
            costs.append((reported, normalised))
    (_, wrote), (_, read) = costs
    assert wrote.cache_write_tokens > 2000 and read.cached_tokens == wrote.cache_write_tokens
    assert prompt_cache_savings(read, prices) > 0 > prompt_cache_savings(wrote, prices)
