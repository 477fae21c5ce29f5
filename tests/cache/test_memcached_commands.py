"""``Command``: a Memcached command stepped without a task of its own, which its caller's
cancellation never reaches, and whose end wakes its caller with no loop turn between.

Commands here are plain coroutines waiting on futures the test resolves (what emcache's
are, minus the server), so each interleaving of reply, cancellation and abandonment is
the test's to choose; ``test_memcached_faults`` runs them against real servers.
"""

from __future__ import annotations

import asyncio
import contextvars
import traceback
from collections.abc import Callable
from typing import Any, cast

import emcache
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.cache.budget import QueueTimeout
from limpet.cache.memcached.commands import (
    ClientClosedError,
    Command,
    Session,
    StuckCommandError,
)
from limpet.cache.memcached.writes import concurrent_writes
from limpet.cache.slots import ConnectionSlots
from limpet.cache.writes import Write

# The commands here never reach the client: Session only holds it.
NO_CLIENT = cast(emcache.Client, object())
BUDGET = 0.05


class Steps:
    """A command's coroutine waiting on futures the test resolves, one at a time; it
    records how it ended."""

    def __init__(self, waits: int = 1) -> None:
        loop = asyncio.get_running_loop()
        self.futures: list[asyncio.Future[int]] = [loop.create_future() for _ in range(waits)]
        self.ended: list[str] = []

    async def run(self) -> int:
        total = 0
        try:
            for future in self.futures:
                total += await future
        except asyncio.CancelledError:
            self.ended.append("cancelled")
            raise
        except Exception as exc:
            self.ended.append(f"raised {exc}")
            raise
        self.ended.append("returned")
        return total


