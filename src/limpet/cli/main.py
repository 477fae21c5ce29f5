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
credential`` flushes only the entries of the key in ``--api-key-env`` (a Client's that
sends it, and those of calls sending it of their own, as ``serve``'s callers do). ``stats`` counts
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
from pathlib import Path

import orjson

from limpet.cli.arguments import CommandError
from limpet.cli.flush import run_flush
from limpet.cli.parser import build_parser
from limpet.cli.serve import run_serve
from limpet.cli.stats import run_stats
from limpet.cli.warm import run_warm
from limpet.errors import ConfigurationError, InvalidRequestError, LimpetError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``limpet`` console script.

    Every error is one line on stderr, ``limpet COMMAND: what went wrong``, with exit
    status 2 for a usage error and 1 for a failure; ``--verbose`` adds the traceback.
    """
    parser = build_parser()
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
        return run_serve(args)
    if args.command == "warm":
        return asyncio.run(run_warm(args))
    if args.command == "flush":
        return asyncio.run(run_flush(args))
    return asyncio.run(run_stats(args))


def _explain(exc: Exception) -> tuple[int, str]:
    """The exit status and the one line a failed command prints."""
    if isinstance(exc, CommandError):
        return exc.status, str(exc)
    if isinstance(exc, ConfigurationError | InvalidRequestError):
        return 2, str(exc)
    if isinstance(exc, ImportError | LimpetError):
        return 1, str(exc)  # a missing extra's ImportError already says what to install
    return 1, f"{type(exc).__name__}: {exc} (--verbose shows the traceback)"


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


def _bench(args: argparse.Namespace) -> int:
    if not Path("benchmarks", "run.py").is_file():
        print("limpet bench: run it from a limpet source checkout", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "benchmarks.run", *args.names]
    command += ["--quick"] * args.quick + ["--update-readme"] * args.update_readme
    return subprocess.call(command)
