"""How long keying a large request blocks the event loop: a 10 MB request (one long
message) and a request of 10,000 messages, keyed by ``request_key_async`` (in pieces,
yielding between them) beside ``request_key(canonical_request(...))`` in one go, in the
same run. Both give the same key.

Target: no single block of the loop longer than 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from benchmarks._common import Figure, emit
from benchmarks._loop import LoopMonitor
from limpet.pipeline.keys import canonical_request, request_key, request_key_async

TARGET_MS = 10.0
TEXT = "A limpet's radula is lined with goethite teeth, the strongest known material. "


def one_long_message(size: int) -> dict[str, Any]:
    content = (TEXT * (size // len(TEXT) + 1))[:size]
    return {"model": "m", "messages": [{"role": "user", "content": content}], "temperature": 0}


def many_messages(count: int) -> dict[str, Any]:
    messages = [
        {"role": "user" if i % 2 else "assistant", "content": f"turn {i}: {TEXT}"}
        for i in range(count)
    ]
    return {"model": "m", "messages": messages, "temperature": 0}


async def measure(body: dict[str, Any]) -> tuple[float, float]:
    """The longest loop block keying ``body`` in pieces, and keying it in one go (ms)."""
    started = time.thread_time()
    whole = request_key(canonical_request(body), scope="s")
    at_once_ms = (time.thread_time() - started) * 1e3
    async with LoopMonitor() as monitor:
        pieces = await request_key_async(body, scope="s")
    assert pieces == whole
    return monitor.longest_ms, at_once_ms


async def main(size: int, count: int) -> None:
    cases = {
        f"a {size / 1e6:g} MB request": one_long_message(size),
        f"{count:,} messages": many_messages(count),
    }
    figures = []
    for name, body in cases.items():
        await measure(body)  # warm up
        longest, at_once = await measure(body)
        figures.append(
            Figure(
                figure=f"longest loop block keying {name}",
                unit="ms",
                limpet=longest,
                baseline=at_once,
                baseline_name="canonical JSON + SHA-256 in one go",
                target=f"<= {TARGET_MS:g} ms",
                met=longest <= TARGET_MS,
            )
        )
    emit("large_request_keys", figures, request_bytes=size, messages=count)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small, fast run")
    parser.add_argument("--bytes", type=int, default=10_000_000)
    parser.add_argument("--messages", type=int, default=10_000)
    args = parser.parse_args()
    asyncio.run(main(args.bytes, args.messages))