async def turns(n: int = 1) -> None:
    """Let the loop run ``n`` turns (this task resumes after each)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_the_caller_wakes_in_the_turn_its_reply_is_read() -> None:
    # A task per command cost two turns more: its start, and its caller's wake-up.
    session = Session(NO_CLIENT)
    steps = Steps()
    caller = asyncio.create_task(_await(Command(steps.run(), session, BUDGET)))
    await turns(1)
    assert not caller.done()
    steps.futures[0].set_result(7)
    await turns(1)  # the future's callbacks run: the command ends, and its caller
    assert caller.done() and caller.result() == 7
    assert steps.ended == ["returned"]
    assert session.running == {}


async def test_a_command_that_never_waits_is_not_waited_on() -> None:
    async def at_once() -> str:
        return "now"

    session = Session(NO_CLIENT)
    command = Command(at_once(), session, BUDGET)
    assert command.done and session.running == {}
    assert await command == "now"
    assert command.ended.done() and not command.ended.cancelled()


async def test_a_cancelled_caller_leaves_at_once_and_the_command_reads_its_reply() -> None:
    session = Session(NO_CLIENT)
    steps = Steps()
    released: list[str] = []
    command = Command(steps.run(), session, BUDGET, then=lambda: released.append("slot"))
    caller = asyncio.create_task(_await(command))
    await turns(1)
    caller.cancel()
    await turns(1)
    assert caller.cancelled()
    assert not steps.futures[0].cancelled()  # emcache's future: never cancelled by a caller
    assert list(session.running) == [command] and released == []
    steps.futures[0].set_result(1)
    await turns(1)
    assert steps.ended == ["returned"] and released == ["slot"]
    assert session.running == {}
    assert command.ended.done() and not command.ended.cancelled()


async def test_a_timeout_around_the_wait_is_a_timeout_and_leaves_no_cancellation_behind() -> None:
    session = Session(NO_CLIENT)
    steps = Steps()
    task = asyncio.current_task()
    assert task is not None
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):
            await Command(steps.run(), session, BUDGET)
    assert task.cancelling() == 0
    assert steps.ended == []  # still waiting on its reply
    steps.futures[0].set_result(1)
    await turns(1)
    assert steps.ended == ["returned"]


async def test_an_error_reaches_the_caller_as_it_is() -> None:
    session = Session(NO_CLIENT)
    steps = Steps()
    command = Command(steps.run(), session, BUDGET)
    steps.futures[0].set_exception(emcache.CommandError("SERVER_ERROR out of memory"))
    with pytest.raises(emcache.CommandError, match="out of memory"):
        await command
    assert steps.ended == ["raised SERVER_ERROR out of memory"]


async def test_abandon_tells_the_caller_why_then_cancels_the_command() -> None:
    session = Session(NO_CLIENT)
    steps = Steps()
    command = Command(steps.run(), session, BUDGET)
    caller = asyncio.create_task(_await(command))
    await turns(1)
    command.abandon(StuckCommandError("no reply"))
    await turns(2)
    with pytest.raises(StuckCommandError):
        caller.result()
    assert steps.futures[0].cancelled()  # as a task's cancellation cancels it
    assert steps.ended == ["cancelled"]
    assert command.ended.cancelled()


async def test_a_reply_future_gets_the_outcome_and_a_left_one_nothing() -> None:
    loop = asyncio.get_running_loop()
    session = Session(NO_CLIENT)
    kept: asyncio.Future[int] = loop.create_future()
    left: asyncio.Future[int] = loop.create_future()
    first, second = Steps(), Steps()
    Command(first.run(), session, BUDGET, reply=kept)
    Command(second.run(), session, BUDGET, reply=left)
    left.cancel()
    first.futures[0].set_result(3)
    second.futures[0].set_exception(ConnectionResetError())
    assert await kept == 3
    await turns(1)
    assert second.ended == ["raised "] and left.cancelled()  # no exception left unread


async def test_a_bare_yield_is_stepped_past_in_the_next_turn() -> None:
    async def yields() -> str:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return "after two"

    assert await Command(yields(), Session(NO_CLIENT), BUDGET) == "after two"


async def test_a_command_yielding_what_is_no_future_fails_its_caller() -> None:
    class Odd:
        def __await__(self) -> Any:
            yield "not a future"

    async def odd() -> None:
        await Odd()

    with pytest.raises(RuntimeError, match="yielded 'not a future'"):
        await Command(odd(), Session(NO_CLIENT), BUDGET)


async def test_the_caller_wakes_in_its_own_context() -> None:
    name: contextvars.ContextVar[str] = contextvars.ContextVar("name", default="none")
    steps = Steps()

    async def caller() -> str:
        name.set("caller")
        await Command(steps.run(), Session(NO_CLIENT), BUDGET)
        return name.get()

    task = asyncio.create_task(caller())
    await turns(1)
    steps.futures[0].set_result(0)
    assert await task == "caller"


async def test_stop_tells_waiting_callers_the_client_closed_and_ends_every_command() -> None:
    session = Session(NO_CLIENT)
    running = [Steps(), Steps()]
    callers = [
        asyncio.create_task(_await(Command(steps.run(), session, BUDGET))) for steps in running
    ]
    await turns(1)
    callers[1].cancel()  # this one's caller already left
    await session.stop(close_connections=False)
    with pytest.raises(ClientClosedError):
        await callers[0]
    assert callers[1].cancelled()
    assert [steps.ended for steps in running] == [["cancelled"], ["cancelled"]]
    assert session.running == {}


async def _told(command: Command[int], secret: str) -> tuple[BaseException, list[str]]:
    """What ``command``'s caller is told, and the secrets of the frames in its traceback as
    it catches it. ``secret`` stands for what a request's frame holds (a prompt, a key),
    which must stay in its own caller's traceback."""
    try:
        await command
    except ClientClosedError as exc:
        frames = [frame.f_locals for frame, _ in traceback.walk_tb(exc.__traceback__)]
        return exc, [f["secret"] for f in frames if "secret" in f]
    raise AssertionError("the command ended well")


async def test_one_error_told_to_many_callers_carries_each_ones_frames_alone() -> None:
    session = Session(NO_CLIENT)
    callers = [
        asyncio.create_task(_told(Command(Steps().run(), session, BUDGET), f"secret {i}"))
        for i in range(20)
    ]
    await turns(1)
    await session.stop(close_connections=False)  # one ClientClosedError for them all
    told = await asyncio.gather(*callers)
    assert [secrets for _, secrets in told] == [[f"secret {i}"] for i in range(20)]


class _Stop(BaseException):
    """A BaseException the loop logs and goes on after (as it would not after a
    KeyboardInterrupt)."""


async def test_a_step_interrupted_tells_its_caller_outside_the_interruption() -> None:
    loop = asyncio.get_running_loop()
    logged: list[object] = []
    loop.set_exception_handler(lambda _, context: logged.append(context.get("exception")))
    reply: asyncio.Future[None] = loop.create_future()

    async def interrupted() -> int:
        await reply
        raise _Stop

    caller = asyncio.create_task(_told(Command(interrupted(), Session(NO_CLIENT), BUDGET), ""))
    await turns(1)
    try:
        reply.set_result(None)  # the next step raises _Stop, out of the loop's callback
        error, _ = await caller
    finally:
        loop.set_exception_handler(None)
    assert [type(e) for e in logged] == [_Stop]
    assert "interrupted" in str(error)
    assert error.__context__ is None  # not chained to the step's interruption


