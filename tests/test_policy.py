"""Which requests are cacheable, and what each per-call cache mode does."""

from __future__ import annotations

import enum
from typing import Any

import pytest

from limpet.config import CachePolicy
from limpet.errors import ConfigurationError, InvalidRequestError
from limpet.pipeline.policy import CacheDecision, decide, is_cacheable

BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
ON = CacheDecision(read=True, write=True, coalesce=True)
OFF = CacheDecision(read=False, write=False, coalesce=False)
WRITE_ONLY = CacheDecision(read=False, write=True, coalesce=False)


@pytest.mark.parametrize(
    ("temperature", "mode", "expected"),
    [
        (0, None, ON),
        (0.0, None, ON),
        (0.7, None, OFF),
        ("absent", None, OFF),
        (0, "bypass", OFF),
        (0.7, "bypass", OFF),
        (0, "refresh", WRITE_ONLY),
        (0.7, "refresh", OFF),
        (0, "force", ON),
        (0.7, "force", ON),
        ("absent", "force", ON),
    ],
)
def test_policy_table(temperature: object, mode: str | None, expected: CacheDecision) -> None:
    body = dict(BASE) if temperature == "absent" else {**BASE, "temperature": temperature}
    assert decide(body, mode, CachePolicy()) == expected


def test_absent_temperature_samples_so_it_is_not_cacheable() -> None:
    assert not is_cacheable(BASE, CachePolicy())
    assert not is_cacheable({**BASE, "temperature": None}, CachePolicy())
    assert not is_cacheable({**BASE, "temperature": False}, CachePolicy())


def test_max_temperature_widens_what_is_cacheable() -> None:
    policy = CachePolicy(max_temperature=0.3)
    assert is_cacheable({**BASE, "temperature": 0.3}, policy)
    assert not is_cacheable({**BASE, "temperature": 0.31}, policy)


@pytest.mark.parametrize("mode", ["sometimes", ["bypass"], {"bypass": True}, 0])
def test_unknown_mode_names_the_field(mode: Any) -> None:
    # Regression: a list (unhashable) escaped as a bare TypeError.
    with pytest.raises(InvalidRequestError, match=r"^cache: expected None or one of"):
        decide({**BASE, "temperature": 0}, mode, CachePolicy())


def test_bad_policy_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="max_temperature"):
        CachePolicy(max_temperature=-1)


def test_a_mode_may_be_a_str_enum() -> None:
    class Mode(enum.StrEnum):
        FORCE = "force"

    assert decide({**BASE, "temperature": 0.7}, Mode.FORCE, CachePolicy()).read
