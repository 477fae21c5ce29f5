"""The ``limpet`` command: ``demo``, ``warm``, ``flush``, ``stats``, ``bench``, ``serve``.

Secrets never go on the command line (process lists show it): the API key comes from
``$OPENROUTER_API_KEY`` (or the variable ``--api-key-env`` names), and a Redis password
from the URL in ``$LIMPET_REDIS_URL``.

``warm``, ``flush`` and ``stats`` take the shared cache as ``--redis URL`` or
``--memcached URL`` (``memcached://host:11211[,host:port...]``), one or the other; with
neither, ``$LIMPET_REDIS_URL``, else ``$LIMPET_MEMCACHED_URL``. On Memcached, ``stats``
shows the servers' own counters (items, hit rate, evictions, memory): the fleet's
per-model counters live in Redis only.

Cache scopes (``--cache-scope``): ``warm`` writes the entries of one scope, ``credential``
(the default, as for a Client: entries only Clients with the same API key read) or
``namespace`` (the entries every Client of the namespace with ``cache_scope="namespace"``
reads). ``flush`` bumps the namespace's generation by default, which every key of the
namespace includes whatever its scope, so it needs no API key; ``--cache-scope
credential`` flushes only the entries of the key in ``--api-key-env``. ``stats`` counts
calls per model across the fleet and holds no answers, so it has no scope to choose.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson

from limpet._version import __version__
from limpet.cache.generations import generation_name
from limpet.errors import (
    CacheUnavailableError,
    ConfigurationError,
    InvalidRequestError,
    LimpetError,
)
from limpet.models import Completion, Embeddings
from limpet.observe.warm import DEFAULT_WARM_CONCURRENCY, WarmReport, is_embedding, warm
from limpet.pipeline.credentials import CACHE_SCOPES

if TYPE_CHECKING:
    from limpet.cache.memcached.backend import MemcachedCache
    from limpet.cache.redis.backend import RedisCache

__all__ = ["main"]

#: Where the API key is read from by default (as ``Client`` does).
API_KEY_ENV = "OPENROUTER_API_KEY"


class CommandError(Exception):
    """A failure a command reports as one line on stderr, with its exit status (1: it
    failed; 2: it was used wrongly)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``limpet`` console script.

    Every error is one line on stderr, ``limpet COMMAND: what went wrong``, with exit
    status 2 for a usage error and 1 for a failure; ``--verbose`` adds the traceback.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command in ("warm", "flush", "stats") and not _shared_tier_given(args):
        parser.error(
            f"{args.command}: --redis URL (or $LIMPET_REDIS_URL) or --memcached URL "
            "(or $LIMPET_MEMCACHED_URL) is required"
        )
    try:
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        status, message = _explain(exc)
        if args.verbose:
            traceback.print_exception(exc)
        print(f"limpet {args.command}: {message}", file=sys.stderr)
        return status


