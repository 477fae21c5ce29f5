"""Real redis-server processes and a misbehaving TCP proxy, for fault tests.

``RedisServer`` runs a private ``redis-server`` on a free loopback port, with nothing
kept on disk, which a test may kill, stop and restart on the same port. ``RedisProxy``
forwards a port to a Redis and can delay or stall the bytes, to make Redis slow without
touching the server; it counts the connections it accepts, to prove that an open
circuit breaker keeps a client off the network.

``state`` reads a ``RedisCache``'s breaker state; ``filled`` fills a server under
``noeviction`` until it refuses writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from limpet.cache.redis.backend import RedisCache

__all__ = [
    "REDIS_SERVER_BINARY",
    "RedisProxy",
    "RedisServer",
    "eventually",
    "free_port",
    "named",
    "redis_answers",
    "state",
]

#: The redis-server executable, or None when none is installed.
REDIS_SERVER_BINARY = shutil.which("redis-server")

_START_DEADLINE = 10.0
_POLL_INTERVAL = 0.01


def state(cache: RedisCache) -> str:
    # Through a function: mypy would otherwise narrow the property after one assert.
    return cache.breaker_state


async def eventually(
    condition: Callable[[], Awaitable[bool]], *, deadline: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until it holds; fail after ``deadline`` seconds.

    For things only the clock can bring about (a Redis TTL running out), where there is
    no event to wait on.
    """
    give_up = time.monotonic() + deadline
    while not await condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"{what} did not hold within {deadline} s")
        await asyncio.sleep(_POLL_INTERVAL)


@contextlib.asynccontextmanager
async def filled(url: str) -> AsyncIterator[None]:
    """The Redis at ``url`` (under ``maxmemory-policy noeviction``) filled until it
    refuses writes (big values first, then small ones for what they left), for the
    block; the filling connection stays open until it ends, as its buffers hold memory
    that closing it would free."""
    import redis.asyncio
    import redis.exceptions

    filler = redis.asyncio.Redis.from_url(url)
    try:
        for size in (8192, 64):
            for i in range(20_000):
                try:
                    await filler.set(f"filler:{size}:{i}", b"x" * size)
                except redis.exceptions.OutOfMemoryError:
                    break
            else:
                raise AssertionError("Redis never filled up")
        yield
    finally:
        await filler.aclose()


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis on ``host:port`` answers PING (a blocking probe, for fixtures)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A private ``redis-server`` on a free loopback port, with no persistence.

    Args:
        extra_args: more command-line options, e.g. ``["--maxmemory", "1mb"]``.
        binary: the redis-server executable.

    Example (illustrative: it starts a process)::

        server = RedisServer().start()
        server.kill(); server.restart()
        server.stop()
    """

    def __init__(
        self, extra_args: Sequence[str] = (), *, binary: str | None = REDIS_SERVER_BINARY
    ) -> None:
        if binary is None:
            raise RuntimeError("redis-server is not installed (not on PATH)")
        self.binary = binary
        self.extra_args = list(extra_args)
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, running={self.running})"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        if self.running:
            return self
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--loglevel",
            "warning",
            *self.extra_args,
        ]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._process = process
        deadline = time.monotonic() + _START_DEADLINE
        while not redis_answers("127.0.0.1", self.port, timeout=0.2):
            if process.poll() is not None:
                _, err = process.communicate()
                self._process = None
                raise RuntimeError(
                    f"redis-server on port {self.port} exited with {process.returncode}: "
                    f"{err.decode(errors='replace').strip()}"
                )
            if time.monotonic() > deadline:
                self._reap(kill=True)
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
            # Polling for the server's readiness, not synchronising with code under test.
            time.sleep(_POLL_INTERVAL)
        return self

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as in a crash."""
        self._reap(kill=True)

    def stop(self) -> None:
        """SIGTERM and wait: a clean shutdown."""
        self._reap(kill=False)

    def restart(self) -> RedisServer:
        """Stop (if running) and start again on the same port, empty."""
        self.stop()
        return self.start()

    def _reap(self, *, kill: bool) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            if kill:
                process.kill()
            else:
                process.terminate()
        try:
            process.communicate(timeout=_START_DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


class RedisProxy:
    """A loopback TCP proxy in front of a Redis port that can be made slow or silent.

    Use it as ``async with RedisProxy(port) as proxy:`` and point a client at
    ``proxy.url``. ``delay`` holds every chunk for that many seconds before forwarding it
    (both ways); ``stall()`` stops forwarding until ``resume()``. A target that refuses
    the connection makes the proxy close the client's connection at once.
    ``stall_replies()`` forwards commands but holds Redis's replies on the connections
    open at that moment (later ones flow): a command then runs while its caller is still
    waiting, and ``reply_held`` is set once a reply is held; ``drop()`` then closes those
    connections, and the reply is lost.

    Attributes:
        accepted: connections accepted so far.
        delay: seconds each chunk is held before it is forwarded.
    """

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self._target_url = f"redis://{target_host}:{target_port}/0"
        self.accepted = 0
        self.delay = 0.0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._replying = asyncio.Event()
        self._replying.set()
        self._held_upto = 0  # replies on connections numbered up to this are held
        #: Set when a reply is being held by ``stall_replies()``.
        self.reply_held = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @classmethod
    def for_url(cls, url: str) -> RedisProxy:
        """A proxy to the Redis at ``url``; its ``url`` keeps the credentials and db."""
        parsed = urlsplit(url)
        proxy = cls(parsed.port or 6379, target_host=parsed.hostname or "127.0.0.1")
        proxy._target_url = url
        return proxy

    @property
    def url(self) -> str:
        """The target's URL, pointing at the proxy instead."""
        parsed = urlsplit(self._target_url)
        credentials = parsed.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        return urlunsplit(parsed._replace(netloc=netloc))

    async def __aenter__(self) -> RedisProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def stall(self) -> None:
        """Stop forwarding bytes (they are held, not lost) until ``resume()``."""
        self._flowing.clear()

    def stall_replies(self) -> None:
        """Hold Redis's replies on the connections open now (commands still go through)
        until ``resume()``."""
        self._held_upto = self.accepted
        self._replying.clear()

    def resume(self) -> None:
        self._flowing.set()
        self._held_upto = 0
        self._replying.set()

    def drop(self) -> None:
        """Close every connection open now, both ways, forwarding nothing more: a command
        whose reply is held ran in Redis, and its caller never hears of it (later
        connections are served as usual)."""
        for writer in list(self._writers):
            writer.close()

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in list(self._writers):
            writer.close()
        for writer in list(self._writers):
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback that starts a task of ours: cancelling asyncio's own handler
        # task on close would be logged as an error.
        self.accepted += 1
        self._writers.add(writer)
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer, self.accepted))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int
    ) -> None:
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                return
            self._writers.add(up_writer)
            await asyncio.gather(
                self._pump(reader, up_writer), self._pump(up_reader, writer, number)
            )
        finally:
            writer.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, replies_of: int = 0
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if self.delay:
                    # Simulated latency: the thing being tested, not a synchronisation.
                    await asyncio.sleep(self.delay)
                await self._flowing.wait()
                if 0 < replies_of <= self._held_upto and not self._replying.is_set():
                    self.reply_held.set()
                    await self._replying.wait()
                writer.write(chunk)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


def named(url: str, name: str) -> str:
    """``url`` with a ``client_name`` every connection of its pool announces (CLIENT
    SETNAME; on a cluster, every connection to every node), so that only this test's
    connections are ever killed."""
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), ("client_name", name)]
    return urlunsplit(parts._replace(query=urlencode(query)))
