"""OpenTelemetry spans for limpet calls (needs the ``otel`` extra): a public path."""

from limpet.observe.tracing import OpenTelemetrySpans

__all__ = ["OpenTelemetrySpans"]
