"""Choosing the endpoint of each upstream call: the Route protocol, prefix chains, HRW
ranking, the sticky router, its affinity map, passive health and stats.

Internal except ``Router`` and ``StickyRouter``, which ``limpet`` exports."""
