"""A memcached for a benchmark: ``$LIMPET_MEMCACHED_URL``, or a private one started for
the run (and stopped after it) when that is unset."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

_START_DEADLINE = 10.0


@contextlib.contextmanager
def memcached_url(url: str | None) -> Iterator[str]:
    """``url``, or ``$LIMPET_MEMCACHED_URL``, or a private memcached on loopback."""
    url = url or os.environ.get("LIMPET_MEMCACHED_URL")
    if url:
        yield url
        return
    binary = shutil.which("memcached")
    if binary is None:
        raise SystemExit("no memcached: set LIMPET_MEMCACHED_URL or install memcached")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    process = subprocess.Popen(
        [binary, "-p", str(port), "-l", "127.0.0.1", "-U", "0", "-m", "256", *user],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until_it_answers(port)
        yield f"memcached://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


def _wait_until_it_answers(port: int) -> None:
    deadline = time.monotonic() + _START_DEADLINE
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"version\r\n")
                if sock.recv(64).startswith(b"VERSION"):
                    return
        except OSError:
            pass
        time.sleep(0.01)  # waiting for a server to start, not timing anything
    raise SystemExit(f"memcached on port {port} did not start")
