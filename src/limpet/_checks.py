"""The checks of configuration values: one for numbers, and the few kinds of text a
config takes (a name, an http(s) URL, one of a set of choices, a flag, headers). Pure.

Every config object (``limpet.config``) and every class that takes tuning values checks
them here, so they all refuse the same things the same way: a bool is never a number,
NaN and the infinities never finite, and the error names the field and what it expected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from limpet._urls import has_userinfo, redact_url
from limpet.errors import ConfigurationError

__all__ = [
    "check_callable",
    "check_choice",
    "check_flag",
    "check_headers",
    "check_hmac_key",
    "check_http_url",
    "check_name",
    "check_number",
    "header_problem",
    "is_text",
]


def check_number(
    where: str,
    value: object,
    *,
    integer: bool = False,
    above: float | None = None,
    optional: bool = False,
) -> None:
    """The one number check of every config value: an int >= 1 (``integer``), else a
    finite number >= 0, or > ``above`` when given; a bool is never a number, NaN and the
    infinities never finite; None passes when ``optional``.

    Raises:
        ConfigurationError: naming ``where`` and what was expected.

    Example:
        >>> check_number("RetryConfig.max_attempts", True, integer=True)
        Traceback (most recent call last):
        limpet.errors.ConfigurationError: RetryConfig.max_attempts: expected an int >= 1, got True
    """
    if optional and value is None:
        return
    if integer:
        expected = "an int >= 1"
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    else:
        expected = "a finite number >= 0" if above is None else f"a finite number > {above:g}"
        ok = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value >= 0 if above is None else value > above)
        )
    if not ok:
        suffix = " or None" if optional else ""
        raise ConfigurationError(f"{where}: expected {expected}{suffix}, got {value!r}")


def is_text(value: str) -> bool:
    """Whether ``value`` is text UTF-8 can carry (no lone surrogate)."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


_NOT_TEXT = "valid UTF-8 text (no lone surrogate)"


def check_name(where: str, value: object) -> None:
    """A non-empty str of text: a name is sent, logged and keyed, which a lone
    surrogate fails (an endpoint's answers were never stored).

    Raises:
        ConfigurationError: naming ``where``.
    """
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{where}: expected a non-empty str, got {value!r}")
    if not is_text(value):
        raise ConfigurationError(f"{where}: expected a non-empty str of {_NOT_TEXT}, got {value!r}")


def check_callable(where: str, value: object, expected: str) -> None:
    """A callable (a clock, say): anything else would fail at its first call, mid-call.

    Raises:
        ConfigurationError: naming ``where`` and what was ``expected``.

    Example:
        >>> check_callable("MemoryCache.clock", 5, "a callable returning seconds")
        Traceback (most recent call last):
        limpet.errors.ConfigurationError: MemoryCache.clock: expected a callable returning seconds, got int
    """  # noqa: E501
    if not callable(value):
        raise ConfigurationError(f"{where}: expected {expected}, got {type(value).__name__}")


#: How a URL's credentials are given instead, as ``check_http_url`` says by default.
_CREDENTIALS_INSTEAD = "pass them with headers= (an Authorization header) or api_key="


