"""ReadBatcher: a burst of reads of one key while it is read alone shares that read; a
cancelled lone reader leaves those who joined it to the next batch, never hanging; and
whatever the burst, its timing and who gives up, every reader gets its own key's value."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from limpet.cache.reads import MAX_BATCH, MAX_BATCHES_IN_FLIGHT, ReadBatcher
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


# -- any burst, any timing -------------------------------------------------------------


class TimedStore:
    """Fetches from a dict after a scripted number of loop turns each, recording how many
    batches were out at once and what each batch asked for."""

    def __init__(self, values: dict[str, bytes], turns: list[int]) -> None:
        self.values = values
        self.turns = turns  # loop turns each fetch takes, in order (cycled)
        self.fetches = 0
        self.out = 0
        self.most_out = 0
        self.batches: list[list[str]] = []

    async def _wait(self) -> None:
        turns = self.turns[self.fetches % len(self.turns)]
        self.fetches += 1
        for _ in range(turns):
            await asyncio.sleep(0)

    async def fetch_one(self, key: str) -> bytes | None:
        await self._wait()
        return self.values.get(key)

    async def fetch_many(self, keys: Sequence[str]) -> Sequence[bytes | None]:
        self.batches.append(list(keys))
        self.out += 1
        self.most_out = max(self.most_out, self.out)
        try:
            await self._wait()
            return [self.values.get(key) for key in keys]
        finally:
            self.out -= 1


# A read: its key, the loop turns before it starts, and the turns after which its
# reader gives up (None: it waits for its value).
_reads = st.lists(
    st.tuples(
        st.integers(0, 99).map("k{}".format), st.integers(0, 3), st.none() | st.integers(0, 4)
    ),
    min_size=1,
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(reads=_reads, turns=st.lists(st.integers(0, 3), min_size=1, max_size=5))
@example(reads=[(f"k{i}", 0, None) for i in range(100)] * 2, turns=[1])  # over a batch
def test_every_reader_gets_its_own_keys_value_whatever_the_burst(
    reads: list[tuple[str, int, int | None]], turns: list[int]
) -> None:
    # Keys k80 to k99 are absent. Readers come in waves, some give up; each reader that
    # waits gets exactly its own key's value (a batch's values are matched to its keys),
    # no batch asks for a key twice or for more than MAX_BATCH keys, no more than
    # MAX_BATCHES_IN_FLIGHT batches are out at once, and nothing is left running.
    values = {f"k{i}": b"value of %d" % i for i in range(80)}

    async def burst() -> None:
        store = TimedStore(values, turns)
        reads_ = ReadBatcher(store.fetch_one, store.fetch_many, kind="Test")

        async def reader(key: str, delay: int, patience: int | None) -> None:
            for _ in range(delay):
                await asyncio.sleep(0)
            reading = asyncio.ensure_future(reads_.get(key))
            if patience is not None:
                for _ in range(patience):
                    await asyncio.sleep(0)
                if not reading.done():
                    reading.cancel()
            try:
                found = await reading
            except asyncio.CancelledError:
                assert patience is not None
                return
            assert found == values.get(key), key

        await asyncio.gather(*(reader(*read) for read in reads))
        for batch in store.batches:
            assert len(batch) == len(set(batch)) <= MAX_BATCH
        assert store.most_out <= MAX_BATCHES_IN_FLIGHT
        await asyncio.gather(*reads_._tasks)
        assert not reads_._pending and not reads_._tasks

    asyncio.run(burst())


async def test_a_read_asked_after_a_forget_is_not_answered_by_the_read_sent_before() -> None:
    # Regression: a read asked after delete(k) returned joined the lone read of k sent
    # before the DEL, and got the deleted value.
    store = Store({"k": b"old"})
    reads = ReadBatcher(store.fetch_one, store.fetch_many, kind="Redis")
    before = asyncio.ensure_future(reads.get("k"))
    await started(before, store)
    del store.values["k"]  # the delete lands while that read is held
    reads.forget("k")
    after = asyncio.ensure_future(reads.get("k"))
    store.gate.set()
    await before  # asked before the delete: either answer is right
    assert await after is None
    assert store.manys == [["k"]]


@pytest.mark.parametrize("answered", [0, 1, 3])
async def test_a_batch_answered_with_the_wrong_number_of_values_fails_every_reader(
    answered: int,
) -> None:
    # Regression: zip(strict=True) raised in the batch's task, and its readers hung.
    store = Store({})

    async def fetch_many(keys: Sequence[str]) -> Sequence[object]:
        return [b"v"] * answered

    reads = ReadBatcher(store.fetch_one, fetch_many, kind="Redis")
    alone = asyncio.ensure_future(reads.get("held"))
    await started(alone, store)  # held: the reads of other keys queue for a batch
    batch = [asyncio.ensure_future(reads.get(key)) for key in ("a", "b")]
    for read in batch:
        with pytest.raises(CacheUnavailableError, match=f"answered {answered} values for 2"):
            await read
    store.gate.set()
    assert await alone is None
