"""``limpet flush``: invalidate cached answers fleet-wide by bumping a generation (one
write, never a scan of the keys)."""

from __future__ import annotations

import argparse
import sys

from limpet.cache.generations import generation_name
from limpet.cli.arguments import API_KEY_ENV, api_key, shared_cache
from limpet.errors import CacheUnavailableError

__all__ = ["run_flush"]


async def run_flush(args: argparse.Namespace) -> int:
    """Bump the generation ``args`` name; exit status 1 when the cache is down."""
    from limpet.pipeline.credentials import key_scope

    credential = ""
    if args.cache_scope == "credential":
        credential = key_scope(api_key(args, required=True))
    name = generation_name(args.namespace, args.model, credential=credential)
    async with shared_cache(args) as cache:
        try:
            generation = await cache.bump_generation(name)
        except CacheUnavailableError as exc:
            print(f"limpet flush: {exc}", file=sys.stderr)
            return 1
    what = f"model {args.model!r}" if args.model else "every model"
    where = f"namespace {args.namespace!r}" if args.namespace is not None else "every namespace"
    hint = ""
    if args.model and args.namespace is None:
        # No generation spans every namespace's model: a model's is one namespace's.
        where, hint = "the default namespace ''", "; pass --namespace for another"
    if credential:
        where = f"namespace {args.namespace or ''!r}, for ${args.api_key_env or API_KEY_ENV}'s key"
    print(f"flushed {what} in {where} (generation {generation}){hint}")
    return 0