def _shared_tier_given(args: argparse.Namespace) -> bool:
    """Whether the command names its shared cache: a flag wins; else $LIMPET_REDIS_URL,
    then $LIMPET_MEMCACHED_URL (so a flag is never overridden by the environment)."""
    if not (args.redis or args.memcached):
        args.redis = os.environ.get("LIMPET_REDIS_URL") or None
        args.memcached = None if args.redis else os.environ.get("LIMPET_MEMCACHED_URL")
    return bool(args.redis or args.memcached)


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        return _demo(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "warm":
        return asyncio.run(_warm(args))
    if args.command == "flush":
        return asyncio.run(_flush(args))
    return asyncio.run(_stats(args))


def _explain(exc: Exception) -> tuple[int, str]:
    """The exit status and the one line a failed command prints."""
    if isinstance(exc, CommandError):
        return exc.status, str(exc)
    if isinstance(exc, ConfigurationError | InvalidRequestError):
        return 2, str(exc)
    if isinstance(exc, ImportError | LimpetError):
        return 1, str(exc)  # a missing extra's ImportError already says what to install
    return 1, f"{type(exc).__name__}: {exc} (--verbose shows the traceback)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="limpet", description="Cheaper, faster LLM calls through OpenAI-compatible gateways."
    )
    parser.add_argument("--version", action="version", version=f"limpet {__version__}")
    parser.set_defaults(verbose=False)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command")
    demo = commands.add_parser(
        "demo", help="run a realistic workload against the built-in fake gateway", parents=[common]
    )
    demo.add_argument(
        "--requests", type=_positive_int, default=400, help="calls in the workload (400)"
    )
    demo.add_argument(
        "--concurrency", type=_positive_int, default=32, help="calls in flight at once (32)"
    )
    demo.add_argument("--burst", type=_positive_int, default=64, help="identical cold requests")
    demo.add_argument("--latency", type=float, default=0.08, help="fake upstream seconds")
    demo.add_argument("--json", action="store_true", help="print JSON instead of a table")

    warm = commands.add_parser(
        "warm",
        help="fill the shared cache from a JSONL file of complete() arguments",
        parents=[common],
    )
    warm.add_argument("file", type=Path, help="one JSON object of complete() arguments a line")
    _redis_options(warm)
    warm.add_argument(
        "--base-url",
        default=None,
        help="gateway API root (default: $LIMPET_BASE_URL, else OpenRouter)",
    )
    _scope_options(
        warm,
        "credential",
        "whose entries to write: the API key's (default) or the namespace's shared ones",
    )
    warm.add_argument(
        "--hmac-key-env",
        default=None,
        metavar="NAME",
        help="the environment variable holding the cache's hmac_key, as the service sets it",
    )
    warm.add_argument("--concurrency", type=_positive_int, default=DEFAULT_WARM_CONCURRENCY)
    warm.add_argument("--json", action="store_true", help="print the report as JSON")

    flush = commands.add_parser(
        "flush",
        help="invalidate cached answers fleet-wide (a generation bump, not a scan)",
        parents=[common],
    )
    _redis_options(flush)
    flush.add_argument("--model", default=None, help="only this model's answers")
    _scope_options(
        flush,
        "namespace",
        "whose entries: every entry of the namespace, whatever its scope (default), or "
        "only the API key's (credential)",
    )

    stats = commands.add_parser(
        "stats",
        help="the whole fleet's calls, hit rate and dollars, per model, from Redis "
        "(on Memcached: the servers' counters)",
        parents=[common],
    )
    _redis_options(stats)
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")

    bench = commands.add_parser(
        "bench",
        help="run benchmarks/ (in a limpet source checkout) and write their results",
        parents=[common],
    )
    bench.add_argument("names", nargs="*", help="only these benchmarks")
    bench.add_argument("--quick", action="store_true", help="small, fast runs")
    bench.add_argument(
        "--update-readme",
        action="store_true",
        help="also replace the results table in README.md (off by default)",
    )

    serve = commands.add_parser(
        "serve",
        help="an OpenAI-compatible caching proxy: the callers share one cache and flights",
        parents=[common],
    )
    serve.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="URL",
        help="an OpenAI-compatible API root to proxy to (repeat for several)",
    )
    _redis_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=_positive_int, default=8400, help="the port (8400)")
    serve.add_argument(
        "--auto-cache-control",
        action="store_true",
        help="mark long static prefixes for providers that cache only up to a breakpoint",
    )
    serve.add_argument(
        "--fake",
        action="store_true",
        help="proxy to a fake gateway started in-process: no key, no network",
    )
    serve.add_argument(
        "--upstream-key-env",
        default=None,
        metavar="NAME",
        help="send the key in this environment variable upstream, not the callers' own",
    )
    serve.add_argument(
        "--client-keys-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="with --upstream-key-env: the keys callers must present, one a line",
    )
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="processes serving the port (SO_REUSEPORT); share a tier with --redis (1)",
    )
    serve.add_argument(
        "--metrics",
        action="store_true",
        help="serve GET /metrics for Prometheus (needs the prometheus extra)",
    )
    serve.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        help="seconds in-flight requests get to finish on SIGTERM/SIGINT (30)",
    )
    return parser


