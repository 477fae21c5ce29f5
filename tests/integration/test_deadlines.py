"""One caller's deadline never fails another caller who set none: an upstream stream its
readers share carries the deadline of the reader who started it, and a reader who joined
it tries again when it fails retryably before giving it anything (as a waiter of
``complete()``'s flight does), as often as a hasty leader's failure sent nothing upstream.
The only admission slot is held (``held_slot``); ordered by counting requests at the
gateway, which holds answers until the test releases them; the only clocks are the hasty
callers' timeouts."""

from __future__ import annotations

import asyncio

import pytest

from limpet import APITimeoutError, CacheStatus
from limpet.pipeline.stream import CompletionStream
from limpet.testing import FakeGateway
from tests.integration.chat import ask
from tests.integration.held_slot import held_slot


async def read(stream: CompletionStream) -> str:
    return "".join([chunk.content or "" async for chunk in stream])


async def test_a_reader_without_deadline_outlives_the_deadline_of_the_stream_it_joined(
    gateway: FakeGateway,
) -> None:
    # One admission slot, taken by a call the gateway holds: the stream's upstream
    # request queues behind it, and its starter's deadline passes there. The reader who
    # joined it set none, and must get the answer, not the starter's timeout.
    async with held_slot(gateway) as slot:
        client, upstream = slot.client, slot.upstream
        hasty_stream = client.stream(**ask(), timeout=0.05)
        patient_stream = client.stream(**ask())
        hasty = asyncio.ensure_future(read(hasty_stream))
        patient = asyncio.ensure_future(read(patient_stream))
        with pytest.raises(APITimeoutError):
            await hasty
        assert not patient.done() and upstream.calls == 1
        await slot.release()
        answer = await patient
    assert answer
    assert patient_stream.completion is not None
    assert patient_stream.completion.cache is CacheStatus.MISS  # it started it again
    assert upstream.calls == 2  # the blocker's and the patient's: the hasty's never went
    assert client.stats.errors == 1  # the hasty reader's timeout, and nothing else


async def test_a_caller_without_deadline_outlives_every_hasty_leader_before_it(
    gateway: FakeGateway,
) -> None:
    # Two hasty callers lead the same call one after the other, and each one's deadline
    # passes while it is queued: nothing was sent, so the caller who set no deadline
    # tries again each time, however many there were, and gets the answer.
    async with held_slot(gateway) as slot:
        client, upstream = slot.client, slot.upstream
        hasty = [
            asyncio.ensure_future(client.complete(**ask(), timeout=timeout))
            for timeout in (0.05, 0.15)
        ]
        patient = asyncio.ensure_future(client.complete(**ask()))
        for call in hasty:
            with pytest.raises(APITimeoutError):
                await call
        assert not patient.done() and upstream.calls == 1
        await slot.release()
        answer = await patient
    assert answer.cache is CacheStatus.MISS  # it led the last try itself
    assert upstream.calls == 2  # the blocker's and the patient's: the hasty never went
    assert client.stats.errors == 2  # the hasty callers' timeouts, and nothing else


async def test_a_reader_without_deadline_outlives_every_hasty_starter_before_it(
    gateway: FakeGateway,
) -> None:
    async with held_slot(gateway) as slot:
        client, upstream = slot.client, slot.upstream
        hasty = [
            asyncio.ensure_future(read(client.stream(**ask(), timeout=timeout)))
            for timeout in (0.05, 0.15)
        ]
        patient_stream = client.stream(**ask())
        patient = asyncio.ensure_future(read(patient_stream))
        for call in hasty:
            with pytest.raises(APITimeoutError):
                await call
        assert not patient.done() and upstream.calls == 1
        await slot.release()
        answer = await patient
    assert answer
    assert patient_stream.completion is not None
    assert patient_stream.completion.cache is CacheStatus.MISS
    assert upstream.calls == 2
    assert client.stats.errors == 2


async def test_a_call_whose_deadline_passed_in_the_queue_sent_no_upstream_call(
    gateway: FakeGateway,
) -> None:
    # Regression: stats.upstream_calls counted the request of a call whose deadline
    # passed while it was queued for admission, though it was never sent.
    async with held_slot(gateway) as slot:
        client, upstream = slot.client, slot.upstream
        with pytest.raises(APITimeoutError):
            await client.complete(**ask(), timeout=0.05)
        await slot.release()
    assert upstream.calls == 1  # the blocker's
    assert client.stats.upstream_calls == 1
    assert client.stats.errors == 1
