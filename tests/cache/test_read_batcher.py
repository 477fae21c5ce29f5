"""ReadBatcher: a burst of reads of one key while it is read alone shares that read; a
cancelled lone reader leaves those who joined it to the next batch, never hanging."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from limpet.cache.reads import ReadBatcher
from limpet.errors import CacheUnavailableError


class Store:
    """Fetches from a dict, each lone read held until the test releases it."""

    def __init__(self, values: dict[str, bytes]) -> None:
        self.values = values
        self.ones: list[str] = []
        self.manys: list[list[str]] = []
        self.gate = asyncio.Event()
        self.asked = asyncio.Event()
        self.fail: CacheUnavailableError | None = None

    async def fetch_one(self, key: str) -> object:
        self.ones.append(key)
        self.asked.set()
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return self.values.get(key)

    async def fetch_many(self, keys: Sequence[str]) -> Sequence[object]:
        self.manys.append(list(keys))
        return [self.values.get(key) for key in keys]


async def started(task: asyncio.Task[object], store: Store) -> None:
    await store.asked.wait()  # the lone read was sent, and is held
    assert not task.done()


async def test_reads_of_the_key_read_alone_share_its_one_round_trip() -> None:
    store = Store({"k": b"v"})
    reads = ReadBatcher(store.fetch_one, store.fetch_many, kind="Redis")
    first = asyncio.ensure_future(reads.get("k"))
    await started(first, store)
    others = [asyncio.ensure_future(reads.get("k")) for _ in range(20)]
    store.gate.set()
    assert await asyncio.gather(first, *others) == [b"v"] * 21
    assert store.ones == ["k"] and store.manys == [] and reads.batches == 0


async def test_reads_of_other_keys_meanwhile_still_go_in_one_batch() -> None:
    store = Store({"k": b"v", "j": b"w"})
    reads = ReadBatcher(store.fetch_one, store.fetch_many, kind="Redis")
    first = asyncio.ensure_future(reads.get("k"))
    await started(first, store)
    others = [asyncio.ensure_future(reads.get(key)) for key in "jjk"]
    store.gate.set()
    assert await asyncio.gather(first, *others) == [b"v", b"w", b"w", b"v"]
    assert store.manys == [["j"]]


async def test_a_failed_lone_read_fails_those_that_joined_it_alike() -> None:
    store = Store({"k": b"v"})
    store.fail = CacheUnavailableError("down")
    reads = ReadBatcher(store.fetch_one, store.fetch_many, kind="Redis")
    first = asyncio.ensure_future(reads.get("k"))
    await started(first, store)
    joined = asyncio.ensure_future(reads.get("k"))
    store.gate.set()
    for task in (first, joined):
        with pytest.raises(CacheUnavailableError, match="down"):
            await task


async def test_a_cancelled_lone_reader_leaves_those_that_joined_it_to_a_batch() -> None:
    store = Store({"k": b"v"})
    reads = ReadBatcher(store.fetch_one, store.fetch_many, kind="Redis")
    first = asyncio.ensure_future(reads.get("k"))
    await started(first, store)
    joined = [asyncio.ensure_future(reads.get("k")) for _ in range(3)]
    await asyncio.sleep(0)
    first.cancel()
    assert await asyncio.gather(*joined) == [b"v"] * 3
    assert first.cancelled()
    assert store.manys == [["k"]]
