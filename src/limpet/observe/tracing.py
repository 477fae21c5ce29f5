"""OpenTelemetry spans from ``CallEvent``s. Needs the ``otel`` extra.

Each call becomes a ``limpet.complete`` (or ``limpet.pipeline.stream``) span, timed as the call was,
under whatever span was current when the call finished (the caller's).

Example:
    >>> from limpet.tracing import OpenTelemetrySpans
    >>> client = Client(on_event=OpenTelemetrySpans())
"""

from __future__ import annotations

import time

from limpet._extras import require_extra
from limpet.observe.events import CallEvent

with require_extra("OpenTelemetrySpans", "otel", "opentelemetry"):
    from opentelemetry import trace

__all__ = ["OpenTelemetrySpans"]


class OpenTelemetrySpans:
    """An ``on_event`` hook that records each call as a span with its cache status,
    endpoint, model, tokens and dollars."""

    def __init__(self, tracer: trace.Tracer | None = None) -> None:
        self.tracer = tracer or trace.get_tracer("limpet")

    def __call__(self, event: CallEvent) -> None:
        end = time.time_ns()
        span = self.tracer.start_span(
            "limpet.stream" if event.stream else "limpet.complete",
            start_time=end - int(event.seconds * 1e9),
            attributes={
                "gen_ai.request.model": event.model,
                "gen_ai.usage.input_tokens": event.usage.prompt_tokens,
                "gen_ai.usage.output_tokens": event.usage.completion_tokens,
                "limpet.cache": event.cache.value if event.cache else "error",
                "limpet.endpoint": event.endpoint or "",
                "limpet.cached_tokens": event.usage.cached_tokens,
                "limpet.cost_usd": event.cost_usd,
                "limpet.saved_usd": event.saved_usd,
            },
        )
        if event.error is not None:
            span.set_status(trace.Status(trace.StatusCode.ERROR, event.error))
        span.end(end_time=end)