def _redis_options(command: argparse.ArgumentParser) -> None:
    where = command.add_mutually_exclusive_group()
    where.add_argument("--redis", default=None, help="redis://host:6379/0")
    where.add_argument(
        "--memcached", default=None, help="memcached://host:11211[,host:port...] instead"
    )
    command.add_argument("--prefix", default=None, help="the cache's key prefix (default: limpet:)")
    command.add_argument("--namespace", default=None, help="the Client namespace (default: none)")


def _scope_options(command: argparse.ArgumentParser, default: str, what: str) -> None:
    command.add_argument("--cache-scope", choices=CACHE_SCOPES, default=default, help=what)
    command.add_argument(
        "--api-key-env",
        default=None,
        metavar="NAME",
        help=f"the environment variable holding the API key (default: {API_KEY_ENV})",
    )


def _api_key(args: argparse.Namespace, *, required: bool) -> str | None:
    """The API key from the environment (never the command line), or None when not
    ``required`` and no variable was named.

    Raises:
        CommandError: the named (or, when required, the default) variable is not set.
    """
    name = args.api_key_env or API_KEY_ENV
    key = os.environ.get(name)
    if not key and (required or args.api_key_env is not None):
        raise CommandError(f"${name} is not set", status=2)
    return key or None


def _demo(args: argparse.Namespace) -> int:
    from limpet.cli.demo import render, run_demo

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

    lines = _open_lines(args.file)  # before anything is paid for
    shared = _shared_cache(args)
    cache = TieredCache(MemoryCache(), shared, hmac_key=_hmac_key(args))
    where = (
        f"{shared.server} (prefix {shared.prefix!r}, namespace {args.namespace or ''!r}, "
        f"{args.cache_scope} scope)"
    )
    errors: list[str] = []
    async with Client(
        base_url=args.base_url,
        api_key=_api_key(args, required=False),
        cache=cache,
        namespace=args.namespace or "",
        cache_scope=args.cache_scope,
    ) as client:
        try:
            await shared.get("warm-probe")  # a cache that is down would waste every call
        except CacheUnavailableError as exc:
            raise CommandError(f"nothing warmed: {exc}") from exc

        async def complete_line(line: int, text: bytes) -> Completion | Embeddings:
            try:
                request = _request_of(text)
                if is_embedding(request):
                    return await client.embed(**request)
                return await client.complete(**request)
            except LimpetError as exc:
                errors.append(f"line {line}: {exc}")
                raise

        def show(report: WarmReport) -> None:
            sys.stderr.write(
                f"\rwarming: {report.done} done, {report.warmed} warmed, "
                f"{report.skipped} skipped, {report.failed} failed"
            )
            sys.stderr.flush()

        with lines:
            requests = (
                {"line": number, "text": text}
                for number, text in enumerate(lines, start=1)
                if text.strip()
            )
            report = await warm(
                complete_line, requests, concurrency=args.concurrency, progress=show
            )
        sys.stderr.write("\n")
    # The Client has closed: every write has landed or failed by now.
    unstored = min(report.warmed, shared.failed_writes + shared.dropped_writes)
    if args.json:
        out = {**asdict(report), "errors": errors, "unstored": unstored, "where": where}
        sys.stdout.write(orjson.dumps(out).decode() + "\n")
    else:
        print(
            f"warmed {report.warmed - unstored} into {where}; skipped {report.skipped} "
            f"(cached), uncacheable {report.uncacheable}, failed {report.failed}"
        )
        for error in errors[:20]:
            print(f"  {error}")
    if unstored:
        raise CommandError(
            f"{unstored} of {report.warmed} answers could not be stored in {shared.server}"
        )
    return 1 if report.failed else 0


def _open_lines(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}", status=2) from exc


def _request_of(line: bytes) -> dict[str, Any]:
    """One JSONL line's ``complete()`` arguments."""
    try:
        request = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise LimpetError(f"not valid JSON ({exc})") from None
    if not isinstance(request, dict):
        raise LimpetError(
            f"expected a JSON object of complete() arguments, got {type(request).__name__}"
        )
    return request


