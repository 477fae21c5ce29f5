"""Lease tokens record their holder's lease, so followers judge a lease stale by it."""

from __future__ import annotations

import pytest

from limpet.flight.lease_tokens import holders_lease, lease_token


@pytest.mark.parametrize("lease", [0.05, 0.3, 30.0, 600.0])
def test_a_token_records_its_holders_lease_in_every_renewal(lease: float) -> None:
    token = lease_token(lease)
    assert {holders_lease(token + f":{n}") for n in (0, 1, 41)} == {lease}
    assert token != lease_token(lease)  # random, as before


@pytest.mark.parametrize(
    "value",
    [
        "0f" * 16 + ":3",  # an older build's token:n
        "0f" * 16,
        "0f" * 16 + "/:0",
        "0f" * 16 + "/0:0",
        "0f" * 16 + "/-5:0",
        "0f" * 16 + "/1e3:0",
        "0f" * 16 + "/" + "9" * 40 + ":0",  # past any lease
        "0f" * 16 + "/\u0661\u0662:0",  # digits, not ASCII ones
        "",
    ],
)
def test_a_value_that_records_no_lease_says_so(value: str) -> None:
    assert holders_lease(value) is None
