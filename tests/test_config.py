"""Every config value passes one number check: a bool is never a number, NaN and the
infinities are never finite, and the error names the field and what it expected."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from limpet import AdmissionConfig, CachePolicy, Endpoint, FlightConfig, RetryConfig, Timeouts
from limpet.config import RoutingConfig, check_number
from limpet.errors import ConfigurationError

BAD_NUMBERS = [True, False, math.nan, math.inf, -math.inf, -1, "1", None]


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda v: RetryConfig(max_attempts=v), "RetryConfig.max_attempts"),
        (lambda v: RetryConfig(initial_backoff=v), "RetryConfig.initial_backoff"),
        (lambda v: Timeouts(total=v), "Timeouts.total"),
        (lambda v: Timeouts(max_connections=v), "Timeouts.max_connections"),
        (lambda v: CachePolicy(max_temperature=v), "CachePolicy.max_temperature"),
        (lambda v: FlightConfig(lease=v), "FlightConfig.lease"),
        (lambda v: RoutingConfig(cooldown=v), "RoutingConfig.cooldown"),
        (lambda v: RoutingConfig(load_floor=v), "RoutingConfig.load_floor"),
        (lambda v: AdmissionConfig(repin_pause=v), "AdmissionConfig.repin_pause"),
        (lambda v: Endpoint("a", "http://x", weight=v), "Endpoint.weight"),
        (
            lambda v: Endpoint("a", "http://x", embedding_batch_size=v),
            "Endpoint.embedding_batch_size",
        ),
    ],
)
@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
def test_every_number_is_checked_the_same_way(
    build: Callable[[object], object], field: str, value: object
) -> None:
    with pytest.raises(ConfigurationError, match=f"^{field}: expected "):
        build(value)


def test_the_bounds_and_what_passes() -> None:
    check_number("x", 0)  # >= 0 by default
    check_number("x", 0.5, above=0)
    check_number("x", 3, integer=True)
    check_number("x", None, integer=True, optional=True)
    with pytest.raises(ConfigurationError, match="expected a finite number > 0, got 0"):
        check_number("x", 0, above=0)
    with pytest.raises(ConfigurationError, match=r"expected an int >= 1, got 2\.0"):
        check_number("x", 2.0, integer=True)
    with pytest.raises(ConfigurationError, match="expected an int >= 1, got 0"):
        check_number("x", 0, integer=True)
    with pytest.raises(ConfigurationError, match=r"^Endpoint.rpm: expected an int >= 1 or None"):
        Endpoint("a", "http://x", rpm=0)
