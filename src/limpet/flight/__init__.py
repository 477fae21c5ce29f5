"""Single-flight: one upstream call per key in this process, leases across processes, and
the fan-out of one stream to many readers.

Internal: not public API."""
