"""What limpet reports: stats, call events, fleet counters, warming, and the Prometheus and
OpenTelemetry hooks (public as ``limpet.metrics`` and ``limpet.tracing``).

Internal: import from ``limpet``, ``limpet.metrics`` or ``limpet.tracing``."""
