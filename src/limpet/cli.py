"""The ``limpet`` command: ``limpet demo`` (more subcommands come with their features)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import orjson

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``limpet`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
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
    return parser


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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text}")
    return value
