"""Prometheus metrics from ``CallEvent``s. Needs the ``prometheus`` extra.

Example:
    >>> from limpet.metrics import PrometheusMetrics
    >>> client = Client(on_event=PrometheusMetrics())   # registers in the default registry
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from limpet.events import CallEvent

__all__ = ["PrometheusMetrics"]


class PrometheusMetrics:
    """An ``on_event`` hook that counts calls, tokens and dollars by model and status.

    Metrics (with ``namespace="limpet"``): ``limpet_calls_total{model,cache,endpoint}``,
    ``limpet_errors_total{model,error}``, ``limpet_tokens_total{model,kind}`` (prompt,
    completion, cached, cache_write), ``limpet_cost_usd_total{model}``,
    ``limpet_saved_usd_total{model}`` and ``limpet_call_seconds{cache}``.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, namespace: str = "limpet"
    ) -> None:
        registry = REGISTRY if registry is None else registry

        def counter(name: str, documentation: str, *labels: str) -> Counter:
            return Counter(name, documentation, labels, namespace=namespace, registry=registry)

        self.calls = counter("calls", "Calls by how they were served", "model", "cache", "endpoint")
        self.errors = counter("errors", "Calls that failed", "model", "error")
        self.tokens = counter("tokens", "Tokens billed upstream", "model", "kind")
        self.cost = counter("cost_usd", "Dollars spent upstream", "model")
        self.saved = counter("saved_usd", "Dollars saved by caching and coalescing", "model")
        self.seconds = Histogram(
            "call_seconds",
            "Call latency",
            ["cache"],
            namespace=namespace,
            registry=registry,
            buckets=(0.0001, 0.001, 0.005, 0.025, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )

    def __call__(self, event: CallEvent) -> None:
        model = event.model
        if event.cache is None:
            self.errors.labels(model, event.error or "Error").inc()
            return
        self.calls.labels(model, event.cache.value, event.endpoint or "").inc()
        usage = event.usage
        for kind, count in (
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
            ("cached", usage.cached_tokens),
            ("cache_write", usage.cache_write_tokens),
        ):
            if count:
                self.tokens.labels(model, kind).inc(count)
        if event.cost_usd:
            self.cost.labels(model).inc(event.cost_usd)
        if event.saved_usd:
            self.saved.labels(model).inc(event.saved_usd)
        self.seconds.labels(event.cache.value).observe(event.seconds)
