"""CircuitBreaker: a pure state machine, driven by a fake clock, no event loop."""

from __future__ import annotations

import pytest

from limpet.cache.breaker import CircuitBreaker
from limpet.errors import ConfigurationError
from tests.fakes import FakeClock


def state(breaker: CircuitBreaker) -> str:
    # Through a function: mypy would otherwise narrow the property after one assert.
    return breaker.state


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def opened(clock: FakeClock, *, threshold: int = 3, cooldown: float = 2.0) -> CircuitBreaker:
    breaker = CircuitBreaker(failure_threshold=threshold, cooldown=cooldown, clock=clock)
    for _ in range(threshold):
        assert breaker.allow()
        breaker.record_failure()
    assert state(breaker) == "open"
    return breaker


def test_starts_closed_and_allows(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock)
    assert state(breaker) == "closed"
    assert all(breaker.allow() for _ in range(100))
    assert breaker.opens == 0
    assert breaker.rejected == 0


def test_opens_after_threshold_consecutive_failures(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=3, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) == "closed"
    breaker.record_failure()
    assert state(breaker) == "open"
    assert breaker.opens == 1


def test_success_resets_the_consecutive_count(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=3, clock=clock)
    for _ in range(10):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert state(breaker) == "closed"
    assert breaker.opens == 0


def test_open_refuses_until_the_cooldown_passes(clock: FakeClock) -> None:
    breaker = opened(clock, cooldown=2.0)
    assert not breaker.allow()
    clock.advance(1.999)
    assert state(breaker) == "open"
    assert not breaker.allow()
    assert breaker.rejected == 2
    clock.advance(0.001)
    assert state(breaker) == "half_open"


def test_half_open_lets_exactly_one_probe_through(clock: FakeClock) -> None:
    breaker = opened(clock)
    clock.advance(2.0)
    assert breaker.allow()
    assert not breaker.allow()
    assert not breaker.allow()
    assert state(breaker) == "half_open"


def test_successful_probe_closes(clock: FakeClock) -> None:
    breaker = opened(clock)
    clock.advance(2.0)
    assert breaker.allow()
    breaker.record_success()
    assert state(breaker) == "closed"
    assert all(breaker.allow() for _ in range(10))
    # A fresh count: it takes the full threshold to open again.
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) == "closed"


def test_failed_probe_reopens_for_another_cooldown(clock: FakeClock) -> None:
    breaker = opened(clock, cooldown=2.0)
    clock.advance(2.5)
    assert breaker.allow()
    breaker.record_failure()
    assert state(breaker) == "open"
    clock.advance(1.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()
    # A failed probe is the same outage, not a new one.
    assert breaker.opens == 1


def test_released_probe_lets_another_probe_go(clock: FakeClock) -> None:
    breaker = opened(clock)
    clock.advance(2.0)
    assert breaker.allow()
    breaker.release()
    assert state(breaker) == "half_open"
    assert breaker.allow()
    assert not breaker.allow()


def test_verdicts_on_calls_admitted_before_opening_are_ignored(clock: FakeClock) -> None:
    breaker = opened(clock)
    breaker.record_success()
    assert state(breaker) == "open"
    breaker.record_failure()
    clock.advance(2.0)
    # The late failure did not restart the cool-down.
    assert state(breaker) == "half_open"


def test_stale_verdicts_do_not_decide_the_probe(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=2.0, clock=clock)
    assert breaker.allow()
    straggler = breaker.epoch  # a slow call, admitted while closed
    assert breaker.allow()
    breaker.record_failure(breaker.epoch)  # another call fails: open
    clock.advance(2.0)
    assert breaker.allow()
    probe = breaker.epoch
    # The straggler times out while the probe is out: it says nothing about now.
    breaker.record_failure(straggler)
    assert state(breaker) == "half_open"
    breaker.release(straggler)
    assert not breaker.allow()  # still one probe at a time
    breaker.record_success(probe)
    assert state(breaker) == "closed"
    # And a straggler's success cannot close a breaker that opened after it started.
    assert breaker.allow()
    old = breaker.epoch
    breaker.record_failure(old)
    clock.advance(2.0)
    breaker.record_success(old)
    assert state(breaker) == "half_open"


def test_each_open_and_close_is_a_new_epoch(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=1.0, clock=clock)
    epochs = [breaker.epoch]
    breaker.record_failure()  # opens
    epochs.append(breaker.epoch)
    clock.advance(1.0)
    assert breaker.allow()
    breaker.record_failure()  # the probe failed: opens again
    epochs.append(breaker.epoch)
    clock.advance(1.0)
    assert breaker.allow()
    breaker.record_success()  # closes
    epochs.append(breaker.epoch)
    assert len(set(epochs)) == 4


def test_release_while_closed_is_harmless(clock: FakeClock) -> None:
    breaker = CircuitBreaker(clock=clock)
    breaker.release()
    assert state(breaker) == "closed"


def test_counts_each_outage_once(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=1.0, clock=clock)
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
        clock.advance(1.0)
        assert breaker.allow()
        breaker.record_success()
    assert breaker.opens == 3
    assert state(breaker) == "closed"


def test_zero_cooldown_probes_at_once(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=0.0, clock=clock)
    breaker.record_failure()
    assert breaker.opens == 1
    assert state(breaker) == "half_open"
    assert breaker.allow()
    assert not breaker.allow()


def test_repr_shows_state() -> None:
    assert "state='closed'" in repr(CircuitBreaker())


@pytest.mark.parametrize(
    ("threshold", "cooldown"),
    [(0, 1.0), (-1, 1.0), (True, 1.0), (1.5, 1.0), (3, -0.1), (3, "2"), (3, True)],
)
def test_rejects_bad_configuration(threshold: object, cooldown: object) -> None:
    with pytest.raises(ConfigurationError):
        CircuitBreaker(failure_threshold=threshold, cooldown=cooldown)  # type: ignore[arg-type]
