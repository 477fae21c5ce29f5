"""A request's body as the proxy reads it: whole within a deadline, and a JSON object.

aiohttp puts no time limit on a body: a caller that sends its headers and then stalls
its body, or trickles it a byte at a time (slowloris), held its connection, and what it
had sent, for as long as it liked. The deadline covers the whole body, not each read, so
a trickle cannot stretch it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from limpet.errors import InvalidRequestError, LimpetError

__all__ = ["BodyTimeoutError", "json_object"]


class BodyTimeoutError(LimpetError):
    """A request's body did not arrive whole within the deadline (answered 408, with
    ``Connection: close``: a connection whose body was left unread carries no other).

    Attributes:
        seconds: the deadline.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"the request's body did not arrive whole within {seconds:g} seconds")


async def json_object(request: web.Request, deadline: float) -> dict[str, Any]:
    """The body of ``request``, read whole within ``deadline`` seconds, as a JSON object.

    Raises:
        BodyTimeoutError: the body took longer.
        InvalidRequestError: it is not a JSON object.
    """
    try:
        async with asyncio.timeout(deadline):
            raw = await request.read()
    except TimeoutError:
        raise BodyTimeoutError(deadline) from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequestError(
            "body", "a JSON object", described="a body that is not JSON"
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequestError("body", "a JSON object", body)
    return body
