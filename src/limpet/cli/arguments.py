"""What every ``limpet`` command reads from its arguments and the environment (the API
key, a file, the shared cache), and ``CommandError``, the failure a command reports."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from limpet.cache.memcached.backend import MemcachedCache
    from limpet.cache.redis.backend import RedisCache

__all__ = [
    "API_KEY_ENV",
    "CommandError",
    "api_key",
    "hmac_key",
    "memcached_cache",
    "non_negative_float",
    "open_lines",
    "port_number",
    "positive_float",
    "positive_int",
    "redis_cache",
    "shared_cache",
]

#: Where the API key is read from by default (as ``Client`` does).
API_KEY_ENV = "OPENROUTER_API_KEY"


class CommandError(Exception):
    """A failure a command reports as one line on stderr, with its exit status (1: it
    failed; 2: it was used wrongly)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def api_key(args: argparse.Namespace, *, required: bool) -> str | None:
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


def open_lines(path: Path) -> BinaryIO:
    """``path`` opened for reading by lines.

    Raises:
        CommandError: it cannot be read (a usage error).
    """
    try:
        return path.open("rb")
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}", status=2) from exc


def shared_cache(args: argparse.Namespace) -> RedisCache | MemcachedCache:
    """The shared cache the command names: Memcached when given, else Redis."""
    return memcached_cache(args) if args.memcached else redis_cache(args)


def redis_cache(args: argparse.Namespace) -> RedisCache:
    """The ``--redis`` cache, with ``--prefix`` when given."""
    # Imported here: the redis extra is needed for these commands only, not for the demo
    # (without it: an ImportError that says what to install).
    from limpet import RedisCache

    if args.prefix is None:
        return RedisCache.from_url(args.redis)
    return RedisCache.from_url(args.redis, prefix=args.prefix)


def memcached_cache(args: argparse.Namespace) -> MemcachedCache:
    """The ``--memcached`` cache, with ``--prefix`` when given."""
    # Imported here: the memcached extra is needed for these commands only.
    from limpet import MemcachedCache

    if args.prefix is None:
        return MemcachedCache.from_url(args.memcached)
    return MemcachedCache.from_url(args.memcached, prefix=args.prefix)


def positive_int(text: str) -> int:
    """An argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a finite float >= 0 (seconds: ``nan`` or ``inf`` would wait
    forever)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite float > 0 (a deadline: 0 would allow no time at all)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port, 1 to 65535, got {text}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port, 1 to 65535, got {text}")
    return value


def hmac_key(args: argparse.Namespace) -> bytes | None:
    """The HMAC key named by ``--hmac-key-env``, as a service configures it (never on
    the command line: it would show in ``ps``).

    Raises:
        CommandError: the variable is not set.
    """
    if args.hmac_key_env is None:
        return None
    key = os.environ.get(args.hmac_key_env)
    if not key:
        raise CommandError(f"${args.hmac_key_env} (--hmac-key-env) is not set", status=2)
    return key.encode()
