"""Embeddings for a RAG pipeline: upstream inputs and wall time of an ingest and a query
stream, limpet vs no cache vs LangChain's ``CacheBackedEmbeddings``, in one run.

The ingest: 20,000 chunks in batches of 100, 50 batches in flight, as windows of 100
chunks moving by 40 (so 60% of each batch's chunks are in the next batch too, as with
overlapping chunk windows). Then 5,000 single-text queries, 50 in flight, 70% of them
repeats of earlier ones. Upstream: the FakeGateway's ``/embeddings``, 20 ms a request.

LangChain's ``CacheBackedEmbeddings`` (from ``langchain-classic``, over ``langchain-core``'s
``InMemoryByteStore``, queries cached too) when it is installed; else a faithful local
reimplementation of its per-batch split (mget the batch, embed the missing texts,
duplicates included, mset), and the output says which.

Targets: upstream inputs = distinct inputs exactly; >= 2x fewer inputs than the per-batch
split; a full-hit batch costs <= 5 us per input (16-float vectors, so the figure is
limpet's own work; turning 1,536 floats into Python floats is reported beside it).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from benchmarks._common import Figure, Plot, Series, emit
from benchmarks._harness import command_line, endpoint_of, per_call_us
from limpet import Client
from limpet.pipeline.vectors import merge_by_index, unpack_floats
from limpet.testing import FakeGateway

MODEL = "openai/text-embedding-3-small"
UPSTREAM_LATENCY = 0.02
IN_FLIGHT = 50
BATCH = 100
STRIDE = 40  # windows of 100 moving by 40: 60% of a batch repeats in the next


@dataclass(frozen=True, slots=True)
class Workload:
    batches: list[list[str]]
    queries: list[str]

    @property
    def distinct(self) -> int:
        return len({t for b in self.batches for t in b}) + len(set(self.queries))

    @property
    def inputs(self) -> int:
        return sum(len(b) for b in self.batches) + len(self.queries)


def workload(chunks: int, queries: int, seed: int = 0) -> Workload:
    batches = [
        [f"chunk {i}: a paragraph of the corpus" for i in range(start, start + BATCH)]
        for start in range(0, chunks // BATCH * STRIDE, STRIDE)
    ]
    rng = random.Random(seed)
    pool = [f"query {i}: how do limpets stick?" for i in range(round(queries * 0.3))]
    asked = pool + [rng.choice(pool) for _ in range(queries - len(pool))]
    rng.shuffle(asked)
    return Workload(batches, asked)


Embed = Callable[[list[str]], Awaitable[object]]


async def drive(embed_batch: Embed, embed_query: Embed, load: Workload) -> tuple[float, float]:
    """Wall seconds of the ingest, then of the queries, ``IN_FLIGHT`` calls at a time."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(embed: Embed, texts: list[str]) -> None:
        async with gate:
            await embed(texts)

    started = time.perf_counter()
    await asyncio.gather(*(one(embed_batch, b) for b in load.batches))
    ingested = time.perf_counter()
    await asyncio.gather(*(one(embed_query, [q]) for q in load.queries))
    return ingested - started, time.perf_counter() - ingested


class Upstream:
    """A bare client of ``/embeddings``: what no cache, and LangChain underneath, send."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.url = base_url + "/embeddings"

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        body = {"model": MODEL, "input": list(texts), "encoding_format": "base64"}
        async with self.session.post(self.url, json=body) as response:
            response.raise_for_status()
            data = (await response.json())["data"]
        return [unpack_floats(v) for v in merge_by_index(data, len(texts))]


class PerBatchSplit:
    """LangChain's ``CacheBackedEmbeddings.aembed_documents``, reimplemented: per batch,
    mget every text's key, embed the texts that missed (duplicates included), mset them."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.store: dict[str, list[float]] = {}

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        keys = [MODEL + hashlib.sha256(t.encode()).hexdigest() for t in texts]
        vectors: list[list[float] | None] = [self.store.get(k) for k in keys]
        missing = [i for i, v in enumerate(vectors) if v is None]
        if missing:
            fresh = await self.upstream.embed([texts[i] for i in missing])
            for i, vector in zip(missing, fresh, strict=True):
                self.store[keys[i]] = vector
                vectors[i] = vector
        return [v for v in vectors if v is not None]

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_documents([text]))[0]


