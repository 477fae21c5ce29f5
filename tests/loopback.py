"""An aiohttp app served on a free loopback port: the one way the tests run a server of
their own (a scripted upstream, the proxy in-process)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web


@contextlib.asynccontextmanager
async def served(app: web.Application, **runner_options: Any) -> AsyncIterator[str]:
    """``app`` on ``127.0.0.1`` at a free port until the block ends (its runner's
    start-up and clean-up hooks run, as ``limpet serve``'s do); yields
    ``http://127.0.0.1:PORT``. ``runner_options`` go to ``web.AppRunner``."""
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
