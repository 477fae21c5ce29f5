"""The exception tree, the one scrubber and the one aiohttp→limpet boundary. Pure."""

from __future__ import annotations

import base64
import json
import re
import traceback
from urllib.parse import quote, quote_plus

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet.config import Endpoint
from limpet.endpoint import header_secrets
from limpet.errors import (
    APIConnectionError,
    APIError,
    APIGenerationError,
    APIResponseError,
    APIStatusError,
    APIStreamError,
    APITimeoutError,
    InternalServerError,
    excerpt,
    scrub,
    scrub_error,
    secret_forms,
    upstream_errors,
)
from limpet.http.responses import status_error_of
from limpet.http.retry import should_retry
from limpet.scrub import BODY_EXCERPT_CHARS

KEY = "sk-or-v1-0123456789abcdef-secret"

# Text around a secret: anything but the secret's own alphabet's "*", so "***" cannot
# be mistaken for, or join into, a secret.
_TEXT = st.text(alphabet=st.characters(blacklist_characters="*"), max_size=80)
_SECRET = st.text(
    alphabet=st.characters(whitelist_categories=("L", "N"), whitelist_characters="-_."),
    min_size=8,
    max_size=40,
)


@given(before=_TEXT, after=_TEXT, secret=_SECRET, copies=st.integers(1, 3))
def test_a_secret_never_survives_scrubbing(
    before: str, after: str, secret: str, copies: int
) -> None:
    text = before + (secret + after) * copies
    assert secret not in scrub(text, [secret])


@given(before=_TEXT, token=_SECRET, after=_TEXT)
def test_a_bearer_token_never_survives_even_when_unknown(
    before: str, token: str, after: str
) -> None:
    scrubbed = scrub(f"{before} Authorization: Bearer {token} {after}", [])
    assert f"Bearer {token}" not in scrubbed
    assert "Bearer ***" in scrubbed


def encodings(secret: str) -> dict[str, str]:
    """Every form an upstream was seen to echo a secret in (escaped, encoded, recased)."""
    forms = {
        "as is": secret,
        "upper": secret.upper(),
        "lower": secret.lower(),
        "JSON": json.dumps(secret)[1:-1],
        "JSON with \\/": json.dumps(secret)[1:-1].replace("/", "\\/"),
        "JSON \\uXXXX each": "".join(f"\\u{ord(char):04X}" for char in secret),
        "JSON \\u002B": json.dumps(secret)[1:-1].replace("+", "\\u002B"),
        "percent": quote(secret, safe=""),
        "percent, lower hex": re.sub("%..", lambda m: m[0].lower(), quote(secret, safe="")),
        "percent plus": quote_plus(secret),
    }
    for name, plain in (("", secret), ("Bearer ", f"Bearer {secret}")):
        for kind, encode in (("std", base64.b64encode), ("url-safe", base64.urlsafe_b64encode)):
            encoded = encode(plain.encode()).decode()
            forms[f"base64 {kind} of {name}secret"] = encoded
            forms[f"base64 {kind} of {name}secret, unpadded"] = encoded.rstrip("=")
    return forms


# A secret as a key or password may be written: printable ASCII, "/+= %&" included; but
# not "*", which the redaction itself is made of.
_PRINTABLE_SECRET = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="*"),
    min_size=8,
    max_size=40,
)


@given(
    before=_TEXT,
    after=_TEXT,
    secret=_PRINTABLE_SECRET,
    encoding=st.sampled_from(sorted(encodings("x" * 8))),
)
def test_no_encoding_of_a_secret_survives_scrubbing(
    before: str, after: str, secret: str, encoding: str
) -> None:
    scrubbed = scrub(before + encodings(secret)[encoding] + after, [secret])
    left = [
        name
        for name, form in encodings(secret).items()
        if re.search(re.escape(form), scrubbed, re.IGNORECASE)
    ]
    assert left == []


