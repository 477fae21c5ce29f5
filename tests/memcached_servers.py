"""Real memcached processes, and a port that accepts connections and never answers.

``MemcachedServer`` runs a private ``memcached`` on a free loopback port, which a test
may kill and restart on the same port (empty, as memcached always starts).
``SilentServer`` accepts TCP connections and reads them without ever replying: a server
that hangs rather than refuses.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence

from tests.redis_servers import free_port

__all__ = ["MEMCACHED_BINARY", "MemcachedServer", "SilentServer", "memcached_answers"]

#: The memcached executable, or None when none is installed.
MEMCACHED_BINARY = shutil.which("memcached")

_START_DEADLINE = 10.0
_POLL_INTERVAL = 0.01


def memcached_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a memcached on ``host:port`` answers ``version`` (a blocking probe)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"version\r\n")
            return sock.recv(64).startswith(b"VERSION")
    except OSError:
        return False


class MemcachedServer:
    """A private ``memcached`` on a free loopback port.

    Args:
        extra_args: more options, e.g. ``["-m", "2"]`` (megabytes of memory) or
            ``["-I", "2m"]`` (item size limit).
        binary: the memcached executable.
    """

    def __init__(
        self, extra_args: Sequence[str] = (), *, binary: str | None = MEMCACHED_BINARY
    ) -> None:
        if binary is None:
            raise RuntimeError("memcached is not installed (not on PATH)")
        self.binary = binary
        self.extra_args = list(extra_args)
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"MemcachedServer(port={self.port}, running={self.running})"

    @property
    def url(self) -> str:
        return f"memcached://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> MemcachedServer:
        """Start the server and wait until it answers."""
        if self.running:
            return self
        # memcached refuses to run as root unless told which user to become.
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        args = [self.binary, "-p", str(self.port), "-l", "127.0.0.1", "-U", "0", *user]
        process = subprocess.Popen(
            [*args, *self.extra_args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._process = process
        deadline = time.monotonic() + _START_DEADLINE
        while not memcached_answers("127.0.0.1", self.port, timeout=0.2):
            if process.poll() is not None:
                _, err = process.communicate()
                self._process = None
                raise RuntimeError(
                    f"memcached on port {self.port} exited with {process.returncode}: "
                    f"{err.decode(errors='replace').strip()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"memcached on port {self.port} did not answer")
            # Polling for the server's readiness, not synchronising with code under test.
            time.sleep(_POLL_INTERVAL)
        return self

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as in a crash."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=_START_DEADLINE)

    def restart(self) -> MemcachedServer:
        """Kill (if running) and start again on the same port, empty."""
        self.kill()
        return self.start()


class SilentServer:
    """Accepts connections on a loopback port and never answers a byte.

    Attributes:
        accepted: connections accepted so far.
    """

    def __init__(self) -> None:
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"memcached://127.0.0.1:{self.port}"

    async def __aenter__(self) -> SilentServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in self._writers:
            writer.close()
        if server is not None:
            await server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Keep the connection open and unread: the client's command hangs.
        self.accepted += 1
        self._writers.append(writer)
