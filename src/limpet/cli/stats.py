"""``limpet stats``: the fleet's calls, hit rate and dollars per model (Redis), or the
Memcached servers' own counters, as a table or JSON."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from limpet.cli.arguments import memcached_cache, redis_cache
from limpet.errors import CacheUnavailableError

__all__ = ["run_stats"]


async def run_stats(args: argparse.Namespace) -> int:
    """Print the shared cache's counters; exit status 1 when they cannot be read, or when
    a model's row could not (the others are printed, and each row left out is named on
    stderr)."""
    from limpet.observe.fleet import read_fleet_stats

    if args.memcached:
        return await _memcached_stats(args)
    skipped: list[str] = []
    async with redis_cache(args) as cache:
        try:
            rows = await read_fleet_stats(cache, skipped=skipped)
        except CacheUnavailableError as exc:
            print(f"limpet stats: {exc}", file=sys.stderr)
            return 1
    if args.json:
        sys.stdout.write(orjson.dumps(rows).decode() + "\n")
    else:
        print(_stats_table(rows))
    for line in skipped:
        print(f"limpet stats: a row left out, unreadable: {line}", file=sys.stderr)
    return 1 if skipped else 0


def _stats_table(rows: dict[str, dict[str, Any]]) -> str:
    header = ("model", "requests", "hit rate", "hits", "coalesced", "misses", "spent", "saved")
    lines = [
        (
            model,
            f"{row['requests']:,}",
            f"{row['hit_rate']:.1%}",
            f"{row['hits']:,}",
            f"{row['coalesced']:,}",
            f"{row['misses']:,}",
            f"${row['cost_usd']:.4f}",
            f"${row['saved_usd']:.4f}",
        )
        for model, row in rows.items()
    ]
    if not lines:
        return "no calls counted yet"
    return _table(header, lines)


async def _memcached_stats(args: argparse.Namespace) -> int:
    async with memcached_cache(args) as cache:
        try:
            servers = await cache.server_stats()
        except CacheUnavailableError as exc:
            print(f"limpet stats: {exc}", file=sys.stderr)
            return 1
    if args.json:
        sys.stdout.write(orjson.dumps(servers).decode() + "\n")
        return 0
    header = ("server", "items", "hit rate", "hits", "misses", "evictions", "memory")
    lines = [
        (
            server,
            f"{row['items']:,}",
            f"{row['hit_rate']:.1%}",
            f"{row['hits']:,}",
            f"{row['misses']:,}",
            f"{row['evictions']:,}",
            f"{row['bytes'] / 2**20:.1f} / {row['limit_bytes'] / 2**20:.0f} MiB",
        )
        for server, row in servers.items()
    ]
    print(_table(header, lines))
    return 0


def _table(header: tuple[str, ...], lines: Sequence[tuple[str, ...]]) -> str:
    """Columns aligned: the first to the left, the others (numbers) to the right."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines, strict=False)]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *lines]
    )
