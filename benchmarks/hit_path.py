"""Microseconds per in-memory cache hit through ``client.complete`` for a ~2 KB request,
beside the floor measured in the same run: canonical JSON + SHA-256 + dict lookup by hand
(the issue's floor; limpet keys with SHA-256).

Targets: <= 25 us per hit and <= 2x the floor.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import orjson

from benchmarks._common import Figure, emit
from benchmarks._harness import command_line, endpoint_of, per_call_us
from limpet import CacheStatus, Client
from limpet.testing import FakeGateway

SYSTEM = "You answer questions about marine biology, briefly and accurately. " * 28


def request() -> dict[str, Any]:
    body = {
        "model": "anthropic/claude-sonnet-4.6",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "How does a limpet hold on to a rock?"},
        ],
        "temperature": 0,
        "max_tokens": 256,
    }
    assert 1800 <= len(orjson.dumps(body)) <= 2300
    return body


async def main(n: int, rounds: int) -> None:
    body = request()
    async with FakeGateway(endpoints=("a",)) as gateway:
        client = Client(endpoints=[endpoint_of(gateway)])
        async with client:
            assert (await client.complete(**body)).cache is CacheStatus.MISS
            assert (await client.complete(**body)).cache is CacheStatus.HIT

            async def hit() -> object:
                return await client.complete(**body)

            # The floor: what any cache must do for this request, written by hand.
            canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
            table = {hashlib.sha256(canonical).hexdigest(): 1}

            async def floor() -> object:
                data = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
                return table[hashlib.sha256(data).hexdigest()]

            await per_call_us(hit, n // 10, 1)  # warm up
            await per_call_us(floor, n // 10, 1)
            limpet_us = await per_call_us(hit, n, rounds)
            floor_us = await per_call_us(floor, n, rounds)
            assert gateway.total_calls == 1
    emit(
        "hit_path",
        [
            Figure(
                figure="in-memory hit, us per call (~2 KB request)",
                unit="us",
                limpet=limpet_us,
                baseline=floor_us,
                baseline_name="floor: canonical JSON + SHA-256 + dict lookup",
                target="<= 25 us and <= 2x floor",
                met=limpet_us <= 25 and limpet_us <= 2 * floor_us,
            )
        ],
        calls_per_round=n,
        rounds=rounds,
        request_bytes=len(orjson.dumps(body)),
    )


if __name__ == "__main__":
    parser = command_line(__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if args.quick:
        args.n, args.rounds = 2_000, 3
    asyncio.run(main(args.n, args.rounds))
