"""Dollars with and without ``auto_cache_control`` on long system prompts and many questions.

A few tenants each have a long system prompt (a manual, a policy) and ask many different
questions of ``anthropic/claude-sonnet-4.6``, interleaved, one every two seconds of
simulated time. Anthropic caches a prompt only up to a ``cache_control`` breakpoint, so
without one every question pays the full input price for the whole manual again; with
``auto_cache_control`` limpet marks the system prompt, the first question per tenant pays
the 1.25x write premium and every later one reads the prefix at 0.1x.

The FakeGateway's provider prompt-cache simulation (``ProviderPromptCache``) decides
reads and writes per endpoint and prices them from its ``/models`` listing; every answer
is a distinct question, so the response cache plays no part.

Target: >= 80% less input cost on the cached part (the system prompt) after the first call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from benchmarks._common import Figure, Plot, Series, emit
from benchmarks._harness import SimClock, command_line, endpoint_of
from limpet import Client
from limpet.errors import ConfigurationError
from limpet.models import Usage
from limpet.providers.pricing import ModelPrices, cost_usd
from limpet.providers.prompt_cache import inject_cache_control
from limpet.testing import FakeGateway
from limpet.testing.provider_cache import ProviderPromptCache

MODEL = "anthropic/claude-sonnet-4.6"
SECONDS_BETWEEN_CALLS = 2.0
TARGET_REDUCTION = 0.80
_TOPICS = ("returns", "shipping", "warranty", "billing", "accounts", "privacy", "repairs")


def system_prompt(tenant: int) -> str:
    """A long, tenant-specific manual: about 3,000 tokens."""
    topic = _TOPICS[tenant % len(_TOPICS)]
    rule = f"Tenant {tenant} policy on {topic}: answer politely, cite the section, never guess. "
    return rule * (12_000 // len(rule))


def question(tenant: int, index: int) -> str:
    return f"Customer {index} of tenant {tenant} asks about case #{1000 + index}: what now?"


@dataclass
class Run:
    """What one configuration spent, call by call."""

    usages: list[Usage] = field(default_factory=list)
    reported_usd: list[float] = field(default_factory=list)
    first_of_tenant: list[bool] = field(default_factory=list)


async def run(*, auto: bool, tenants: int, questions: int) -> tuple[Run, str]:
    """Every question of every tenant, interleaved, through a fresh gateway and Client."""
    clock = SimClock()
    result = Run()
    async with FakeGateway(endpoints=("a",), prompt_cache=ProviderPromptCache, clock=clock) as gw:
        endpoint = endpoint_of(gw)
        try:
            client = Client(endpoints=[endpoint], cache=None, auto_cache_control=auto)
            injection = "client" if auto else "off"
        except ConfigurationError:
            # Until the Client wires auto_cache_control, apply the same pure function here.
            client = Client(endpoints=[endpoint], cache=None)
            injection = "benchmark"
        async with client:
            for index in range(questions):
                for tenant in range(tenants):
                    body: dict[str, Any] = {
                        "model": MODEL,
                        "messages": [
                            {"role": "system", "content": system_prompt(tenant)},
                            {"role": "user", "content": question(tenant, index)},
                        ],
                        "temperature": 0,
                        "max_tokens": 200,
                    }
                    if injection == "benchmark":
                        body = inject_cache_control(body)
                    completion = await client.complete(**body)
                    assert completion.cost is not None
                    result.usages.append(completion.usage)
                    result.reported_usd.append(completion.cost.usd)
                    result.first_of_tenant.append(index == 0)
                    clock.now += SECONDS_BETWEEN_CALLS
    return result, injection


def prefix_input_usd(usage: Usage, prefix_tokens: int, prices: ModelPrices) -> float:
    """What the cached part (the first ``prefix_tokens`` of the prompt) cost on one call."""
    read = min(usage.cached_tokens, prefix_tokens)
    written = min(usage.cache_write_tokens, prefix_tokens - read)
    full = prefix_tokens - read - written
    total = read * prices.read_price + written * prices.write_price + full * prices.prompt
    return float(total)


@dataclass(frozen=True, slots=True)
class Saving:
    """Input dollars on the cached part (after each tenant's first call, and on all calls)
    and total dollars, with ``auto_cache_control`` (``limpet``) and without (``baseline``)."""

    limpet_later: float
    baseline_later: float
    limpet_all: float
    baseline_all: float
    limpet_total: float
    baseline_total: float
    later_calls: int

    @property
    def reduction_later(self) -> float:
        return 1 - self.limpet_later / self.baseline_later

    @property
    def reduction_all(self) -> float:
        return 1 - self.limpet_all / self.baseline_all


def saving(limpet: Run, baseline: Run, prefix: dict[int, int], prices: ModelPrices) -> Saving:
    """What the cached part cost each run; ``prefix`` gives each tenant's prefix tokens."""
    tenants = len(prefix)
    later = [i for i, first in enumerate(limpet.first_of_tenant) if not first]
    firsts = [i for i, first in enumerate(limpet.first_of_tenant) if first]

    def part(runs: Run, calls: list[int]) -> float:
        return sum(prefix_input_usd(runs.usages[i], prefix[i % tenants], prices) for i in calls)

    return Saving(
        limpet_later=part(limpet, later),
        baseline_later=part(baseline, later),
        limpet_all=part(limpet, later + firsts),
        baseline_all=part(baseline, later + firsts),
        limpet_total=sum(limpet.reported_usd),
        baseline_total=sum(baseline.reported_usd),
        later_calls=len(later),
    )


async def listed_prices() -> ModelPrices:
    async with FakeGateway(endpoints=("a",)) as gw:
        listing = gw.models[MODEL].listing()["pricing"]
    prices = ModelPrices.from_openrouter(listing)
    assert prices is not None
    return prices


async def main(tenants: int, questions: int) -> None:
    baseline, _ = await run(auto=False, tenants=tenants, questions=questions)
    limpet, injection = await run(auto=True, tenants=tenants, questions=questions)
    prices = await listed_prices()
    for usage, reported in zip(limpet.usages, limpet.reported_usd, strict=True):
        # The ledger's arithmetic agrees with what the gateway charged, call by call.
        assert abs(cost_usd(usage, prices) - reported) < 1e-9
    # The cached part: the prefix limpet's first call per tenant wrote, the same tokens
    # for every question of that tenant.
    prefix = {i % tenants: u.cache_write_tokens for i, u in enumerate(limpet.usages[:tenants])}
    assert all(tokens > 2000 for tokens in prefix.values()), prefix
    s = saving(limpet, baseline, prefix, prices)
    calls = tenants * questions
    emit(
        "cost",
        figures(s, calls, tenants, questions),
        plot=plot(s, calls),
        model=MODEL,
        tenants=tenants,
        questions_per_tenant=questions,
        injection=injection,
        prefix_tokens=sorted(prefix.values()),
        prices_per_mtok={
            name: format((price * Decimal(1_000_000)).normalize(), "f")
            for name, price in (
                ("prompt", prices.prompt),
                ("cache_read", prices.read_price),
                ("cache_write", prices.write_price),
            )
        },
        cached_tokens={
            "auto_cache_control": sum(u.cached_tokens for u in limpet.usages),
            "no cache_control": sum(u.cached_tokens for u in baseline.usages),
        },
        cache_write_tokens={
            "auto_cache_control": sum(u.cache_write_tokens for u in limpet.usages),
            "no cache_control": sum(u.cache_write_tokens for u in baseline.usages),
        },
    )


def figures(s: Saving, calls: int, tenants: int, questions: int) -> list[Figure]:
    return [
        Figure(
            figure=f"input $ on the cached system prompts, calls after each tenant's first "
            f"({s.later_calls} calls)",
            unit="$",
            limpet=s.limpet_later,
            baseline=s.baseline_later,
            baseline_name="no cache_control",
            target=">= 80% less",
            met=s.reduction_later >= TARGET_REDUCTION,
        ),
        Figure(
            figure="input cost saved on the cached part after the first call",
            unit="%",
            limpet=100 * s.reduction_later,
            target=">= 80%",
            met=s.reduction_later >= TARGET_REDUCTION,
        ),
        Figure(
            figure="input cost saved on the cached part, first-call write premiums included",
            unit="%",
            limpet=100 * s.reduction_all,
        ),
        Figure(
            figure=f"total $ for {calls} calls ({tenants} tenants x {questions} questions)",
            unit="$",
            limpet=s.limpet_total,
            baseline=s.baseline_total,
            baseline_name="no cache_control",
        ),
    ]


def plot(s: Saving, calls: int) -> Plot:
    parts = ["cached part, later calls", "cached part, all calls", "total"]
    return Plot(
        kind="bar",
        title=f"Dollars for {calls} calls to {MODEL}",
        ylabel="US dollars",
        series={
            "auto_cache_control": Series(x=parts, y=[s.limpet_later, s.limpet_all, s.limpet_total]),
            "no cache_control": Series(
                x=parts, y=[s.baseline_later, s.baseline_all, s.baseline_total]
            ),
        },
    )


if __name__ == "__main__":
    args = command_line(__doc__).parse_args()
    if args.quick:
        asyncio.run(main(tenants=2, questions=5))
    else:
        asyncio.run(main(tenants=4, questions=50))
