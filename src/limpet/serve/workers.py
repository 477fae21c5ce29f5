"""``limpet serve --workers N``: N processes on one port (``SO_REUSEPORT``), each with its
own Client, sharing the Redis or Memcached tier, under one supervising process."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType
from types import FrameType

from limpet.serve.app import run
from limpet.serve.config import ServeConfig

__all__ = ["run_workers"]

# Seconds between checks that a worker that is not ready yet is still alive.
_READY_POLL = 0.1


def run_workers(
    config: ServeConfig, *, host: str, port: int, shutdown_grace: float, workers: int
) -> int:
    """Start ``workers`` processes serving ``config`` on ``host:port`` and wait for them.

    SIGTERM or SIGINT to this process reaches each worker once, as SIGTERM: each stops
    accepting, finishes its requests and closes its Client. The workers run in process
    groups of their own, so a terminal's Ctrl-C reaches them only that way, never twice.

    Returns:
        0 when every worker exited cleanly, else 1.
    """
    context = multiprocessing.get_context("spawn")  # no event loop or socket inherited
    ready = [context.Event() for _ in range(workers)]
    processes = [
        context.Process(
            target=_worker,
            args=(config, host, port, shutdown_grace, ready[n]),
            name=f"limpet-serve-{n + 1}",
        )
        for n in range(workers)
    ]
    stopping = False
    signalled: set[int] = set()

    def terminate() -> None:
        for process in processes:
            pid = process.pid
            if pid is not None and pid not in signalled and process.exitcode is None:
                signalled.add(pid)  # once: a second signal would cut its clean-up short
                os.kill(pid, signal.SIGTERM)

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        terminate()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for process in processes:
            process.start()
        if stopping:
            terminate()  # a signal that came while they were starting
        if _all_ready(ready, processes):
            where = f"http://{host}:{port}"
            print(f"limpet serve: {workers} workers listening on {where}", file=sys.stderr)
            sys.stderr.flush()
        for process in processes:
            process.join()
            if not _clean_exit(process, signalled):
                stop(signal.SIGTERM, None)  # one worker down: take the others down too
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if all(_clean_exit(process, signalled) for process in processes) else 1


def _all_ready(ready: Sequence[EventType], processes: Sequence[BaseProcess]) -> bool:
    """Wait until every worker listens; False as soon as one has exited instead."""
    for event, process in zip(ready, processes, strict=True):
        while not event.wait(_READY_POLL):
            if process.exitcode is not None:
                return False
    return True


def _clean_exit(process: BaseProcess, signalled: set[int]) -> bool:
    """Exit status 0, or killed by the SIGTERM we sent before it had set up its handler
    (still starting, or done): it had no request in flight to lose."""
    if process.exitcode == 0:
        return True
    return process.exitcode == -signal.SIGTERM and process.pid in signalled


def _worker(
    config: ServeConfig, host: str, port: int, shutdown_grace: float, ready: EventType
) -> None:
    os.setpgrp()
    run(
        config,
        host=host,
        port=port,
        shutdown_grace=shutdown_grace,
        reuse_port=True,
        on_ready=ready.set,
    )