def test_a_secret_is_scrubbed_however_it_is_echoed() -> None:
    secret = "sk-or-v1-AB/cd+EFgh1234567890=="
    for name, form in encodings(secret).items():
        assert scrub(f"bad key {form}.", [secret]) == "bad key ***.", name
    partly = secret.replace("/", "\\u002f").replace("+", "%2b")
    assert scrub(f"key={partly}", [secret]) == "key=***"


def test_secret_forms_are_the_base64_of_the_secret_and_its_bearer_header() -> None:
    forms = secret_forms("sk-a/b+c?")
    assert "c2stYS9iK2M_" in forms and "c2stYS9iK2M/" in forms
    assert base64.b64encode(b"Bearer sk-a/b+c?").decode().rstrip("=") in forms


def test_scrub_replaces_the_longest_secret_whole_and_ignores_empty_ones() -> None:
    assert scrub(f"key {KEY}!", ["", KEY[:12], KEY]) == "key ***!"
    assert scrub("bearer abc.def-123 and BEARER x", []) == "bearer *** and BEARER ***"
    assert scrub("nothing to hide", [KEY]) == "nothing to hide"


def test_an_excerpt_is_scrubbed_before_it_is_cut() -> None:
    # The key straddles the cut: cutting first would leave its head in the excerpt.
    raw = b"x" * (BODY_EXCERPT_CHARS - 10) + KEY.encode() + b" tail"
    cut = excerpt(raw, [KEY])
    assert len(cut) <= BODY_EXCERPT_CHARS
    assert KEY[:10] not in cut
    assert cut.endswith("*** tail")


def test_header_secrets_take_the_credential_without_its_scheme() -> None:
    found = header_secrets(
        {"Authorization": f"Bearer {KEY}", "x-goog-api-key": "AIzaSy-abcdefgh", "Accept": "*/*"}
    )
    assert set(found) == {f"Bearer {KEY}", KEY, "AIzaSy-abcdefgh"}


def every_text(exc: BaseException) -> list[str]:
    """Everything an error shows: str, repr, args and its text attributes."""
    texts = [str(exc), repr(exc), *map(str, exc.args)]
    texts.extend(str(value) for value in vars(exc).values())
    return texts


def test_scrub_error_reaches_args_message_body_and_request_id() -> None:
    exc = InternalServerError(
        f"bad key {KEY}", status_code=500, body=f'{{"key": "{KEY}"}}', request_id=KEY
    )
    assert scrub_error(exc, [KEY]) is exc
    assert all(KEY not in text for text in every_text(exc))
    assert exc.status_code == 500 and exc.request_id == "***"


@pytest.mark.parametrize(
    ("error", "kept"),
    [
        (  # OpenAI's
            {"message": "quota", "type": "insufficient_quota", "param": None, "code": "x_y"},
            ("x_y", None, "insufficient_quota"),
        ),
        ({"message": "too long", "param": "messages", "code": 400}, ("400", "messages", None)),
        ({"code": True, "param": 7, "type": ""}, (None, None, None)),  # none of them text
        ({"message": "refused", "code": f"bad {KEY}", "param": KEY}, ("bad ***", "***", None)),
        ({"code": "c" * (BODY_EXCERPT_CHARS + 5)}, ("c" * BODY_EXCERPT_CHARS, None, None)),
    ],
    ids=["openai", "openrouter", "not-text", "secret", "long"],
)
def test_an_upstream_error_objects_code_param_and_type_are_kept_as_openai_reads_them(
    error: dict[str, object], kept: tuple[str | None, str | None, str | None]
) -> None:
    """As the OpenAI SDK reads them (a numeric code as its text), scrubbed, and cut as
    the message is; the proxy relays them."""
    endpoint = Endpoint(name="a", base_url="https://gw.example/v1", api_key=KEY)
    exc = status_error_of(endpoint, 429, {}, {"error": error}, "")
    assert (exc.code, exc.param, exc.type) == kept


