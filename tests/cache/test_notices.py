"""How a flight's final error travels between processes (``limpet.cache.notices``): a
follower rebuilds the error its leader saw, all that a caller of ``limpet serve`` reads of
it included. Pure."""

from __future__ import annotations

import orjson

from limpet.cache.notices import error_fields, error_from_fields
from limpet.errors import RateLimitError


def test_a_followers_error_is_the_leaders_code_param_type_and_request_id_included() -> None:
    leaders = RateLimitError(
        "You exceeded your current quota.",
        status_code=429,
        body='{"error": {...}}',
        request_id="req_7f3a9c",
        endpoint="a",
        code="insufficient_quota",
        param="model",
        type="insufficient_quota",
    )
    followers = error_from_fields(orjson.loads(orjson.dumps(error_fields(leaders))))
    assert type(followers) is RateLimitError
    assert vars(followers) == vars(leaders)


def test_a_notice_without_them_or_not_as_text_rebuilds_an_error_without_them() -> None:
    fields = {"status": 429, "message": "slow down", "body": "", "request_id": None}
    error = error_from_fields(fields | {"code": 7, "param": ["x"]})  # not text: not read
    assert (error.code, error.param, error.type) == (None, None, None)
    assert error_from_fields(fields).code is None