def _hmac_key(args: argparse.Namespace) -> bytes | None:
    """The HMAC key named by ``--hmac-key-env``, as a service configures it."""
    if args.hmac_key_env is None:
        return None
    key = os.environ.get(args.hmac_key_env)
    if not key:
        raise CommandError(f"${args.hmac_key_env} (--hmac-key-env) is not set", status=2)
    return key.encode()


async def _flush(args: argparse.Namespace) -> int:
    from limpet.pipeline.credentials import key_scope

    credential = ""
    if args.cache_scope == "credential":
        credential = key_scope(_api_key(args, required=True))
    name = generation_name(args.namespace, args.model, credential=credential)
    async with _shared_cache(args) as cache:
        try:
            generation = await cache.bump_generation(name)
        except CacheUnavailableError as exc:
            print(f"limpet flush: {exc}", file=sys.stderr)
            return 1
    what = f"model {args.model!r}" if args.model else "every model"
    where = f"namespace {args.namespace!r}" if args.namespace is not None else "every namespace"
    if credential:
        where = f"namespace {args.namespace or ''!r}, for ${args.api_key_env or API_KEY_ENV}'s key"
    print(f"flushed {what} in {where} (generation {generation})")
    return 0


async def _stats(args: argparse.Namespace) -> int:
    from limpet.observe.fleet import read_fleet_stats

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
    command += ["--quick"] * args.quick + ["--update-readme"] * args.update_readme
    return subprocess.call(command)


#: Where ``serve`` may lend its upstream key to any caller: only this machine reaches it.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def _serve(args: argparse.Namespace) -> int:
    from limpet.serve import ServeConfig, run

    if not args.upstream and not args.fake:
        raise CommandError("--upstream URL (or --fake) is required", status=2)
    upstream_key = None
    if args.upstream_key_env is not None:
        upstream_key = os.environ.get(args.upstream_key_env)
        if not upstream_key:
            raise CommandError(f"${args.upstream_key_env} is not set", status=2)
    client_keys = frozenset[str]()
    if args.client_keys_file is not None:
        if upstream_key is None:
            raise CommandError("--client-keys-file needs --upstream-key-env", status=2)
        client_keys = _client_keys(args.client_keys_file)
    elif upstream_key is not None and args.host not in LOOPBACK_HOSTS:
        raise CommandError(
            f"--upstream-key-env on {args.host} would lend the key to anyone who can reach "
            "it: give --client-keys-file too, or listen on 127.0.0.1",
            status=2,
        )
    config = ServeConfig(
        upstream_key=upstream_key,
        client_keys=client_keys,
        upstreams=tuple(args.upstream),
        redis=args.redis,
        memcached=args.memcached,
        prefix=args.prefix,
        namespace=args.namespace or "",
        auto_cache_control=args.auto_cache_control,
        fake=args.fake,
        metrics=args.metrics,
    )
    if args.workers > 1:
        from limpet.serve.workers import run_workers

        return run_workers(
            config,
            host=args.host,
            port=args.port,
            shutdown_grace=args.shutdown_grace,
            workers=args.workers,
        )
    run(config, host=args.host, port=args.port, shutdown_grace=args.shutdown_grace)
    return 0


def _client_keys(path: Path) -> frozenset[str]:
    """The keys of a ``--client-keys-file``: one a line; blank lines and ``#`` comments
    are skipped."""
    lines = _open_lines(path)
    with lines:
        keys = frozenset(
            key for line in lines if (key := line.decode().strip()) and not key.startswith("#")
        )
    if not keys:
        raise CommandError(f"{path} holds no client key", status=2)
    return keys


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
    # Imported here: the redis extra is needed for these commands only, not for the demo
    # (without it: an ImportError that says what to install).
    from limpet import RedisCache

    if args.prefix is None:
        return RedisCache.from_url(args.redis)
    return RedisCache.from_url(args.redis, prefix=args.prefix)


def _memcached_cache(args: argparse.Namespace) -> MemcachedCache:
    # Imported here: the memcached extra is needed for these commands only.
    from limpet import MemcachedCache

    if args.prefix is None:
        return MemcachedCache.from_url(args.memcached)
    return MemcachedCache.from_url(args.memcached, prefix=args.prefix)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text}")
    return value
