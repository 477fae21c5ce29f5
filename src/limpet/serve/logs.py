"""What the proxy's HTTP server logs of a request it could not parse: that it refused
one, never its lines.

aiohttp logs such a request at ERROR with the parser's error, which quotes the offending
line: an ``Authorization`` header with a stray CR (a key read from a file with CRLF line
ends), a NUL, or over 8 KB (a long token) put the caller's key in the server's log.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["quiet_request_lines"]

#: The logger aiohttp's request handlers log parse errors on.
SERVER_LOGGER = "aiohttp.server"


class _UnquotedRequestLines(logging.Filter):
    """Rewrites a record of an unparsable request to name only the kind of error."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg = (
                "limpet serve: refused a malformed HTTP request (%s, status %s); "
                "its lines are not logged, they may hold keys"
            )
            record.args = (type(error).__name__, error.code)
            record.exc_info = None
            record.exc_text = None
        return True


_FILTER = _UnquotedRequestLines()


def quiet_request_lines() -> None:
    """Keep the lines of unparsable requests out of the server's log (idempotent)."""
    logging.getLogger(SERVER_LOGGER).addFilter(_FILTER)
