"""The proxy's error answers: OpenAI's shape for every failure, and the wait an upstream
asked for."""

from __future__ import annotations

import pytest

from limpet.errors import (
    APIConnectionError,
    APIError,
    APIGenerationError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    EmbeddingBatchError,
    InternalServerError,
    InvalidRequestError,
    RateLimitError,
    status_error,
)
from limpet.http.retrying import QueuedTooLong
from limpet.serve.body import BodyTimeoutError
from limpet.serve.errors import error_headers, error_of, retry_headers


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (InvalidRequestError("messages", "a list"), 400, "invalid_request_error"),
        (RateLimitError("slow down", status_code=429), 429, "rate_limit_error"),
        (APITimeoutError("too slow"), 504, "timeout"),
        (APIConnectionError("refused"), 502, "server_error"),
        (APIResponseError("not JSON", status_code=200, body="<html>"), 502, "server_error"),
        (ClientClosedError("closed"), 503, "server_error"),
        (RuntimeError("a bug"), 500, "server_error"),
        # An upstream's redirect (never followed) is no answer, nor a status to pass on:
        # relayed, it reached callers as a 302 with no Location.
        (APIStatusError("moved", status_code=302, body=""), 502, "server_error"),
        (APIStatusError("moved", status_code=307, body=""), 502, "server_error"),
    ],
)
def test_errors_come_back_in_openais_shape(exc: Exception, status: int, kind: str) -> None:
    got_status, body = error_of(exc)
    assert (got_status, body["error"]["type"]) == (status, kind)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "a bug" not in body["error"]["message"]  # the proxy's own faults stay private


def _batch_error(failed: tuple[int, ...], inputs: int, cause: Exception | None) -> Exception:
    vectors: list[list[float] | None] = [
        None if index in failed else [0.5] for index in range(inputs)
    ]
    batch = EmbeddingBatchError(f"{len(failed)} of {inputs}", failed=failed, vectors=vectors)
    batch.__cause__ = cause
    return batch


def test_an_embeddings_call_whose_inputs_all_failed_is_answered_as_its_cause() -> None:
    limited = RateLimitError("slow down", status_code=429, retry_after=2.5)
    for cause in (limited, AuthenticationError("bad key", status_code=401), APITimeoutError("?")):
        batch = _batch_error((0, 1), 2, cause)
        assert error_of(batch) == error_of(cause)
        assert error_headers(batch) == error_headers(cause)
    assert error_headers(_batch_error((0,), 1, limited)) == {
        "Retry-After": "3",
        "retry-after-ms": "2500",
    }


def test_an_embeddings_call_some_of_whose_inputs_failed_says_how_many() -> None:
    cause = BadRequestError("input too long", status_code=400)
    status, body = error_of(_batch_error((1,), 3, cause))
    assert (status, body["error"]["type"], body["error"]["code"]) == (
        400,
        "invalid_request_error",
        "400",
    )
    message = body["error"]["message"]
    assert message.startswith("1 of 3 inputs could not be embedded (the others are cached")
    assert message.endswith(": input too long")


def test_an_embeddings_batch_error_without_a_cause_is_a_bad_upstream_answer() -> None:
    status, body = error_of(_batch_error((0,), 1, None))
    assert (status, body["error"]["code"]) == (502, "bad_upstream_response")
    assert error_headers(_batch_error((0,), 1, None)) == {}


@pytest.mark.parametrize(
    ("retry_after", "headers"),
    [
        (7.0, {"Retry-After": "7", "retry-after-ms": "7000"}),
        (0.04, {"Retry-After": "1", "retry-after-ms": "40"}),
        (0.0, {"Retry-After": "0", "retry-after-ms": "0"}),
        (None, {}),
    ],
)
def test_a_wait_the_upstream_asked_for_is_passed_on(
    retry_after: float | None, headers: dict[str, str]
) -> None:
    error = RateLimitError("slow down", status_code=429, retry_after=retry_after)
    assert error_headers(error) == headers
    assert error_headers(APIConnectionError("refused")) == {}


def test_an_upstream_errors_type_param_and_code_are_relayed_as_it_gave_them() -> None:
    quota = RateLimitError(
        "quota", status_code=429, code="insufficient_quota", type="insufficient_quota"
    )
    assert error_of(quota) == (
        429,
        {
            "error": {
                "message": "quota",
                "type": "insufficient_quota",
                "param": None,
                "code": "insufficient_quota",
            }
        },
    )
    too_long = BadRequestError("too long", status_code=400, param="messages")
    assert error_of(too_long)[1]["error"] == {  # a type by status, the status as code
        "message": "too long",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "400",
    }


