"""Prometheus metrics for limpet calls (needs the ``prometheus`` extra): a public path."""

from limpet.observe.metrics import PrometheusMetrics

__all__ = ["PrometheusMetrics"]
