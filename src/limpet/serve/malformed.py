"""What the proxy answers a request its HTTP server cannot parse: an error in OpenAI's
shape that quotes nothing of the request.

aiohttp answers such a request (a header with a stray CR or a NUL, a line over its 8,190
bytes, a malformed request line) itself, before any route or middleware, with a
``text/plain`` 400 whose body is its parser's error, and that quotes the offending line:
an ``Authorization`` header with a CR (a key read from a file with CRLF line ends) sent
the caller's key back in the answer, for whatever logs answers on the way. aiohttp has no
public hook for that answer (aio-libs/aiohttp#3287): its connection handler makes it, in
``RequestHandler.handle_error``. So the proxy's server makes its connection handlers of a
subclass whose ``handle_error`` answers in OpenAI's shape. What is logged of such a
request is ``limpet.serve.logs``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine, LineTooLong

from limpet.serve.errors import error_of, openai_error

__all__ = ["answer_malformed_requests"]

logger = logging.getLogger("limpet.serve")


def answer_malformed_requests(app: web.Application) -> None:
    """Make the server ``app`` runs on answer a request it cannot parse (and a fault no
    middleware caught) in OpenAI's error shape, never quoting the request.

    aiohttp builds an application's server in ``Application._make_handler``, whoever
    runs it (``web.run_app``, an ``AppRunner``): the server it builds is rebuilt here as
    a ``_Server``, with the same handler, request factory and connection options.
    Those are aiohttp's private names: an aiohttp that has none of them keeps its own
    server (and its own answer), with a warning, rather than failing to serve.
    """
    make_server: Callable[..., web.Server] | None = getattr(app, "_make_handler", None)
    if make_server is None:
        _warn_unhooked()
        return

    def make_handler(**options: Any) -> web.Server:
        server = make_server(**options)
        try:
            loop, kwargs = server._loop, server._kwargs
        except AttributeError:
            _warn_unhooked()
            return server
        return _Server(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=loop,
            **kwargs,
        )

    app._make_handler = make_handler  # type: ignore[method-assign]


def _warn_unhooked() -> None:
    logger.warning(
        "limpet serve: this aiohttp cannot be hooked; a request that is not valid HTTP "
        "gets aiohttp's own 400, which quotes the offending line"
    )


class _Server(web.Server):
    """aiohttp's server, its connections handled by ``_ConnectionHandler``."""

    def __call__(self) -> web.RequestHandler:
        return _ConnectionHandler(self, loop=self._loop, **self._kwargs)


class _ConnectionHandler(web.RequestHandler):
    """aiohttp's connection handler, whose error answers are OpenAI's shape."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own answer is made, and dropped: making it logs the error (its lines
        # kept out of the log by ``limpet.serve.logs``) and raises when an answer has
        # already started, which no second answer can follow.
        super().handle_error(request, status, exc, message)
        if status == 400:
            body = openai_error(
                f"the request is not valid HTTP: {_what_is_wrong(exc)} (not quoted here: a "
                "header may hold a key)",
                "invalid_request_error",
                code="malformed_request",
            )
        else:
            _, body = error_of(RuntimeError())  # a fault of the proxy's, told as such
        response = web.Response(
            status=status, body=orjson.dumps(body), content_type="application/json"
        )
        response.force_close()  # as aiohttp's: the rest of the connection cannot be read
        return response


def _what_is_wrong(exc: BaseException | None) -> str:
    if isinstance(exc, LineTooLong):
        return "a line of it (the request line or a header) is too long"
    if isinstance(exc, BadStatusLine):
        return "its request line is malformed"
    return "a header is malformed (a CR, LF or NUL in it, or a line that is no header)"
