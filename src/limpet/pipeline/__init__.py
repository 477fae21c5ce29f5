"""One call, in order, shared by ``complete()``, ``stream()`` and ``embed()``: request
(validate + policy) → key → lookup → flight → upstream → account → store → result.

Internal: not public API (import from ``limpet``)."""
