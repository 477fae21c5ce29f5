"""``limpet warm``: fill the shared cache from a JSONL file of ``complete()`` (or
``embed()``) arguments, through a Client, and report what was stored."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import orjson

from limpet.cli.arguments import CommandError, api_key, hmac_key, open_lines, shared_cache
from limpet.errors import CacheUnavailableError, LimpetError
from limpet.models import Completion, Embeddings
from limpet.observe.warm import WarmReport, is_embedding, warm, writes_lost

if TYPE_CHECKING:
    from limpet import Client

__all__ = ["run_warm"]


async def run_warm(args: argparse.Namespace) -> int:
    """Warm the cache ``args`` name; exit status 1 when a line failed.

    Raises:
        CommandError: the file cannot be read, the cache is down, or answers were not stored.
    """
    from limpet import Client, MemoryCache, TieredCache

    lines = open_lines(args.file)  # before anything is paid for
    shared = shared_cache(args)
    cache = TieredCache(MemoryCache(), shared, hmac_key=hmac_key(args))
    where = (
        f"{shared.server} (prefix {shared.prefix!r}, namespace {args.namespace or ''!r}, "
        f"{args.cache_scope} scope)"
    )
    errors: list[str] = []
    lost = writes_lost(cache)
    async with Client(
        **_upstreams(args.base_url, api_key(args, required=False)),
        cache=cache,
        namespace=args.namespace or "",
        cache_scope=args.cache_scope,
    ) as client:
        try:
            await shared.get("warm-probe")  # a cache that is down would waste every call
        except CacheUnavailableError as exc:
            raise CommandError(f"nothing warmed: {exc}") from exc
        with lines:
            report = await _warm_lines(client, lines, args.concurrency, errors)
        sys.stderr.write("\n")
    # The Client has closed: every write has landed or failed by now. An answer too large
    # to store was served (so counted warmed) but never written: it is unstored too.
    report.settle(writes_lost(cache) - lost)
    _print_report(report, errors, where, as_json=args.json)
    if report.unstored:
        too_large = cache.stats.oversized
        too_large_for_server = getattr(shared, "oversized_writes", 0)  # Memcached's own
        refused = cache.stats.unwritten + shared.failed_writes + shared.dropped_writes
        causes = []
        if too_large:
            causes.append(f"{too_large} larger than max_entry_bytes ({cache.max_entry_bytes})")
        if too_large_for_server:
            size = getattr(shared, "max_value_size", "?")
            causes.append(f"{too_large_for_server} larger than max_value_size ({size})")
        if refused:
            causes.append(f"{refused} writes refused, failed or dropped")
        answered = report.warmed + report.unstored
        raise CommandError(
            f"{report.unstored} of {answered} answers could not be stored in "
            f"{shared.server}: " + ", ".join(causes)
        )
    return 1 if report.failed else 0


async def _warm_lines(
    client: Client, lines: Iterable[bytes], concurrency: int, errors: list[str]
) -> WarmReport:
    """Send every non-blank line's call; a failed line's error goes to ``errors``."""

    async def complete_line(line: int, text: bytes) -> Completion | Embeddings:
        try:
            request = _request_of(text)
            if is_embedding(request):
                return await client.embed(**request)
            return await client.complete(**request)
        except (LimpetError, TypeError) as exc:  # what warm() counts as a failed line
            errors.append(f"line {line}: {exc}")
            raise

    requests = (
        {"line": number, "text": text} for number, text in enumerate(lines, start=1) if text.strip()
    )
    return await warm(complete_line, requests, concurrency=concurrency, progress=_show)


def _show(report: WarmReport) -> None:
    sys.stderr.write(
        f"\rwarming: {report.done} done, {report.warmed} warmed, "
        f"{report.skipped} skipped, {report.failed} failed"
    )
    sys.stderr.flush()


def _print_report(report: WarmReport, errors: list[str], where: str, *, as_json: bool) -> None:
    if as_json:
        out = {**asdict(report), "errors": errors, "where": where}
        sys.stdout.write(orjson.dumps(out).decode() + "\n")
        return
    print(
        f"warmed {report.warmed} into {where}; skipped {report.skipped} "
        f"(cached), uncacheable {report.uncacheable}, failed {report.failed}"
    )
    for error in errors[:20]:
        print(f"  {error}")


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


def _upstreams(urls: list[str] | None, key: str | None) -> dict[str, Any]:
    """The Client's upstream options for ``--base-url`` given ``urls`` (repeated: one
    endpoint each, as the service has them: their URLs enter its keys)."""
    if not urls or len(urls) == 1:
        return {"base_url": urls[0] if urls else None, "api_key": key}
    from limpet import Endpoint

    return {"endpoints": [Endpoint(f"e{n}", url, api_key=key) for n, url in enumerate(urls)]}