async def test_a_shorter_budget_than_those_running_is_reaped_in_its_own_time() -> None:
    session = Session(NO_CLIENT)
    slow, quick = Steps(), Steps()
    Command(slow.run(), session, budget=60.0)  # stuck after 20 minutes
    command = Command(quick.run(), session, budget=0.001)  # after 20 ms
    with pytest.raises(StuckCommandError):
        async with asyncio.timeout(10):  # a hang is a failure, not a wait
            await command
    assert list(session.running) != [command] and len(session.running) == 1
    await session.stop(close_connections=False)


async def test_writes_cut_short_leave_no_reply_unread() -> None:
    # The batch ran out of time waiting for a place: the writes it started go on, and
    # a failure of theirs must not be logged as an exception nobody read.
    loop = asyncio.get_running_loop()
    slots = ConnectionSlots(1)
    started: list[asyncio.Future[Exception | None]] = []

    def send_one(
        key: str, value: bytes | None, expires_at: float
    ) -> asyncio.Future[Exception | None]:
        reply: asyncio.Future[Exception | None] = loop.create_future()
        started.append(reply)
        return reply

    send = concurrent_writes(send_one, slots)
    batch: list[tuple[str, Write]] = [("a", (b"1", 0.0)), ("b", (b"2", 0.0))]
    with pytest.raises(QueueTimeout):
        await send(batch, 0.001)  # the second write never gets the one place
    [first] = started
    assert first.cancelled()  # a Command's outcome is then handed to nobody


# Each event, applied to one caller awaiting a command of two waits (as emcache's get:
# a connection from the pool, then the reply) and a ``then`` that frees its slot; a loop
# turn follows each, which settles it.
EVENTS = ("reply", "fail", "cancel caller", "abandon", "turn")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(EVENTS), max_size=8))
def test_any_interleaving_ends_the_command_once_and_tells_its_caller_what_came_first(
    events: list[str],
) -> None:
    asyncio.run(_interleave(events))


async def _interleave(events: list[str]) -> None:
    session = Session(NO_CLIENT)
    steps = Steps(waits=2)
    freed: list[int] = []
    command = Command(steps.run(), session, BUDGET, then=lambda: freed.append(1))
    caller = asyncio.create_task(_await(command))
    await turns(1)
    actions: dict[str, Callable[[], object]] = {
        "reply": lambda: _resolve(steps, None),
        "fail": lambda: _resolve(steps, ConnectionResetError("reset")),
        "cancel caller": caller.cancel,
        "abandon": lambda: command.abandon(StuckCommandError("stuck")),
        "turn": lambda: None,
    }
    for event in events:
        actions[event]()
        await turns(1)
    while not command.done:  # every reply it waits for comes, at last
        _resolve(steps, None)
        await turns(1)
    await turns(1)
    ending, told = _expected(events)
    assert steps.ended == [ending]
    assert command.ended.cancelled() == (ending == "cancelled")
    assert freed == [1]
    assert session.running == {}
    if told == "cancelled":
        assert caller.cancelled()
    elif isinstance(told, type):
        assert isinstance(caller.exception(), told)
    else:
        assert caller.result() == told


def _expected(events: list[str]) -> tuple[str, object]:
    """How the command ends, and what its caller is told: whatever came first."""
    replies = 0
    ending: str | None = None
    told: object = None
    for event in events:
        if ending is not None:
            break
        if event == "reply":
            replies += 1
            if replies == 2:
                ending = "returned"
                told = 2 if told is None else told
        elif event == "fail":
            ending = "raised reset"
            told = ConnectionResetError if told is None else told
        elif event == "cancel caller":
            told = "cancelled" if told is None else told
        elif event == "abandon":
            ending = "cancelled"
            told = StuckCommandError if told is None else told
    if ending is None:
        ending, told = "returned", 2 if told is None else told
    return ending, told


def _resolve(steps: Steps, error: Exception | None) -> None:
    """Resolve the next future the command waits on (none once it has ended)."""
    if steps.ended:
        return
    for future in steps.futures:
        if not future.done():
            if error is None:
                future.set_result(1)
            else:
                future.set_exception(error)
            return


async def _await(command: Command[Any]) -> Any:
    return await command
