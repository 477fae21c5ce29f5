"""What a URL shows and what it hides: the one home of URL redaction. Pure.

A URL may carry credentials in its userinfo (``redis://:password@host``) or its query
(``?key=...``, as Google's APIs take a key). ``redact_url`` is how any URL is quoted in a
repr or a message; ``url_secrets`` is what of it ``limpet.errors.scrub`` must hide. Both
split the text themselves rather than through ``urllib.parse``, which raises on some
malformed URLs (an unclosed ``[``) and would leave such a URL unredacted.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import unquote

__all__ = ["has_userinfo", "host_and_port", "join_url", "redact_url", "url_secrets"]

#: What a credential of a URL is replaced with (as ``limpet.errors.REDACTED``).
_REDACTED = "***"
# Query values shorter than this are not taken for secrets (``?api-version=1``): scrubbing
# them out of every message would garble it and hide nothing. As ``header_secrets``'.
_MIN_SECRET_CHARS = 8


class _Parts(NamedTuple):
    prefix: str  # "scheme://", or "" when there is none
    userinfo: str | None
    host: str  # host[:port], or several of them (memcached://a,b)
    path: str
    query: str | None
    fragment: str | None


def _parts(url: str) -> _Parts:
    scheme, sep, rest = url.partition("://")
    prefix = scheme + sep if sep else ""
    if not sep:
        rest = url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, host = authority.rpartition("@")
    tail, hash_, fragment = tail.partition("#")
    path, mark, query = tail.partition("?")
    return _Parts(
        prefix, userinfo if at else None, host, path, query if mark else None,
        fragment if hash_ else None,
    )  # fmt: skip


def has_userinfo(url: str) -> bool:
    """Whether ``url`` carries a ``user[:password]@`` before its host."""
    return _parts(url).userinfo is not None


def host_and_port(url: str) -> str:
    """``host[:port]`` of ``url`` as written, without any userinfo."""
    return _parts(url).host


def join_url(base: str, path: str) -> str:
    """The URL of ``path`` under the API root ``base``: appended to its path, before its
    query (Azure's ``?api-version=``, a gateway's ``?key=``), which stays the query.

    Example:
        >>> join_url("https://gw.example/v1/?api-version=2024-10-21", "/chat/completions")
        'https://gw.example/v1/chat/completions?api-version=2024-10-21'
    """
    root, mark, query = base.partition("?")
    return root.rstrip("/") + path + mark + query


def redact_url(url: str) -> str:
    """``url`` with its userinfo and every query value replaced by ``***``: how a URL is
    quoted in a repr or a message.

    Example:
        >>> redact_url("https://user:pw@gw.example:8443/v1?key=AIza123&alt=sse#top")
        'https://***@gw.example:8443/v1?key=***&alt=***#top'
    """
    parts = _parts(url)
    text = parts.prefix + ("" if parts.userinfo is None else _REDACTED + "@") + parts.host
    text += parts.path
    if parts.query is not None:
        text += "?" + "&".join(_redacted_pair(pair) for pair in parts.query.split("&"))
    if parts.fragment is not None:
        text += "#" + parts.fragment
    return text


def _redacted_pair(pair: str) -> str:
    name, equals, value = pair.partition("=")
    if not equals:
        return _REDACTED if name else ""
    return f"{name}={_REDACTED if value else ''}"


def url_secrets(url: str) -> tuple[str, ...]:
    """What of ``url`` must never be shown: the password of its userinfo (the userinfo
    whole, when it has no ``:``, as a token given as the user name), whatever its length,
    and every query value of 8 characters or more.

    Example:
        >>> url_secrets("redis://default:pw@cache:6379/0?key=AIzaSy-0123&db=1")
        ('pw', 'AIzaSy-0123')
    """
    parts = _parts(url)
    found: list[str] = []
    if parts.userinfo:
        user, colon, password = parts.userinfo.partition(":")
        secret = password if colon else user
        # As written, and decoded (``p%40ss`` is ``p@ss``, which a client may quote).
        found.extend(dict.fromkeys(form for form in (secret, unquote(secret)) if form))
    for pair in (parts.query or "").split("&"):
        value = pair.partition("=")[2] if "=" in pair else pair
        if len(value) >= _MIN_SECRET_CHARS:
            found.append(value)
    return tuple(found)