def per_batch_split(upstream: Upstream) -> tuple[Any, str]:
    """LangChain's CacheBackedEmbeddings if installed, else the reimplementation; and
    which one it is."""
    try:
        from langchain_classic.embeddings import CacheBackedEmbeddings
        from langchain_core.embeddings import Embeddings
        from langchain_core.stores import InMemoryByteStore
    except ImportError:
        return PerBatchSplit(upstream), "per-batch split (local reimplementation)"

    class GatewayEmbeddings(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            raise NotImplementedError("async only")

        def embed_query(self, text: str) -> list[float]:
            raise NotImplementedError("async only")

        async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
            return await upstream.embed(texts)

        async def aembed_query(self, text: str) -> list[float]:
            return (await upstream.embed([text]))[0]

    cached = CacheBackedEmbeddings.from_bytes_store(
        GatewayEmbeddings(),
        InMemoryByteStore(),
        namespace=MODEL,
        query_embedding_cache=True,
        key_encoder="sha256",
    )
    return cached, "LangChain CacheBackedEmbeddings (InMemoryByteStore)"


async def measure(gateway: FakeGateway, load: Workload) -> dict[str, Any]:
    base_url = gateway.base_url("a")
    figures: dict[str, Any] = {}
    async with Client(endpoints=[endpoint_of(gateway)]) as client:
        # Warmed up as a running service is: connections open, prices loaded.
        await client.embed(model=MODEL, input="warm-up")
        gateway.embeddings.reset()

        async def embed_with_limpet(texts: list[str]) -> object:
            return await client.embed(model=MODEL, input=texts)

        wall = await drive(embed_with_limpet, embed_with_limpet, load)
        figures["limpet"] = (gateway.embeddings.inputs, wall, gateway.embeddings.calls)
        hit = load.batches[0]
        figures["hit_us"] = await per_call_us(lambda: embed_with_limpet(hit), 200, 5) / len(hit)
        await client.embed(model=MODEL, input=hit, dimensions=1536)
        wide = await per_call_us(
            lambda: client.embed(model=MODEL, input=hit, dimensions=1536), 50, 5
        )
        figures["hit_us_1536"] = wide / len(hit)
    async with aiohttp.ClientSession() as session:
        upstream = Upstream(session, base_url)
        await upstream.embed(["warm-up"])
        gateway.embeddings.reset()
        wall = await drive(upstream.embed, upstream.embed, load)
        figures["none"] = (gateway.embeddings.inputs, wall, gateway.embeddings.calls)
        split, figures["split_name"] = per_batch_split(upstream)
        gateway.embeddings.reset()

        async def query(texts: list[str]) -> object:
            return await split.aembed_query(texts[0])

        wall = await drive(split.aembed_documents, query, load)
        figures["split"] = (gateway.embeddings.inputs, wall, gateway.embeddings.calls)
    return figures


@dataclass(frozen=True, slots=True)
class Contender:
    """Upstream inputs, and wall seconds of the ingest and of the queries, of one way."""

    inputs: int
    ingest_s: float
    queries_s: float

    @property
    def wall_s(self) -> float:
        return self.ingest_s + self.queries_s


def contender(measured: tuple[int, tuple[float, float], int]) -> Contender:
    inputs, (ingest_s, queries_s), _ = measured
    return Contender(inputs, ingest_s, queries_s)


async def main(chunks: int, queries: int) -> None:
    load = workload(chunks, queries)
    async with FakeGateway(endpoints=("a",)) as gateway:
        gateway.embeddings.latency = UPSTREAM_LATENCY
        f = await measure(gateway, load)
    ours, none, split = contender(f["limpet"]), contender(f["none"]), contender(f["split"])
    name = f["split_name"]
    print(f"embed: baseline is {name}", file=sys.stderr)
    what = f"{chunks:,} chunks + {queries:,} queries"
    emit(
        "embed",
        [
            *figures(ours, none, split, name, what, load),
            *hit_figures(f["hit_us"], f["hit_us_1536"]),
        ],
        plot=Plot(
            kind="bar",
            title="Upstream inputs of a RAG ingest with overlapping batches",
            ylabel="inputs sent upstream",
            series={
                "limpet": Series(x=["inputs"], y=[ours.inputs]),
                name: Series(x=["inputs"], y=[split.inputs]),
                "no cache": Series(x=["inputs"], y=[none.inputs]),
            },
        ),
        baseline=name,
        distinct_inputs=load.distinct,
        total_inputs=load.inputs,
        limpet_requests=f["limpet"][2],
        no_cache_ingest_s=none.ingest_s,
        no_cache_queries_s=none.queries_s,
        upstream_latency_s=UPSTREAM_LATENCY,
    )


def figures(
    ours: Contender, none: Contender, split: Contender, name: str, what: str, load: Workload
) -> list[Figure]:
    return [
        Figure(
            figure=f"upstream inputs, RAG ingest ({what}; {load.distinct:,} distinct)",
            unit="inputs",
            limpet=ours.inputs,
            baseline=none.inputs,
            baseline_name="no cache",
            target=f"= distinct ({load.distinct:,})",
            met=ours.inputs == load.distinct,
        ),
        Figure(
            figure="upstream inputs vs the per-batch split, 50 overlapping batches in flight",
            unit="inputs",
            limpet=ours.inputs,
            baseline=split.inputs,
            baseline_name=name,
            target=">= 2x fewer",
            met=split.inputs >= 2 * ours.inputs,
        ),
        Figure(
            figure=f"wall time, RAG ingest ({what})",
            unit="s",
            limpet=ours.wall_s,
            baseline=none.wall_s,
            baseline_name="no cache",
        ),
        Figure(
            figure="wall time vs the per-batch split",
            unit="s",
            limpet=ours.wall_s,
            baseline=split.wall_s,
            baseline_name=name,
        ),
        Figure(
            figure="wall time of the ingest alone (overlapping batches)",
            unit="s",
            limpet=ours.ingest_s,
            baseline=split.ingest_s,
            baseline_name=name,
        ),
        Figure(
            figure="wall time of the queries alone (single-text calls)",
            unit="s",
            limpet=ours.queries_s,
            baseline=split.queries_s,
            baseline_name=name,
        ),
    ]


def hit_figures(hit_us: float, hit_us_1536: float) -> list[Figure]:
    return [
        Figure(
            figure="full-hit batch of 100, per input (16 floats)",
            unit="us",
            limpet=hit_us,
            target="<= 5 us",
            met=hit_us <= 5,
        ),
        Figure(
            figure="full-hit batch of 100, per input (1,536 floats)",
            unit="us",
            limpet=hit_us_1536,
        ),
    ]


if __name__ == "__main__":
    args = command_line(__doc__).parse_args()
    if args.quick:
        asyncio.run(main(chunks=2_000, queries=500))
    else:
        asyncio.run(main(chunks=20_000, queries=5_000))
