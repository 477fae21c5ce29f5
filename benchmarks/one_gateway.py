"""One gateway: the multi-tenant RAG workload of ``benchmarks/sticky.py`` through ONE
OpenRouter-like endpoint with three providers behind it, each with its own prompt cache
(``limpet.testing.OpenRouterProviders``), which is how most users deploy limpet.

Three runs side by side, on the same arrivals:

- ``session_id on``: limpet's default; each request carries a ``session_id`` derived from
  its routing key (here the tenant's marked document), so the gateway keeps a tenant's
  questions on the provider that cached its document from the first question on;
- ``session_id off`` (``RoutingConfig(session_id=False)``): the gateway's own stickiness
  only, by conversation (first system plus first non-system message) after a cached
  request; a RAG question puts document and question in one message, so every question
  is a new conversation, drawn among the providers at random;
- ``ideal``: one provider sees everything.

Figures: provider-cache hit rate (read tokens / cacheable tokens) and dollars from the
gateway's own ``usage.cost``. Target: ``on`` >= 0.95x the ideal hit rate. Time is
simulated as in ``benchmarks/sticky.py``, whose workload, clock and counting cache this
shares (``benchmarks/_rag.py``): TTLs act as they would over the 35 minutes the workload
stands for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks._common import Figure, Plot, Series, emit
from benchmarks._harness import API_KEY, command_line
from benchmarks._rag import (
    LATENCY,
    TENANT_PERIOD,
    WORKERS,
    Arrival,
    ArrivalClock,
    CountingCache,
    hit_rate,
    replay,
    via_client,
    workload,
)
from limpet import Client, Endpoint, RetryConfig
from limpet.config import RoutingConfig
from limpet.routing.sticky import StickyRouter
from limpet.testing import FakeGateway, OpenRouterProviders

PROVIDERS = ("anthropic", "google-vertex", "amazon-bedrock")
TARGET_SHARE = 0.95


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    hit_rate: float
    cost: float
    served: dict[str, int]

    def row(self) -> dict[str, Any]:
        return {
            "hit_rate": round(self.hit_rate, 4),
            "cost_usd": round(self.cost, 4),
            "served_by": self.served,
        }


async def run(
    name: str,
    clock: ArrivalClock,
    providers: Sequence[str],
    arrivals: Sequence[Arrival],
    *,
    session_id: bool,
) -> Outcome:
    """The workload through one OpenRouter-like endpoint with ``providers`` behind it."""

    def behind() -> OpenRouterProviders:
        return OpenRouterProviders(providers, cache=lambda: CountingCache(clock))

    async with FakeGateway(
        endpoints=("openrouter",), latency=LATENCY, prompt_cache=behind, clock=clock
    ) as gateway:
        endpoint = Endpoint(
            "openrouter", gateway.base_url("openrouter"), api_key=API_KEY, gateway="openrouter"
        )
        router = StickyRouter([endpoint], config=RoutingConfig(session_id=session_id), clock=clock)
        client = Client(
            router=router, cache=None, coalesce=False, retry=RetryConfig(max_attempts=1)
        )
        try:
            samples = await replay(clock, arrivals, via_client(client))
        finally:
            await client.aclose()
        model = gateway.endpoint("openrouter").prompt_cache
        assert isinstance(model, OpenRouterProviders)
        served = dict(model.served)
    return Outcome(name, hit_rate(samples), sum(s.cost for s in samples), served)


async def main(quick: bool) -> None:
    tenants, questions = (20, 10) if quick else (40, 10)
    arrivals = workload(tenants, questions)
    clock = ArrivalClock()
    on = await run("session_id on", clock, PROVIDERS, arrivals, session_id=True)
    off = await run("session_id off", clock, PROVIDERS, arrivals, session_id=False)
    ideal = await run("ideal", clock, PROVIDERS[:1], arrivals, session_id=True)
    share = on.hit_rate / ideal.hit_rate if ideal.hit_rate else 0.0
    outcomes = (on, off, ideal)
    labels = [o.name for o in outcomes]
    emit(
        "one_gateway",
        figures(on, off, ideal),
        plot=Plot(
            kind="bar",
            title="Multi-tenant RAG through one OpenRouter endpoint, 3 providers",
            ylabel="%",
            series={
                "provider-cache hit rate (%)": Series(
                    x=labels, y=[o.hit_rate * 100 for o in outcomes]
                ),
                "cost (% of session_id off)": Series(
                    x=labels, y=[o.cost / off.cost * 100 for o in outcomes]
                ),
            },
        ),
        driver="Client(router=StickyRouter([one OpenRouter endpoint]))",
        workload={
            "tenants": tenants,
            "questions_per_tenant": questions,
            "requests": len(arrivals),
            "tenant_period_s": TENANT_PERIOD,
            "in_flight": WORKERS,
            "providers": list(PROVIDERS),
        },
        strategies={o.name: o.row() for o in outcomes},
        on_share_of_ideal=round(share, 4),
        off_share_of_ideal=round(off.hit_rate / ideal.hit_rate, 4) if ideal.hit_rate else None,
        cost_on_vs_off=round(on.cost / off.cost, 4) if off.cost else None,
    )


def figures(on: Outcome, off: Outcome, ideal: Outcome) -> list[Figure]:
    share = on.hit_rate / ideal.hit_rate if ideal.hit_rate else 0.0
    return [
        Figure(
            figure="provider-cache hit rate, RAG through one OpenRouter endpoint (3 providers)",
            unit="%",
            limpet=on.hit_rate * 100,
            baseline=ideal.hit_rate * 100,
            baseline_name="ideal: one provider sees everything",
            target=f">= {TARGET_SHARE}x ideal",
            met=share >= TARGET_SHARE,
        ),
        Figure(
            figure="provider-cache hit rate through one gateway, session_id off",
            unit="%",
            limpet=on.hit_rate * 100,
            baseline=off.hit_rate * 100,
            baseline_name="session_id off",
        ),
        Figure(
            figure="cost of the RAG workload through one gateway",
            unit="$",
            limpet=on.cost,
            baseline=off.cost,
            baseline_name="session_id off",
        ),
    ]


if __name__ == "__main__":
    args = command_line(__doc__, quick_help="a smaller, faster run").parse_args()
    asyncio.run(main(args.quick))