def check_http_url(where: str, value: object, *, instead: str = _CREDENTIALS_INSTEAD) -> None:
    """A str starting ``http://`` or ``https://`` that parses, without credentials in it
    (``user:password@``): a URL is shown in reprs, metrics and names, its credentials
    would be too. Messages quote the URL redacted (``limpet._urls.redact_url``), and say
    how credentials are given ``instead``.

    Raises:
        ConfigurationError: naming ``where``.

    Example:
        >>> try:
        ...     check_http_url("Endpoint.base_url", "https://me:pw@gw.example/v1")
        ... except ConfigurationError as exc:
        ...     print(str(exc).partition(", got ")[2])
        'https://***@gw.example/v1'
    """
    if not isinstance(value, str):
        raise ConfigurationError(f"{where}: expected an http(s) URL, got {type(value).__name__}")
    if not value.startswith(("http://", "https://")):
        # Never quoted: what is passed where a URL goes is often the key meant beside it.
        raise ConfigurationError(
            f"{where}: expected an http(s) URL, got a str of {len(value)} characters"
        )
    problem = None
    if not is_text(value):  # it would fail to encode once a request is sent to it
        problem = f"expected {_NOT_TEXT}"
    elif has_userinfo(value):
        problem = f"credentials in the URL (user:password@) are not accepted, {instead}"
    else:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (parsed for its errors: a bad port, an unclosed [)
        except ValueError as exc:  # urllib's messages never quote the URL
            problem = f"not a valid URL ({exc})"
        else:
            if not parts.hostname or ".." in parts.hostname:
                problem = "expected a host name"
            elif parts.fragment or value.endswith("#"):
                problem = "a fragment is never sent"
    if problem is not None:  # the URL shown redacted, worked out only then
        raise ConfigurationError(f"{where}: {problem}, got {redact_url(value)!r}")


def check_choice(
    where: str, value: object, choices: Iterable[str], *, optional: bool = False
) -> None:
    """One of ``choices``, named in the order given (or None, when ``optional``).

    Raises:
        ConfigurationError: naming ``where`` and the choices.

    Example:
        >>> check_choice("Config.mode", "fast", ("on", "off"))
        Traceback (most recent call last):
        limpet.errors.ConfigurationError: Config.mode: expected 'on' or 'off', got 'fast'
    """
    allowed = list(choices)
    if (optional and value is None) or value in allowed:
        return
    expected = " or ".join(repr(choice) for choice in [*allowed, *([None] if optional else [])])
    raise ConfigurationError(f"{where}: expected {expected}, got {value!r}")


def check_flag(where: str, value: object) -> None:
    """A bool (not merely something truthy).

    Raises:
        ConfigurationError: naming ``where``.
    """
    if not isinstance(value, bool):
        raise ConfigurationError(f"{where}: expected a bool, got {value!r}")


def check_hmac_key(where: str, value: object) -> None:
    """An HMAC key: non-empty bytes, or None (unsigned). A str is refused rather than
    encoded: two processes must sign with the same bytes, whatever their locale.

    Raises:
        ConfigurationError: naming ``where``, never the key.
    """
    if value is not None and (not isinstance(value, bytes) or not value):
        raise ConfigurationError(
            f"{where}: expected non-empty bytes or None, got {type(value).__name__}"
            + (" (empty)" if isinstance(value, bytes) else "")
        )


# A header name is an RFC 9110 token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters end or split a header line (CR, LF) or are refused by servers.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Headers that frame the message: the HTTP client writes them for the body it sends.
_FRAMING = frozenset({"content-length", "transfer-encoding"})


def header_problem(name: object, value: object) -> str | None:
    """What is wrong with one request header, or None; it never quotes the value (it may
    be a key).

    Example:
        >>> header_problem("X-Title", "limpet"), header_problem("X Title", "limpet")
        (None, 'a header name must be a token, got a str of 7 characters')
        >>> header_problem("Authorization", "Bearer sk-1\\n")
        "the value of 'Authorization' holds a control character (a line break?)"
    """
    if type(name) is not str or not _TOKEN.fullmatch(name):
        # Never quoted either: a header pasted whole ("Authorization: Bearer sk-...")
        # lands in the name.
        shown = f"a str of {len(name)} characters" if type(name) is str else type(name).__name__
        return f"a header name must be a token, got {shown}"
    if type(value) is not str:
        return f"the value of {name!r} is a {type(value).__name__}, not a str"
    if name.lower() in _FRAMING:
        return f"{name!r} is written by the HTTP client itself"
    if _CONTROL.search(value):
        return f"the value of {name!r} holds a control character (a line break?)"
    try:
        value.encode()
    except UnicodeEncodeError:
        return f"the value of {name!r} is not text (a lone surrogate)"
    return None


def check_headers(where: str, headers: Mapping[str, object]) -> None:
    """Every header of ``headers`` (``header_problem``).

    Raises:
        ConfigurationError: naming ``where`` and the header, never its value.
    """
    for name, value in headers.items():
        problem = header_problem(name, value)
        if problem is not None:
            raise ConfigurationError(f"{where}: {problem}")
