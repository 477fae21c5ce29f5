"""A cache-miss storm across OS processes, for tests and benchmarks.

Each worker is a process with its own Client (memory tier over a shared Redis tier, or
Memcached for a ``memcached://`` URL) that fires ``callers`` identical requests at once
when told to. ``run_storm`` starts the workers, waits until every one is ready, releases
them together and collects what each saw. Run a worker alone with
``python -m limpet.testing.storm --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from limpet.cache.base import CacheBackend

STORM_MODEL = "anthropic/claude-sonnet-4.6"
STORM_MESSAGES = [{"role": "user", "content": "Explain single-flight in one paragraph."}]


@dataclass(slots=True)
class WorkerReport:
    """What one worker process saw.

    Attributes:
        name: the worker's name (sent upstream as ``X-Title``).
        statuses: how many calls ended in each cache status.
        finished_at: wall-clock times (unix seconds) each call returned, by status.
        errors: error type names of the calls that raised.
        takeovers: times a follower in this process took over a flight
            (``RedisFlight.takeovers``).
        lease_checks: times a follower here asked who holds a lease.
    """

    name: str
    statuses: dict[str, int] = field(default_factory=dict)
    finished_at: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    takeovers: int = 0
    lease_checks: int = 0


class StormWorker:
    """A running worker process; ``release()`` fires its calls, ``report()`` collects."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process

    async def wait_ready(self) -> None:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"storm worker {self.name} did not start: {line!r}")

    def release(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")

    async def report(self) -> WorkerReport:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        await self.process.wait()
        if not line:
            raise RuntimeError(f"storm worker {self.name} exited with {self.process.returncode}")
        fields = orjson.loads(line)
        return WorkerReport(
            name=self.name,
            statuses=fields["statuses"],
            finished_at=fields["finished_at"],
            errors=fields["errors"],
            takeovers=fields.get("takeovers", 0),
            lease_checks=fields.get("lease_checks", 0),
        )


async def start_workers(
    count: int,
    *,
    base_url: str,
    redis_url: str,
    callers: int,
    prefix: str,
    coalesce: bool = True,
    lease: float | None = None,
    poll: float | None = None,
) -> list[StormWorker]:
    """Start ``count`` workers and wait until each is ready to fire."""
    workers = []
    for index in range(count):
        name = f"worker-{index}"
        args = [
            "-m",
            "limpet.testing.storm",
            "--name",
            name,
            "--base-url",
            base_url,
            "--redis",
            redis_url,
            "--callers",
            str(callers),
            "--prefix",
            prefix,
        ]
        if not coalesce:
            args.append("--no-coalesce")
        if lease is not None:
            args += ["--lease", str(lease)]
        if poll is not None:
            args += ["--poll", str(poll)]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        workers.append(StormWorker(name, process))
    await asyncio.gather(*(w.wait_ready() for w in workers))
    return workers


async def run_storm(count: int, **options: Any) -> list[WorkerReport]:
    """Start ``count`` workers, release them together, and return their reports."""
    workers = await start_workers(count, **options)
    for worker in workers:
        worker.release()
    return list(await asyncio.gather(*(w.report() for w in workers)))


async def _work(args: argparse.Namespace) -> dict[str, Any]:
    from limpet import Client, Endpoint, FlightConfig, MemoryCache, TieredCache

    cache = TieredCache(MemoryCache(), _shared_tier(args.redis, args.prefix))
    endpoint = Endpoint("a", args.base_url, api_key="sk-storm")
    report: dict[str, Any] = {"statuses": {}, "finished_at": {}, "errors": []}
    async with Client(
        endpoints=[endpoint],
        cache=cache,
        coalesce=args.coalesce,
        flight=FlightConfig(lease=args.lease, poll=args.poll),
        app_title=args.name,
    ) as client:
        loop = asyncio.get_running_loop()
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)

        async def call() -> None:
            try:
                completion = await client.complete(
                    model=STORM_MODEL, messages=STORM_MESSAGES, temperature=0
                )
            except Exception as exc:
                report["errors"].append(type(exc).__name__)
                return
            status = completion.cache.value
            report["statuses"][status] = report["statuses"].get(status, 0) + 1
            report["finished_at"].setdefault(status, []).append(time.time())

        await asyncio.gather(*(call() for _ in range(args.callers)))
        shared = client._chat.shared_flight
        if shared is not None:
            report["takeovers"] = shared.takeovers
            report["lease_checks"] = shared.lease_checks
    return report


def _shared_tier(url: str, prefix: str) -> CacheBackend:
    """A ``MemcachedCache`` for a ``memcached://`` URL, else a ``RedisCache``."""
    if url.startswith("memcached://"):
        from limpet.cache.memcached.backend import MemcachedCache

        return MemcachedCache.from_url(url, prefix=prefix)
    from limpet.cache.redis.backend import RedisCache

    return RedisCache.from_url(url, prefix=prefix)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m limpet.testing.storm", description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--redis", required=True, help="a redis:// or memcached:// URL")
    parser.add_argument("--callers", type=int, required=True)
    parser.add_argument("--prefix", default="limpet:")
    parser.add_argument("--no-coalesce", dest="coalesce", action="store_false")
    parser.add_argument("--lease", type=float, default=10.0)
    parser.add_argument("--poll", type=float, default=0.25)
    report = asyncio.run(_work(parser.parse_args(argv)))
    sys.stdout.write(orjson.dumps(report).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
