"""Prometheus metrics from ``CallEvent``s. Needs the ``prometheus`` extra.

Example:
    >>> from limpet.metrics import PrometheusMetrics
    >>> client = Client(on_event=PrometheusMetrics())   # registers in the default registry
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from limpet._extras import require_extra
from limpet.models import Cost, Usage
from limpet.observe.events import CallEvent, Teller, telling
from limpet.observe.model_cap import MAX_MODELS, OTHER_MODEL, ModelCap

with require_extra("PrometheusMetrics", "prometheus", "prometheus_client"):
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["PrometheusMetrics"]


@dataclass(frozen=True, slots=True)
class _Collectors:
    calls: Counter
    errors: Counter
    tokens: Counter
    cost: Counter
    saved: Counter
    premium: Counter
    seconds: Histogram
    limit: Gauge
    in_flight: Gauge
    queued: Gauge
    folded: Counter
    # The model label's values: a caller names the model, so the series are capped.
    models: ModelCap


# A registry refuses a second collector of the same name, so every PrometheusMetrics of
# one (registry, namespace) shares one set: a second Client's hook counts into the same
# series instead of raising DuplicateTimeseries.
_REGISTERED: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _Collectors]] = (
    weakref.WeakKeyDictionary()
)


def _collectors(registry: CollectorRegistry, namespace: str) -> _Collectors:
    by_namespace = _REGISTERED.setdefault(registry, {})
    found = by_namespace.get(namespace)
    if found is not None:
        return found

    def counter(name: str, documentation: str, *labels: str) -> Counter:
        return Counter(name, documentation, labels, namespace=namespace, registry=registry)

    def gauge(name: str, documentation: str) -> Gauge:
        return Gauge(name, documentation, ["endpoint"], namespace=namespace, registry=registry)

    made = _Collectors(
        calls=counter("calls", "Calls by how they were served", "model", "cache", "endpoint"),
        errors=counter("errors", "Calls that failed", "model", "error"),
        tokens=counter("tokens", "Tokens billed upstream", "model", "kind"),
        cost=counter("cost_usd", "Dollars spent upstream", "model"),
        saved=counter("saved_usd", "Dollars saved by caching and coalescing", "model"),
        premium=counter(
            "cache_write_premium_usd",
            "Dollars provider prompt-cache writes cost above plain input (a negative saving)",
            "model",
        ),
        seconds=Histogram(
            "call_seconds",
            "Call latency",
            ["cache"],
            namespace=namespace,
            registry=registry,
            buckets=(0.0001, 0.001, 0.005, 0.025, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        ),
        limit=gauge("admission_limit", "Requests an endpoint may have in flight now"),
        in_flight=gauge("admission_in_flight", "Requests on the wire to an endpoint"),
        queued=gauge("admission_queued", "Calls waiting for admission to an endpoint"),
        folded=counter(
            "models_folded",
            f"Calls counted under model={OTHER_MODEL!r}: their model came after the first "
            f"{MAX_MODELS} distinct ones",
        ),
        models=ModelCap(),
    )
    by_namespace[namespace] = made
    return made


class PrometheusMetrics:
    """An ``on_event`` hook that counts calls, tokens and dollars by model and status.

    Metrics (with ``namespace="limpet"``): ``limpet_calls_total{model,cache,endpoint}``,
    ``limpet_errors_total{model,error}``, ``limpet_tokens_total{model,kind}`` (prompt,
    completion, cached, cache_write), ``limpet_cost_usd_total{model}``,
    ``limpet_saved_usd_total{model}``, ``limpet_cache_write_premium_usd_total{model}``
    (what a miss that wrote the provider's prompt cache paid above plain input: its
    ``saved_usd`` is negative, and a counter only goes up; ``saved_usd_total`` minus it is
    ``Stats.saved_usd``) and ``limpet_call_seconds{cache}``; and, as of
    each call's end, the gauges ``limpet_admission_limit{endpoint}``,
    ``limpet_admission_in_flight{endpoint}`` and ``limpet_admission_queued{endpoint}``.

    Calls, errors, savings and latency come from each call's event; tokens and dollars
    from ``limpet_spent()``, which a Client given this hook (or a wrapper passing that
    method on) calls for every upstream answer paid for, whether or not a call returned
    it (a stream whose caller hung up), so they add up to ``Stats``'. (Behind a function
    of yours that passes the events on, they come from the events: what the calls that
    returned spent.)

    The caller names the model, so its label is capped: the first ``MAX_MODELS`` (1,000)
    distinct models of a registry and namespace get their own series, and every later
    model's calls count under ``model="other"`` and in ``limpet_models_folded_total``.

    Any number of instances may share a registry and namespace (one per Client, say):
    they count into the same series.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, namespace: str = "limpet"
    ) -> None:
        collectors = _collectors(REGISTRY if registry is None else registry, namespace)
        self.calls = collectors.calls
        self.errors = collectors.errors
        self.tokens = collectors.tokens
        self.cost = collectors.cost
        self.saved = collectors.saved
        self.premium = collectors.premium
        self.seconds = collectors.seconds
        self.limit = collectors.limit
        self.in_flight = collectors.in_flight
        self.queued = collectors.queued
        self.folded = collectors.folded
        self._models = collectors.models
        # The Clients that tell this hook what was spent (whether or not through a
        # wrapper): their events' spend is counted already.
        self._told_by: weakref.WeakSet[Teller] = weakref.WeakSet()

    def __call__(self, event: CallEvent) -> None:
        model = self._label(event.model)
        admission = event.admission
        if admission is not None and event.endpoint is not None:
            self.limit.labels(event.endpoint).set(admission.limit)
            self.in_flight.labels(event.endpoint).set(admission.in_flight)
            self.queued.labels(event.endpoint).set(admission.queued)
        told = event.told_by
        if told is None or told not in self._told_by:  # not told by its Client: counted here
            self._count_spent(model, event.usage, event.cost_usd)
        if event.cache is None:
            self.errors.labels(model, event.error or "Error").inc()
            return
        self.calls.labels(model, event.cache.value, event.endpoint or "").inc()
        saved = event.saved_usd
        if saved > 0:
            self.saved.labels(model).inc(saved)
        elif saved < 0:
            self.premium.labels(model).inc(-saved)
        self.seconds.labels(event.cache.value).observe(event.seconds)

    def limpet_spent(self, model: str, usage: Usage, cost: Cost | None) -> None:
        """Count what one upstream answer cost (tokens and dollars), as it comes: a Client
        given this hook (itself, or behind a wrapper passing this method on) tells it
        every answer paid for, whether or not a call returned it (a stream whose caller
        hung up, a request left to others), so the counters add up to ``Stats``' rather
        than to the calls that returned; that Client's events (``told_by``) then count
        none. (Not counted as a call of a folded model: only ``__call__`` counts calls.)"""
        teller = telling()
        if teller is not None:
            self._told_by.add(teller)
        self._count_spent(self._models.row(model), usage, 0.0 if cost is None else cost.usd)

    def _count_spent(self, model: str, usage: Usage, usd: float) -> None:
        for kind, count in (
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
            ("cached", usage.cached_tokens),
            ("cache_write", usage.cache_write_tokens),
        ):
            if count:
                self.tokens.labels(model, kind).inc(count)
        if usd:
            self.cost.labels(model).inc(usd)

    def _label(self, model: str) -> str:
        models = self._models
        folded = models.folded
        label = models.row(model)
        if models.folded != folded:
            self.folded.inc()
        return label
