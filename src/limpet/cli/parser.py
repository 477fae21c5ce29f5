"""The ``limpet`` command line: one parser, one sub-parser per command."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeAlias

from limpet._version import __version__
from limpet.cli.arguments import (
    API_KEY_ENV,
    non_negative_float,
    port_number,
    positive_float,
    positive_int,
)
from limpet.observe.warm import DEFAULT_WARM_CONCURRENCY, MAX_WARM_CONCURRENCY
from limpet.pipeline.credentials import CACHE_SCOPES

__all__ = ["build_parser"]

# What add_subparsers() returns: where each command adds its parser.
_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command: ``demo | warm | flush | stats | bench | serve``."""
    parser = argparse.ArgumentParser(
        prog="limpet", description="Cheaper, faster LLM calls through OpenAI-compatible gateways."
    )
    parser.add_argument("--version", action="version", version=f"limpet {__version__}")
    parser.set_defaults(verbose=False)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command")
    for add in (_demo, _warm, _flush, _stats, _bench, _serve):
        add(commands, common)
    return parser


def _demo(commands: _Commands, common: argparse.ArgumentParser) -> None:
    demo = commands.add_parser(
        "demo", help="run a realistic workload against the built-in fake gateway", parents=[common]
    )
    demo.add_argument(
        "--requests", type=positive_int, default=400, help="calls in the workload (400)"
    )
    demo.add_argument(
        "--concurrency", type=positive_int, default=32, help="calls in flight at once (32)"
    )
    demo.add_argument("--burst", type=positive_int, default=64, help="identical cold requests")
    demo.add_argument(
        "--latency", type=non_negative_float, default=0.08, help="fake upstream seconds (0.08)"
    )
    demo.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _warm(commands: _Commands, common: argparse.ArgumentParser) -> None:
    warm = commands.add_parser(
        "warm",
        help="fill the shared cache from a JSONL file of complete() arguments",
        parents=[common],
    )
    warm.add_argument("file", type=Path, help="one JSON object of complete() arguments a line")
    _cache_options(warm)
    warm.add_argument(
        "--base-url",
        action="append",
        default=None,
        help=(
            "gateway API root (default: $LIMPET_BASE_URL, else OpenRouter); repeat it as the "
            "service's endpoints are, for their URLs enter its keys"
        ),
    )
    _scope_options(
        warm,
        "credential",
        "whose entries to write: the API key's (default) or the namespace's shared ones",
    )
    _hmac_option(warm)
    warm.add_argument(
        "--concurrency",
        type=positive_int,
        default=DEFAULT_WARM_CONCURRENCY,
        help=f"requests in flight at once ({DEFAULT_WARM_CONCURRENCY}; never more than "
        f"{MAX_WARM_CONCURRENCY}, nor than the file has lines)",
    )
    warm.add_argument("--json", action="store_true", help="print the report as JSON")


def _flush(commands: _Commands, common: argparse.ArgumentParser) -> None:
    flush = commands.add_parser(
        "flush",
        help="invalidate cached answers fleet-wide (a generation bump, not a scan)",
        parents=[common],
    )
    _cache_options(flush)
    flush.add_argument(
        "--model",
        default=None,
        help="only this model's answers, in one namespace: --namespace's, else the default ''",
    )
    _scope_options(
        flush,
        "namespace",
        "whose entries: every entry of the namespace, whatever its scope (default), or "
        "only the API key's (credential)",
    )


def _stats(commands: _Commands, common: argparse.ArgumentParser) -> None:
    stats = commands.add_parser(
        "stats",
        help="the whole fleet's calls, hit rate and dollars, per model, from Redis "
        "(on Memcached: the servers' counters)",
        parents=[common],
    )
    _cache_options(stats)
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _bench(commands: _Commands, common: argparse.ArgumentParser) -> None:
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


def _serve(commands: _Commands, common: argparse.ArgumentParser) -> None:
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
    _cache_options(serve)
    _hmac_option(serve)
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=port_number, default=8400, help="the port (8400)")
    serve.add_argument(
        "--auto-cache-control",
        action="store_true",
        help="mark long static prefixes for providers that cache only up to a breakpoint",
    )
    serve.add_argument(
        "--fake",
        action="store_true",
        help=(
            "proxy to a fake gateway started in-process: no key, no network (with "
            "--workers, one each: its URL enters the keys, so they share no entry)"
        ),
    )
    _serve_key_options(serve)
    _serve_process_options(serve)


def _serve_key_options(serve: argparse.ArgumentParser) -> None:
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
        help=(
            "with --upstream-key-env: the keys callers must present, one a line; callers "
            "presenting different keys never share a cache entry or an upstream request"
        ),
    )
    serve.add_argument(
        "--share-across-client-keys",
        action="store_true",
        help=(
            "let callers presenting different client keys share cache entries and upstream "
            "requests (one's identical prompt is another's hit)"
        ),
    )


def _serve_process_options(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes serving the port (SO_REUSEPORT); share a tier with --redis (1)",
    )
    serve.add_argument(
        "--metrics",
        action="store_true",
        help=(
            "serve GET /metrics for Prometheus (needs the prometheus extra); with "
            "--client-keys-file, only to a caller presenting a client key"
        ),
    )
    serve.add_argument(
        "--shutdown-grace",
        type=non_negative_float,
        default=30.0,
        help="seconds in-flight requests get to finish on SIGTERM/SIGINT (30)",
    )
    serve.add_argument(
        "--body-timeout",
        type=positive_float,
        default=60.0,  # ServeConfig's (not imported: the parser loads no aiohttp)
        metavar="SECONDS",
        help=(
            "seconds a request's body may take to arrive whole (a slower one is answered "
            "408 and its connection closed), and a connection may wait for, or take "
            "sending, a request's headers (60)"
        ),
    )


def _hmac_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--hmac-key-env",
        default=None,
        metavar="NAME",
        help="the environment variable holding the cache's hmac_key, as the service sets it",
    )


def _cache_options(command: argparse.ArgumentParser) -> None:
    """``--redis`` or ``--memcached``, ``--prefix`` and ``--namespace``."""
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