@pytest.mark.parametrize(
    ("status", "fields", "relayed"),
    [
        (
            429,
            {"code": "insufficient_quota", "type": "insufficient_quota"},
            ("insufficient_quota",) * 2,
        ),
        (
            401,
            {"code": "invalid_api_key", "param": "key"},
            ("invalid_api_key", "authentication_error"),
        ),
        (402, {"code": "sk-...abcd", "type": "key sk-...abcd"}, ("402", "api_error")),
        (403, {"code": "org-acme disabled", "type": ""}, ("403", "permission_error")),
    ],
)
def test_a_refusal_of_the_proxys_own_key_relays_identifiers_only_and_never_its_param(
    status: int, fields: dict[str, str], relayed: tuple[str, str]
) -> None:
    refused = status_error(status)(
        "Incorrect key sk-...abcd",
        status_code=status,
        code=fields.get("code"),
        param=fields.get("param"),
        type=fields.get("type"),
    )
    _, body = error_of(refused, own_key=True)
    assert body["error"] == {
        "message": f"the upstream refused the proxy's own credentials (status {status})",
        "type": relayed[1],
        "param": None,
        "code": relayed[0],
    }
    # Not a refusal of a key: what the upstream said of the request is the caller's.
    _, body = error_of(BadRequestError("bad", status_code=400, param="tools"), own_key=True)
    assert (body["error"]["message"], body["error"]["param"]) == ("bad", "tools")


@pytest.mark.parametrize(
    ("status", "request_id", "own_key", "relayed"),
    [
        (429, "req_7f3a9c", False, "req_7f3a9c"),
        (429, "gen-1700000000-AbC", True, "gen-1700000000-AbC"),
        (400, "id:sk-...abcd", True, "id:sk-...abcd"),  # no refusal of the proxy's key
        (401, "id:sk-...abcd", True, None),  # a refusal's: only a token
        (500, "gen-1\r\nSet-Cookie: a=b", False, None),  # a body's id: no header holds it
        (500, "", False, None),
        (500, None, False, None),
    ],
)
def test_the_upstreams_request_id_is_relayed_when_a_header_may_carry_it(
    status: int, request_id: str | None, own_key: bool, relayed: str | None
) -> None:
    error = status_error(status)("failed", status_code=status, request_id=request_id)
    assert error_headers(error, own_key=own_key).get("x-request-id") == relayed
    assert error_headers(_batch_error((0,), 1, error), own_key=own_key) == error_headers(
        error, own_key=own_key
    )


def _tried(error: APIError, attempts: int | None) -> APIError:
    error.attempts = attempts
    return error


SHOULD_NOT = {"x-should-retry": "false"}


@pytest.mark.parametrize(
    ("exc", "max_attempts", "headers"),
    [
        # limpet retried until its attempts ran out: the SDK must not multiply them.
        (_tried(RateLimitError("slow", status_code=429), 3), 3, SHOULD_NOT),
        (_tried(InternalServerError("down", status_code=503), 3), 3, SHOULD_NOT),
        (_tried(APIConnectionError("refused"), 3), 3, SHOULD_NOT),
        (_tried(APIGenerationError("provider broke"), 3), 3, SHOULD_NOT),
        # limpet stopped after one attempt by its own choice (the deadline, a Retry-After
        # past it).
        (_tried(RateLimitError("slow", status_code=429), 1), 3, SHOULD_NOT),
        # never admitted: its endpoint paused past the deadline.
        (_tried(QueuedTooLong("paused"), 1), 1, SHOULD_NOT),
        # one attempt, as its RetryConfig allows: the SDK's to retry.
        (_tried(RateLimitError("slow", status_code=429), 1), 1, {}),
        (RateLimitError("slow", status_code=429), 1, {}),
        # ...but failing over is a retry of limpet's.
        (_tried(InternalServerError("down", status_code=503), 2), 1, SHOULD_NOT),
        # failures limpet never retries: the SDK's default stands.
        (_tried(BadRequestError("bad", status_code=400), 1), 3, {}),
        (_tried(AuthenticationError("key", status_code=401), 1), 3, {}),
        (_tried(APIResponseError("not JSON", status_code=200, body=""), 1), 3, {}),
        (InvalidRequestError("messages", "a list"), 3, {}),
        (BodyTimeoutError(60.0), 3, {}),
        (ClientClosedError("closed"), 3, {}),
        (RuntimeError("a bug"), 3, {}),
    ],
)
def test_a_failure_limpet_retried_tells_the_sdk_not_to(
    exc: Exception, max_attempts: int, headers: dict[str, str]
) -> None:
    assert retry_headers(exc, max_attempts=max_attempts) == headers
    assert retry_headers(_batch_error((0,), 1, exc), max_attempts=max_attempts) == headers
