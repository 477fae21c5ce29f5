"""Secrets out of text: what an upstream echoes back (a key, in any case and in every
form it may be encoded in, and any ``Bearer <token>``) replaced before the text reaches an
error, a log or a caller. ``limpet.errors`` passes every upstream error through it.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterable

__all__ = [
    "BODY_EXCERPT_CHARS",
    "REDACTED",
    "excerpt",
    "scrub",
    "scrub_error",
    "secret_forms",
]

#: How much of an error body is kept on the exception.
BODY_EXCERPT_CHARS = 500

#: What a secret is replaced with.
REDACTED = "***"

# Bytes of a body scrubbed for an excerpt: enough for any error, bounded for a huge one.
_SCRUB_WINDOW = 64 * 1024
# ``Bearer <token>`` anywhere, whatever the token: an upstream may echo a key we never had
# (a proxy's, or a wrong one the caller passed in a header). The token runs to whitespace
# or a character that closes a quoted or bracketed value around it.
_BEARER = re.compile(r"""(?i)\b(bearer)(\s+)[^\s"'`,;<>()\[\]{}\\]+""")
# Characters a JSON encoder may escape with a backslash rather than as ``\uXXXX``.
_JSON_BACKSLASHED = frozenset('"\\/')
# Sets of secrets whose pattern is kept: an endpoint's, and a few calls' own headers.
_MAX_SECRET_PATTERNS = 256


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    r"""``text`` with every secret, and every ``Bearer <token>``, replaced by ``***``.

    A secret is found in any case and in every form an upstream may echo it in: each of
    its characters as is, JSON-escaped (``\/``, ``\u002B``) or percent-encoded (``%2F``,
    ``+`` for a space), in any mix; and base64 of the secret or of ``Bearer <secret>``,
    standard or URL-safe, padded or not (``secret_forms``).

    Example:
        >>> scrub("bad key sk-1234567890 (Authorization: Bearer sk-other)", ["sk-1234567890"])
        'bad key *** (Authorization: Bearer ***)'
        >>> scrub("no account for key=SK-12%2F34567890", ["sk-12/34567890"])
        'no account for key=***'
    """
    pattern = _secrets_pattern(tuple(secret for secret in secrets if secret))
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    return _BEARER.sub(rf"\1\2{REDACTED}", text)


def secret_forms(secret: str) -> tuple[str, ...]:
    """The base64 forms of ``secret`` that ``scrub`` finds besides the secret itself (whose
    escaped and percent-encoded forms it finds character by character): base64 of the
    secret and of ``Bearer <secret>`` (an ``Authorization`` header echoed encoded),
    standard and URL-safe, each without its padding (which ``scrub`` takes when present).

    Example:
        >>> secret_forms("sk-ab?")
        ('c2stYWI/', 'c2stYWI_', 'QmVhcmVyIHNrLWFiPw')
    """
    forms: list[str] = []
    for plain in (secret, f"Bearer {secret}"):
        raw = plain.encode()
        for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
            form = encoded.decode().rstrip("=")
            if form not in forms:
                forms.append(form)
    return tuple(forms)


#: Secrets longer than this are found as they are, in any case, and in base64, but not
#: escaped or percent-encoded character by character (API keys are far shorter).
_MAX_ENCODED_SECRET = 256


@functools.lru_cache(maxsize=_MAX_SECRET_PATTERNS)
def _secrets_pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    """One case-insensitive pattern for every form of every secret, built once per set of
    secrets (an endpoint's are the same on every call). The longest secret comes first,
    so a secret that contains another is replaced whole."""
    if not secrets:
        return None
    alternatives: list[str] = []
    starts = {"\\", "%", "+"}
    for secret in sorted(set(secrets), key=len, reverse=True):
        forms = secret_forms(secret)
        # Character by character only up to a length: a pattern of a few thousand
        # alternations takes a noticeable while to compile, and a caller's own long
        # header value (forwarded by the proxy) would block the loop with it.
        encoded = len(secret) <= _MAX_ENCODED_SECRET
        alternatives.append(_encoded_pattern(secret) if encoded else re.escape(secret))
        alternatives.extend(re.escape(form) + "={0,2}" for form in forms)
        starts.update(form[0] for form in (secret, *forms))
    # A look at the first character before the alternatives: most of a body starts
    # none of them, and this makes a pass over it several times faster.
    first = "(?=[" + "".join(re.escape(char) for char in sorted(starts)) + "])"
    return re.compile(first + "(?:" + "|".join(alternatives) + ")", re.IGNORECASE)


def _encoded_pattern(secret: str) -> str:
    """``secret``, each character as is, JSON-escaped or percent-encoded."""
    return "".join(_encoded_char(char) for char in secret)


def _encoded_char(char: str) -> str:
    forms = [
        re.escape(char),
        re.escape(_json_escape(char)),
        re.escape("".join(f"%{byte:02x}" for byte in char.encode())),
    ]
    if char in _JSON_BACKSLASHED:
        forms.append(re.escape("\\" + char))
    if char == " ":
        forms.append(re.escape("+"))
    return "(?:" + "|".join(forms) + ")"


def _json_escape(char: str) -> str:
    r"""``\uXXXX`` of ``char`` (a surrogate pair past the Basic Multilingual Plane)."""
    units = char.encode("utf-16-be")
    return "".join(
        f"\\u{int.from_bytes(units[i : i + 2], 'big'):04x}" for i in range(0, len(units), 2)
    )


def excerpt(raw: bytes, secrets: Iterable[str] = (), limit: int = BODY_EXCERPT_CHARS) -> str:
    """The first ``limit`` characters of a body, scrubbed before they are cut, so a secret
    straddling the cut cannot leak in part."""
    text = raw[:_SCRUB_WINDOW].decode("utf-8", errors="replace")
    return scrub(text, secrets)[:limit]


def scrub_error(exc: BaseException, secrets: Iterable[str] = ()) -> BaseException:
    """Scrub ``exc`` in place (its ``args`` and every text attribute) and return it."""
    secrets = tuple(secrets)
    exc.args = tuple(scrub(a, secrets) if isinstance(a, str) else a for a in exc.args)
    for name, value in list(vars(exc).items()):
        if isinstance(value, str):
            setattr(exc, name, scrub(value, secrets))
    return exc
