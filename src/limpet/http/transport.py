"""HTTP to OpenAI-compatible endpoints: one aiohttp session, retries, error mapping.

No redirect is followed: aiohttp would re-send the prompt, and every credential header
but ``Authorization`` (``x-api-key``, ``api-key``...), to wherever a 3xx points, and the
answer from there would be served and cached. A 3xx is an ``APIStatusError`` instead.

aiohttp's and tenacity's exceptions stop here; callers see only ``limpet.errors``. Every
request, and the parsing of its answer, runs inside ``limpet.errors.upstream_errors``, so
an error is mapped and scrubbed of the endpoint's secrets before a retry logs it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping
from contextlib import aclosing
from typing import Any

import aiohttp
import orjson

from limpet._urls import join_url
from limpet._version import __version__
from limpet.config import AdmissionConfig, Endpoint, RetryConfig, Timeouts
from limpet.errors import (
    APIGenerationError,
    APIResponseError,
    ClientClosedError,
    excerpt,
    shown_cause,
    upstream_error,
    upstream_errors,
)
from limpet.http.admission import Admissions
from limpet.http.admission_rules import total_tokens
from limpet.http.admission_slots import UNADMITTED, Seen, Ticket
from limpet.http.admission_wait import Waiting, admit, admitted_now
from limpet.http.outgoing import as_sent, payload_of, sendable
from limpet.http.responses import (
    parse_chat,
    parse_embeddings,
    parse_json,
    request_headers,
    status_error_of,
)
from limpet.http.retrying import Retrier, counted
from limpet.http.stream_events import stream_events
from limpet.scrub import BODY_EXCERPT_CHARS

__all__ = ["BODY_EXCERPT_CHARS", "Transport"]

#: Parses an answer: endpoint, status, headers, body bytes in; the JSON object out.
Parse = Callable[[Endpoint, int, Mapping[str, str], bytes], dict[str, Any]]


#: An opened stream, its first chunk read (None: it ended at once): the response, its
#: admission ticket, the chunks after the first, and the first.
_OpenStream = tuple[
    aiohttp.ClientResponse, Ticket, AsyncGenerator[dict[str, Any], None], dict[str, Any] | None
]

# Endpoint names whose request headers are kept (a Client has a handful).
_MAX_ENDPOINT_HEADERS = 256


class Transport:
    """Posts chat completions with retries; owns one ``aiohttp.ClientSession``.

    The session is created on first use, inside the running event loop.

    Args:
        timeouts: connect and total timeouts per attempt, and the connection pool size.
        retry: attempts and backoff.
        headers: sent with every request (attribution headers such as ``HTTP-Referer``);
            an endpoint's own headers win.
        admission: how attempts are admitted to each endpoint (``limpet.http.admission``);
            None sends every attempt at once.
    """

    __slots__ = (
        "_admissions",
        "_closed",
        "_endpoint_headers",
        "_headers",
        "_retrier",
        "_session",
        "_timeouts",
        "billed",
    )

    def __init__(
        self,
        *,
        timeouts: Timeouts,
        retry: RetryConfig,
        headers: Mapping[str, str] | None = None,
        admission: AdmissionConfig | None = None,
    ) -> None:
        self._timeouts = timeouts
        self._admissions = (
            None
            if admission is None
            else Admissions(
                admission, max_pause=retry.max_retry_after, pool=timeouts.max_connections
            )
        )
        self._retrier = Retrier(retry, shared_pause=self._admissions is not None)
        self._headers = {"User-Agent": f"limpet/{__version__}", **(headers or {})}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        # Endpoint name → the endpoint last seen under it and its request headers.
        self._endpoint_headers: dict[str, tuple[Endpoint, dict[str, str]]] = {}
        #: Told of each attempt refused after it was paid for (a failed generation in a
        #: 200 that reported usage), with the payload sent and what was billed, whether
        #: or not a retry follows: the account stage prices it.
        self.billed: Callable[[bytes, dict[str, Any]], None] | None = None

    def chat(
        self,
        endpoint: Endpoint,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        deadline: float | None = None,
        waiting: Waiting | None = None,
    ) -> Coroutine[Any, Any, dict[str, Any]]:
        """POST ``body`` to ``{endpoint.base_url}/chat/completions``, retrying what may
        pass; awaited, the chat completion's body (checked to be one).

        Args:
            headers: this call's own headers (the OpenAI SDK's ``extra_headers``); they win.
            deadline: event-loop time past which no retry is started: a backoff that would
                end after it gives up at once with the last error. The caller bounds the
                call itself (``asyncio.timeout``). It covers the wait for admission: a call
                that cannot be admitted before it fails with ``APITimeoutError``, unsent.
            waiting: told what the call waits for as that changes (admission, an answer),
                and how long it queued for admission.

        Raises:
            APIStatusError: a non-2xx answer (after retries, when retryable).
            APIConnectionError: no answer (``APITimeoutError`` when it was a timeout).
            APIResponseError: a 2xx answer that is not a chat completion.
            APIGenerationError: a 200 whose generation failed (``finish_reason: "error"``),
                after retries.
        """
        endpoint = as_sent(endpoint, headers)
        payload = payload_of(endpoint, body)
        return self._send(endpoint, "/chat/completions", payload, deadline, waiting, first=True)

    def embeddings(
        self,
        endpoint: Endpoint,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        deadline: float | None = None,
    ) -> Coroutine[Any, Any, dict[str, Any]]:
        """POST ``body`` to ``{endpoint.base_url}/embeddings``, admitted and retried as
        ``chat`` is (the endpoint's cap, learned limit and pause hold for embeddings too);
        awaited, the answer's body.

        Raises:
            As ``chat``; ``APIResponseError`` for a 2xx without a ``data`` list.
        """
        endpoint = as_sent(endpoint, headers)
        payload = payload_of(endpoint, body)
        return self._send(
            endpoint, "/embeddings", payload, deadline, None, parse=parse_embeddings, first=True
        )

    async def stream(
        self,
        endpoint: Endpoint,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        deadline: float | None = None,
        waiting: Waiting | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """POST ``body`` with ``stream: true`` and yield each chunk as it arrives.

        Opening the stream, up to its first chunk, is retried like ``chat``; once chunks
        flow, a failure is final (a retry would repeat what the caller already has).
        ``headers``, ``deadline`` and ``waiting`` are as ``chat``'s; the stream holds its
        admission slot until it ends.

        Raises:
            APIStatusError, APIConnectionError, APITimeoutError: as ``chat``, before or
                (connection) after the first chunk.
            APIStreamError: the upstream reported a failure inside the stream.
            APIResponseError: a chunk that is not JSON.
        """
        endpoint = as_sent(endpoint, headers)
        payload = orjson.dumps({**(endpoint.extra_body or {}), **body, "stream": True})

        async def attempt(retry: bool) -> _OpenStream:
            ticket = await admit(self._admissions, endpoint, payload, deadline, waiting, retry)
            try:
                response = await self._open_stream(endpoint, payload, ticket.saw)
            except BaseException as exc:
                ticket.close(exc)
                self._told_billed(payload, exc)  # a failed generation answered as JSON
                raise
            # The first event is read inside the attempt: a failure before it (an error
            # chunk first, the connection dropped) reached no reader, so it is retried
            # as the same failure of a JSON answer is.
            chunks = stream_events(response, endpoint)
            try:
                first = await anext(chunks, None)
            except BaseException as exc:
                await chunks.aclose()
                response.release()
                ticket.close(exc)
                self._told_billed(payload, exc)  # an error chunk with its usage: paid for
                raise
            return response, ticket, chunks, first

        (response, ticket, events, first), _ = await self._retrier.run(attempt, deadline)
        try:
            async with aclosing(events) as chunks:
                if first is not None:
                    yield first
                    async for chunk in chunks:
                        yield chunk
        except APIGenerationError as exc:  # an error chunk with its usage: paid for
            self._told_billed(payload, exc)
            raise
        finally:
            response.release()
            ticket.close(None)

    async def get_json(self, endpoint: Endpoint, path: str) -> object:
        """GET ``{endpoint.base_url}{path}`` once, without retries, and return its JSON
        (for listings such as ``/models``).

        Admitted as every other request is: the endpoint's ``max_in_flight``, its
        ``rpm``, its learned limit and its pause hold for it too, and what it meets (a
        429 and its ``Retry-After``) steers the endpoint's other requests. But ahead of
        the line, as a retry is: one small metadata read (once per Client), it must not
        wait for every call queued before it (answers in hand wait to be priced by it).

        Raises:
            APIStatusError: a non-2xx answer.
            APIConnectionError: no answer (``APITimeoutError`` when it was a timeout).
            APIResponseError: a 2xx answer that is not JSON.
        """
        ticket = admitted_now(self._admissions, endpoint, b"")
        if ticket is None:
            ticket = await admit(self._admissions, endpoint, b"", None, None, retry=True)
        try:
            with upstream_errors(endpoint.name, endpoint.secrets):
                async with self._session_for_loop().get(
                    join_url(endpoint.base_url, path),
                    headers=self._headers_of(endpoint),
                    allow_redirects=False,  # a 3xx is an error (``status_error_of``)
                ) as response:
                    raw = await response.read()
                    status, headers = response.status, response.headers
                ticket.saw(status, headers)
                text = excerpt(raw, endpoint.secrets)
                body = parse_json(raw)
                if not 200 <= status < 300:
                    raise status_error_of(endpoint, status, headers, body, text)
                if body is None:
                    raise APIResponseError(
                        "response is not JSON",
                        status_code=status,
                        body=text,
                        endpoint=endpoint.name,
                    )
        except BaseException as exc:
            ticket.close(exc)  # the error as mapped: an answer, or none
            raise
        ticket.close(None)
        return body

    @property
    def admissions(self) -> Admissions | None:
        """Every endpoint's admission (limits, queues, pauses), or None when it is off."""
        return self._admissions

    async def _send(
        self,
        endpoint: Endpoint,
        path: str,
        payload: bytes,
        deadline: float | None,
        waiting: Waiting | None,
        retry: bool = False,
        parse: Parse = parse_chat,
        *,
        first: bool = False,
    ) -> dict[str, Any]:
        """One attempt: admitted, posted, parsed; its place on the wire is given back
        with its verdict when it ends. The ``first`` attempt of a request goes on to the
        retries (``_again``) when it fails retryably: until then, retrying costs nothing.
        """
        try:
            ticket = admitted_now(self._admissions, endpoint, payload)
            if ticket is None:
                ticket = await admit(self._admissions, endpoint, payload, deadline, waiting, retry)
            try:
                async with self._session_for_loop().post(
                    join_url(endpoint.base_url, path),
                    data=sendable(payload),
                    headers=self._headers_of(endpoint),
                    allow_redirects=False,  # a 3xx is an error (``status_error_of``)
                ) as response:
                    raw = await response.read()
                    status, response_headers = response.status, response.headers
                ticket.saw(status, response_headers)
                data = parse(endpoint, status, response_headers, raw)
            except BaseException as exc:
                # ``upstream_errors``, unrolled: no context manager entered per attempt.
                error = upstream_error(exc, endpoint.name, endpoint.secrets)
                ticket.close(error)
                self._told_billed(payload, error)
                if error is exc:
                    raise
                raise error from shown_cause(exc, endpoint.secrets)
        except Exception as exc:
            if not first:
                raise  # a retry's failure: ``Retrier.after`` counts the attempts
            if not self._retrier.may_retry(exc):
                counted(exc, 1)
                raise
            return await self._again(exc, endpoint, path, payload, deadline, waiting, parse)
        if ticket is not UNADMITTED:
            ticket.close(None, total_tokens(data))
        return data

    async def _again(
        self,
        failed: Exception,
        endpoint: Endpoint,
        path: str,
        payload: bytes,
        deadline: float | None,
        waiting: Waiting | None,
        parse: Parse,
    ) -> dict[str, Any]:
        """The retries of a request whose first attempt failed with ``failed``, which may
        be retried: tenacity's, entered only now."""

        async def attempt(retry: bool) -> dict[str, Any]:
            return await self._send(endpoint, path, payload, deadline, waiting, retry, parse)

        data, _ = await self._retrier.after(failed, attempt, deadline)
        return data

    async def aclose(self) -> None:
        """Close the HTTP session; no request is sent after this. Idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _headers_of(self, endpoint: Endpoint) -> dict[str, str]:
        """``request_headers(endpoint)``, built once per endpoint rather than per request
        (a call with headers of its own is another ``Endpoint``: it builds its own). Read
        only: aiohttp copies what it is given."""
        known = self._endpoint_headers.get(endpoint.name)
        if known is not None and known[0] is endpoint:
            return known[1]
        headers = request_headers(endpoint)
        if len(self._endpoint_headers) >= _MAX_ENDPOINT_HEADERS:
            self._endpoint_headers.clear()
        self._endpoint_headers[endpoint.name] = (endpoint, headers)
        return headers

    def _session_for_loop(self) -> aiohttp.ClientSession:
        if self._closed:
            # A session opened now would never be closed ("Unclosed client session").
            raise ClientClosedError("Client is closed")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._timeouts.max_connections, enable_cleanup_closed=True
                ),
                timeout=aiohttp.ClientTimeout(
                    total=self._timeouts.total, sock_connect=self._timeouts.connect
                ),
                headers=self._headers,
                raise_for_status=False,
                # No cookies kept: one caller's (a gateway's session, Cloudflare's) would
                # go out with the next call, whoever makes it (``limpet serve``'s callers
                # bring keys of their own).
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    def _told_billed(self, payload: bytes, error: BaseException) -> None:
        """Tell ``billed`` of an attempt that failed with an answer paid for."""
        billed = self.billed
        if billed is not None and isinstance(error, APIGenerationError) and error.billed:
            billed(payload, error.billed)

    async def _open_stream(
        self, endpoint: Endpoint, payload: bytes, saw: Seen | None = None
    ) -> aiohttp.ClientResponse:
        """The response of a stream request once its status says chunks will follow."""
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeouts.connect, sock_read=self._timeouts.total
        )
        with upstream_errors(endpoint.name, endpoint.secrets):
            response = await self._session_for_loop().post(
                join_url(endpoint.base_url, "/chat/completions"),
                data=sendable(payload),
                headers={**self._headers_of(endpoint), "Accept": "text/event-stream"},
                timeout=timeout,
                allow_redirects=False,  # a 3xx is an error (``status_error_of``)
            )
            if saw is not None:
                saw(response.status, response.headers)
            if response.status == 200 and response.content_type == "text/event-stream":
                return response
            try:
                raw = await response.read()
            finally:
                response.release()
            parse_chat(endpoint, response.status, response.headers, raw)  # raises for an error
            raise APIResponseError(
                "a stream was asked for but the answer is not an event stream",
                status_code=response.status,
                body=excerpt(raw, endpoint.secrets),
                endpoint=endpoint.name,
            )
