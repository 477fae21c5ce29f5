"""What ``MemcachedCache`` asks of every server at once: its counters (``stats``, for
``server_stats()``), or to forget everything (``flush_all``, for ``clear()``)."""

from __future__ import annotations

import asyncio

import emcache

__all__ = ["flush_all_servers", "read_server_stats", "stats_summary"]


async def flush_all_servers(client: emcache.Client) -> None:
    """Empty every server of ``client`` (``flush_all``)."""
    nodes = client.cluster_managment().nodes()
    await asyncio.gather(*(client.flush_all(node) for node in nodes))


async def read_server_stats(client: emcache.Client) -> dict[str, dict[str, float]]:
    """``stats_summary`` of every server of ``client``, by ``host:port``."""
    nodes = [
        node
        for node in client.cluster_managment().nodes()
        if isinstance(node, emcache.MemcachedHostAddress)
    ]
    replies = await asyncio.gather(*(client.stats(node) for node in nodes))
    return {
        f"{node.address}:{node.port}": stats_summary(reply)
        for node, reply in zip(nodes, replies, strict=True)
    }


def stats_summary(reply: dict[str, str]) -> dict[str, float]:
    """The figures limpet shows of one server's ``stats`` reply.

    Example:
        >>> stats_summary({"get_hits": "3", "get_misses": "1", "curr_items": "2"})["hit_rate"]
        0.75
    """
    hits, misses = int(reply.get("get_hits", 0)), int(reply.get("get_misses", 0))
    return {
        "items": int(reply.get("curr_items", 0)),
        "hits": hits,
        "misses": misses,
        "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
        "evictions": int(reply.get("evictions", 0)),
        "bytes": int(reply.get("bytes", 0)),
        "limit_bytes": int(reply.get("limit_maxbytes", 0)),
    }