async def test_upstream_errors_maps_aiohttp_and_os_failures_with_their_cause() -> None:
    cause = aiohttp.ClientConnectionError("refused")
    with pytest.raises(APIConnectionError) as info, upstream_errors("a"):
        raise cause
    assert info.value.__cause__ is cause and info.value.endpoint == "a"
    broke = "stream from endpoint 'a' broke"
    with pytest.raises(APIConnectionError, match=broke), upstream_errors("a", stream=True):
        raise ConnectionResetError
    with pytest.raises(APITimeoutError), upstream_errors("a"):
        raise TimeoutError


async def test_a_cause_that_would_show_a_secret_is_not_chained() -> None:
    # Regression: aiohttp quotes the URL, whose query may hold the key (?key=...): every
    # traceback of the mapped error printed it.
    cause = aiohttp.InvalidUrlClientError(f"http://gw.example/v1?key={KEY}/chat/completions")
    with pytest.raises(APIConnectionError) as info, upstream_errors("a", [KEY]):
        raise cause
    assert info.value.__cause__ is None and info.value.__suppress_context__
    shown = "".join(traceback.format_exception(info.value))
    assert KEY not in shown and "InvalidUrlClientError" in str(info.value)


@pytest.mark.parametrize(
    "error",
    [
        APIStatusError(f"no {KEY}", status_code=401, body=KEY, request_id=f"Bearer {KEY}"),
        APIResponseError("not JSON", status_code=200, body=f"Authorization: Bearer {KEY}"),
        APIStreamError(f"provider said {KEY}", status_code=502),
        APIGenerationError(f"Bearer {KEY}", status_code=None),
    ],
    ids=["status", "response", "stream", "generation"],
)
async def test_every_api_error_leaving_the_boundary_is_scrubbed(error: APIError) -> None:
    with pytest.raises(APIError) as info, upstream_errors("a", [KEY]):
        raise error
    assert info.value is error
    assert all(KEY not in text for text in every_text(error))


async def test_other_exceptions_pass_the_boundary_untouched() -> None:
    with pytest.raises(ValueError, match=KEY), upstream_errors("a", [KEY]):
        raise ValueError(KEY)


def test_a_stream_error_is_a_generation_error() -> None:
    failed = APIStreamError("Provider disconnected", status_code=502, endpoint="a")
    assert isinstance(failed, APIGenerationError)
    assert str(failed) == "stream failed (502): Provider disconnected"
    generation = APIGenerationError("Provider disconnected")
    assert str(generation) == "generation failed: Provider disconnected"
    assert generation.message == "Provider disconnected" and generation.status_code is None


@pytest.mark.parametrize(
    ("code", "retried"), [(None, True), (502, True), (429, True), (400, False), (403, False)]
)
def test_a_failed_generation_is_retried_like_its_code(code: int | None, retried: bool) -> None:
    assert should_retry(APIGenerationError("failed", status_code=code)) is retried
    assert should_retry(APIStreamError("failed", status_code=code)) is retried


def test_the_docstring_draws_every_exception_of_the_tree() -> None:
    import re

    import limpet.errors

    drawn = set(re.findall(r"\b([A-Z]\w+Error)\b", limpet.errors.__doc__ or ""))
    defined = {
        name
        for name, value in vars(limpet.errors).items()
        if isinstance(value, type)
        and issubclass(value, Exception)
        and value.__module__ == "limpet.errors"
    }
    assert defined <= drawn


def test_a_long_secret_is_scrubbed_without_blocking_the_loop_to_build_its_pattern() -> None:
    # A caller's own 8,000-character header value, forwarded by the proxy, went into a
    # per-character pattern that took over half a second to compile. Counted in the
    # pattern's size, not in time: no alternation per character of a long secret.
    from limpet.scrub import _secrets_pattern

    long_secret = "tok-" + "x1/+" * 2000
    pattern = _secrets_pattern((long_secret,))
    assert pattern is not None and len(pattern.pattern) < 4 * len(long_secret)
    text = f"echoed {long_secret} and {long_secret.upper()} back"
    assert scrub(text, [long_secret]) == "echoed *** and *** back"
