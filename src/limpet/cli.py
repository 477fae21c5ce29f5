"""The ``limpet`` command: ``demo``, ``warm``, ``flush``, ``stats``, ``bench``.

Secrets never go on the command line (process lists show it): the API key comes from
``$OPENROUTER_API_KEY``, and a Redis password from the URL in ``$LIMPET_REDIS_URL``.

``warm``, ``flush`` and ``stats`` take the shared cache as ``--redis URL`` or
``--memcached URL`` (``memcached://host:11211[,host:port...]``; it wins when both are
set). On Memcached, ``stats`` shows the servers' own counters (items, hit rate,
evictions, memory): the fleet's per-model counters live in Redis only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from limpet.errors import CacheUnavailableError, InvalidRequestError
from limpet.generations import generation_name
from limpet.models import Completion
from limpet.warm import DEFAULT_WARM_CONCURRENCY, WarmReport, warm

if TYPE_CHECKING:
    from limpet.cache.memcached import MemcachedCache
    from limpet.cache.redis import RedisCache

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``limpet`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "bench":
        return _bench(args)
    if args.command in ("warm", "flush", "stats") and not (args.redis or args.memcached):
        parser.error(
            f"{args.command}: --redis URL (or $LIMPET_REDIS_URL) or --memcached URL "
            "(or $LIMPET_MEMCACHED_URL) is required"
        )
    if args.command == "warm":
        return asyncio.run(_warm(args))
    if args.command == "flush":
        return asyncio.run(_flush(args))
    if args.command == "stats":
        return asyncio.run(_stats(args))
    parser.print_help()
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="limpet", description="Cheaper, faster LLM calls through OpenAI-compatible gateways."
    )
    commands = parser.add_subparsers(dest="command")
    demo = commands.add_parser(
        "demo", help="run a realistic workload against the built-in fake gateway"
    )
    demo.add_argument("--requests", type=_positive_int, default=400)
    demo.add_argument("--concurrency", type=_positive_int, default=32)
    demo.add_argument("--burst", type=_positive_int, default=64, help="identical cold requests")
    demo.add_argument("--latency", type=float, default=0.08, help="fake upstream seconds")
    demo.add_argument("--json", action="store_true", help="print JSON instead of a table")

    warm = commands.add_parser(
        "warm", help="fill the shared cache from a JSONL file of complete() arguments"
    )
    warm.add_argument("file", type=Path, help="one JSON object of complete() arguments a line")
    _redis_options(warm)
    warm.add_argument(
        "--base-url",
        default=None,
        help="gateway API root (default: $LIMPET_BASE_URL, else OpenRouter)",
    )
    warm.add_argument("--concurrency", type=_positive_int, default=DEFAULT_WARM_CONCURRENCY)
    warm.add_argument("--json", action="store_true", help="print the report as JSON")

    flush = commands.add_parser(
        "flush", help="invalidate cached answers fleet-wide (a generation bump, not a scan)"
    )
    _redis_options(flush)
    flush.add_argument("--model", default=None, help="only this model's answers")

    stats = commands.add_parser(
        "stats",
        help="the whole fleet's calls, hit rate and dollars, per model, from Redis "
        "(on Memcached: the servers' counters)",
    )
    _redis_options(stats)
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")

    bench = commands.add_parser(
        "bench", help="run benchmarks/ (in a limpet source checkout) and write their results"
    )
    bench.add_argument("names", nargs="*", help="only these benchmarks")
    bench.add_argument("--quick", action="store_true", help="small, fast runs")
    bench.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    return parser


def _redis_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--redis", default=os.environ.get("LIMPET_REDIS_URL"), help="default: $LIMPET_REDIS_URL"
    )
    command.add_argument(
        "--memcached",
        default=os.environ.get("LIMPET_MEMCACHED_URL"),
        help="memcached://host:11211[,host:port...] instead of Redis "
        "(default: $LIMPET_MEMCACHED_URL)",
    )
    command.add_argument("--prefix", default=None, help="the cache's key prefix (default: limpet:)")
    command.add_argument("--namespace", default=None, help="the Client namespace (default: none)")


def _demo(args: argparse.Namespace) -> int:
    from limpet.demo import render, run_demo

    if args.burst > args.requests:
        print("limpet demo: --burst must not exceed --requests", file=sys.stderr)
        return 2
    plain, limpet = asyncio.run(
        run_demo(
            requests=args.requests,
            concurrency=args.concurrency,
            burst=args.burst,
            latency=args.latency,
        )
    )
    if args.json:
        out = {"without_limpet": plain.as_dict(), "with_limpet": limpet.as_dict()}
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render(plain, limpet, args.concurrency))
    return 0


async def _warm(args: argparse.Namespace) -> int:
    from limpet import Client, MemoryCache, TieredCache

    cache = TieredCache(MemoryCache(), _shared_cache(args))
    async with Client(
        base_url=args.base_url, cache=cache, namespace=args.namespace or ""
    ) as client:

        async def complete_line(line: int, text: bytes) -> Completion:
            try:
                request = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise InvalidRequestError(f"line {line}", "a JSON object", str(exc)) from None
            if not isinstance(request, dict):
                raise InvalidRequestError(f"line {line}", "a JSON object", request)
            return await client.complete(**request)

        def show(report: WarmReport) -> None:
            sys.stderr.write(
                f"\rwarming: {report.done} done, {report.warmed} warmed, "
                f"{report.skipped} skipped, {report.failed} failed"
            )
            sys.stderr.flush()

        with args.file.open("rb") as lines:
            requests = (
                {"line": number, "text": text}
                for number, text in enumerate(lines, start=1)
                if text.strip()
            )
            report = await warm(
                complete_line, requests, concurrency=args.concurrency, progress=show
            )
        sys.stderr.write("\n")
    if args.json:
        sys.stdout.write(orjson.dumps(asdict(report)).decode() + "\n")
    else:
        print(
            f"warmed {report.warmed}, skipped {report.skipped} (cached), "
            f"uncacheable {report.uncacheable}, failed {report.failed}"
        )
        for error in report.errors[:20]:
            print(f"  {error}")
    return 1 if report.failed else 0


async def _flush(args: argparse.Namespace) -> int:
    name = generation_name(args.namespace, args.model)
    async with _shared_cache(args) as cache:
        try:
            generation = await cache.bump_generation(name)
        except CacheUnavailableError as exc:
            print(f"limpet flush: {exc}", file=sys.stderr)
            return 1
    what = f"model {args.model!r}" if args.model else "every model"
    where = f"namespace {args.namespace!r}" if args.namespace is not None else "every namespace"
    print(f"flushed {what} in {where} (generation {generation})")
    return 0


async def _stats(args: argparse.Namespace) -> int:
    from limpet.fleet import read_fleet_stats

    if args.memcached:
        return await _memcached_stats(args)
    async with _redis_cache(args) as cache:
        try:
            rows = await read_fleet_stats(cache)
        except CacheUnavailableError as exc:
            print(f"limpet stats: {exc}", file=sys.stderr)
            return 1
    if args.json:
        sys.stdout.write(orjson.dumps(rows).decode() + "\n")
        return 0
    print(_stats_table(rows))
    return 0


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


def _bench(args: argparse.Namespace) -> int:
    if not Path("benchmarks", "run.py").is_file():
        print("limpet bench: run it from a limpet source checkout", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "benchmarks.run", *args.names]
    command += ["--quick"] * args.quick + ["--no-readme"] * args.no_readme
    return subprocess.call(command)


async def _memcached_stats(args: argparse.Namespace) -> int:
    async with _memcached_cache(args) as cache:
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


def _shared_cache(args: argparse.Namespace) -> RedisCache | MemcachedCache:
    """The shared cache the command names: Memcached when given, else Redis."""
    return _memcached_cache(args) if args.memcached else _redis_cache(args)


def _redis_cache(args: argparse.Namespace) -> RedisCache:
    # Imported here: the redis extra is needed for these commands only, not for the demo.
    from limpet.cache.redis import DEFAULT_PREFIX, RedisCache

    return RedisCache.from_url(args.redis, prefix=args.prefix or DEFAULT_PREFIX)


def _memcached_cache(args: argparse.Namespace) -> MemcachedCache:
    # Imported here: the memcached extra is needed for these commands only.
    from limpet.cache.memcached import DEFAULT_PREFIX, MemcachedCache

    return MemcachedCache.from_url(args.memcached, prefix=args.prefix or DEFAULT_PREFIX)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text}")
    return value
