"""``limpet serve``: check what the proxy is asked to do (keys from the environment,
never the command line), then run it in one process or several."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from limpet._credentials import query_credentials
from limpet.cli.arguments import CommandError, hmac_key, open_lines

__all__ = ["LOOPBACK_HOSTS", "run_serve"]

#: Where ``serve`` may lend its upstream key to any caller: only this machine reaches it.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT.

    Raises:
        CommandError: the options cannot work together, or a key is missing.
    """
    from limpet.serve import ServeConfig, run

    if not args.upstream and not args.fake:
        raise CommandError("--upstream URL (or --fake) is required", status=2)
    upstream_key, client_keys = _keys(args)
    _check_host(args.host, args.port)
    config = ServeConfig(
        upstream_key=upstream_key,
        client_keys=client_keys,
        share_across_client_keys=args.share_across_client_keys,
        upstreams=tuple(args.upstream),
        redis=args.redis,
        memcached=args.memcached,
        prefix=args.prefix,
        namespace=args.namespace or "",
        auto_cache_control=args.auto_cache_control,
        fake=args.fake,
        metrics=args.metrics,
        hmac_key=hmac_key(args),
        body_timeout=args.body_timeout,
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


def _keys(args: argparse.Namespace) -> tuple[str | None, frozenset[str]]:
    """The key the proxy sends upstream itself (or None: each caller's own), and the keys
    its callers must present; an upstream key is lent to anyone only on loopback."""
    upstream_key = None
    if args.upstream_key_env is not None:
        upstream_key = os.environ.get(args.upstream_key_env)
        if not upstream_key:
            raise CommandError(f"${args.upstream_key_env} is not set", status=2)
    client_keys = frozenset[str]()
    if args.share_across_client_keys and args.client_keys_file is None:
        raise CommandError("--share-across-client-keys needs --client-keys-file", status=2)
    if args.client_keys_file is not None:
        if upstream_key is None:
            raise CommandError("--client-keys-file needs --upstream-key-env", status=2)
        client_keys = _client_keys(args.client_keys_file)
    elif args.host not in LOOPBACK_HOSTS:
        # A key in an upstream's URL (``?key=``) goes upstream with every call, as one
        # from --upstream-key-env does: lent alike.
        lent = "--upstream-key-env" if upstream_key is not None else None
        if lent is None and any(query_credentials(url) for url in args.upstream or ()):
            lent = "a key in an --upstream URL"
        if lent is not None:
            raise CommandError(
                f"{lent} on {args.host} would lend the key to anyone who can reach it: "
                "give --client-keys-file and --upstream-key-env, or listen on 127.0.0.1",
                status=2,
            )
    return upstream_key, client_keys


def _client_keys(path: Path) -> frozenset[str]:
    """The keys of a ``--client-keys-file``: one a line; blank lines and ``#`` comments
    are skipped."""
    keys: set[str] = set()
    with open_lines(path) as lines:
        for number, line in enumerate(lines, start=1):
            try:
                key = line.decode().strip()
            except UnicodeDecodeError as exc:
                raise CommandError(
                    f"--client-keys-file {path}: line {number} is not UTF-8 text "
                    f"({exc.reason} at byte {exc.start + 1}): expected one key a line",
                    status=2,
                ) from None
            if key and not key.startswith("#"):
                keys.add(key)
    if not keys:
        raise CommandError(f"{path} holds no client key", status=2)
    return frozenset(keys)


def _check_host(host: str, port: int) -> None:
    """Fail with a usage error, before anything starts, when ``--host`` names no address:
    not one, and no name that resolves.

    Raises:
        CommandError: it does not resolve.
    """
    if not host:
        return  # every interface
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise CommandError(
            f"--host {host}: not an address, nor a name that resolves ({reason})", status=2
        ) from None
