"""The public API is a contract: __all__ sorted, complete, importable."""

from __future__ import annotations

import types

import limpet


def test_all_is_sorted_and_unique() -> None:
    assert list(limpet.__all__) == sorted(set(limpet.__all__))


def test_every_public_name_resolves() -> None:
    for name in limpet.__all__:
        assert getattr(limpet, name) is not None


def test_all_lists_every_public_class_and_function_the_package_exposes() -> None:
    exposed = {
        name
        for name, value in vars(limpet).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", "").startswith("limpet")
    }
    assert exposed <= set(limpet.__all__)


def test_the_design_contract_names_are_there() -> None:
    contract = {
        "Client",
        "Endpoint",
        "Completion",
        "Usage",
        "CacheStatus",
        "MemoryCache",
        "RedisCache",
        "TieredCache",
        "CachePolicy",
    }
    assert contract <= set(limpet.__all__)


def test_cache_status_is_a_str_enum() -> None:
    assert str(limpet.CacheStatus.HIT) == "hit"
    assert isinstance(limpet.CacheStatus.HIT, str)
    assert {s.value for s in limpet.CacheStatus} == {"hit", "miss", "coalesced", "bypass"}


def test_version_comes_from_metadata() -> None:
    assert limpet.__version__.count(".") >= 2


def test_every_exception_is_exported() -> None:
    import limpet.errors

    exceptions = {
        name
        for name, value in vars(limpet.errors).items()
        if isinstance(value, type)
        and issubclass(value, Exception)
        and value.__module__ == "limpet.errors"
    }
    assert exceptions <= set(limpet.__all__)
    assert "LimpetError" in exceptions
