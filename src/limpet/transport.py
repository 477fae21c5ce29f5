"""HTTP to OpenAI-compatible endpoints: one aiohttp session, retries, error mapping.

aiohttp's and tenacity's exceptions stop here; callers see only ``limpet.errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base

from limpet._version import __version__
from limpet.config import Endpoint, RetryConfig, Timeouts
from limpet.errors import (
    APIConnectionError,
    APIResponseError,
    APITimeoutError,
    ClientClosedError,
    status_error,
)
from limpet.retry import backoff_delay, parse_retry_after, should_retry
from limpet.sse import SSEDecoder
from limpet.streaming import stream_error

__all__ = ["BODY_EXCERPT_CHARS", "Transport", "UpstreamResponse"]

logger = logging.getLogger("limpet.transport")

#: How much of an error body is kept on the exception.
BODY_EXCERPT_CHARS = 500

_SCRUB_WINDOW = 64 * 1024
_REQUEST_ID_HEADERS = ("x-generation-id", "x-request-id", "request-id")


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """A chat completion as received.

    Attributes:
        body: the parsed JSON body, checked to be a chat completion.
        endpoint: name of the endpoint that answered.
        attempts: how many attempts it took.
    """

    body: dict[str, Any]
    endpoint: str
    attempts: int


class Transport:
    """Posts chat completions with retries; owns one ``aiohttp.ClientSession``.

    The session is created on first use, inside the running event loop.

    Args:
        timeouts: connect and total timeouts per attempt, and the connection pool size.
        retry: attempts and backoff.
        headers: sent with every request (attribution headers such as ``HTTP-Referer``);
            an endpoint's own headers win.
    """

    __slots__ = ("_closed", "_headers", "_retry", "_session", "_timeouts")

    def __init__(
        self,
        *,
        timeouts: Timeouts,
        retry: RetryConfig,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._timeouts = timeouts
        self._retry = retry
        self._headers = {"User-Agent": f"limpet/{__version__}", **(headers or {})}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def chat(
        self,
        endpoint: Endpoint,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        deadline: float | None = None,
    ) -> UpstreamResponse:
        """POST ``body`` to ``{endpoint.base_url}/chat/completions``, retrying what may pass.

        Args:
            headers: this call's own headers (the OpenAI SDK's ``extra_headers``); they win.
            deadline: event-loop time past which no retry is started: a backoff that would
                end after it gives up at once with the last error. The caller bounds the
                call itself (``asyncio.timeout``).

        Raises:
            APIStatusError: a non-2xx answer (after retries, when retryable).
            APIConnectionError: no answer (``APITimeoutError`` when it was a timeout).
            APIResponseError: a 2xx answer that is not a chat completion.
        """
        payload = orjson.dumps({**(endpoint.extra_body or {}), **body})
        retrying = self._retrying(deadline)
        async for attempt in retrying:
            with attempt:
                data = await self._post(endpoint, "/chat/completions", payload, headers)
        # reraise=True: reaching here means the last attempt returned.
        return UpstreamResponse(
            body=data, endpoint=endpoint.name, attempts=retrying.statistics["attempt_number"]
        )

    async def stream(
        self,
        endpoint: Endpoint,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        deadline: float | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """POST ``body`` with ``stream: true`` and yield each chunk as it arrives.

        Opening the stream is retried like ``chat``; once chunks flow, a failure is final
        (a retry would repeat what the caller already has). ``headers`` and ``deadline``
        are as ``chat``'s.

        Raises:
            APIStatusError, APIConnectionError, APITimeoutError: as ``chat``, before or
                (connection) after the first chunk.
            APIStreamError: the upstream reported a failure inside the stream.
            APIResponseError: a chunk that is not JSON.
        """
        payload = orjson.dumps({**(endpoint.extra_body or {}), **body, "stream": True})
        response: aiohttp.ClientResponse | None = None
        async for attempt in self._retrying(deadline):
            with attempt:
                response = await self._open_stream(endpoint, payload, headers)
        assert response is not None
        decoder = SSEDecoder()
        try:
            async for piece in response.content.iter_any():
                for data in decoder.feed(piece):
                    if data == "[DONE]":
                        return
                    yield _stream_chunk(endpoint, data)
            for data in decoder.close():
                if data == "[DONE]":
                    return
                yield _stream_chunk(endpoint, data)
            raise APIConnectionError(
                f"stream from endpoint {endpoint.name!r} ended before [DONE]",
                endpoint=endpoint.name,
            )
        except TimeoutError as exc:
            raise APITimeoutError(
                f"stream from endpoint {endpoint.name!r} stalled past the timeout",
                endpoint=endpoint.name,
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise APIConnectionError(
                f"stream from endpoint {endpoint.name!r} broke: {type(exc).__name__}",
                endpoint=endpoint.name,
            ) from exc
        finally:
            response.release()

    async def get_json(self, endpoint: Endpoint, path: str) -> object:
        """GET ``{endpoint.base_url}{path}`` once, without retries, and return its JSON
        (for listings such as ``/models``).

        Raises:
            APIStatusError: a non-2xx answer.
            APIConnectionError: no answer (``APITimeoutError`` when it was a timeout).
            APIResponseError: a 2xx answer that is not JSON.
        """
        with _mapped_errors(endpoint):
            async with self._session_for_loop().get(
                endpoint.base_url + path, headers=_request_headers(endpoint)
            ) as response:
                raw = await response.read()
                status, headers = response.status, response.headers
        excerpt = _excerpt(raw, endpoint.secrets)
        try:
            body: object = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not 200 <= status < 300:
            raise status_error(status)(
                _scrub(_error_message(body, excerpt), endpoint.secrets),
                status_code=status,
                body=excerpt,
                request_id=_request_id(headers, body),
                retry_after=parse_retry_after(headers),
                endpoint=endpoint.name,
            )
        if body is None:
            raise APIResponseError(
                "response is not JSON", status_code=status, body=excerpt, endpoint=endpoint.name
            )
        return body

    async def aclose(self) -> None:
        """Close the HTTP session; no request is sent after this. Idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _retrying(self, deadline: float | None = None) -> AsyncRetrying:
        stop: stop_base = stop_after_attempt(self._retry.max_attempts)
        if deadline is not None:
            stop = stop | _StopBefore(deadline)
        return AsyncRetrying(
            stop=stop,
            wait=self._wait,
            retry=retry_if_exception(should_retry),
            before_sleep=_log_retry,
            reraise=True,
        )

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        return backoff_delay(state.attempt_number, self._retry, retry_after)

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
            )
        return self._session

    async def _open_stream(
        self, endpoint: Endpoint, payload: bytes, headers: Mapping[str, str] | None
    ) -> aiohttp.ClientResponse:
        """The response of a stream request once its status says chunks will follow."""
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeouts.connect, sock_read=self._timeouts.total
        )
        with _mapped_errors(endpoint):
            response = await self._session_for_loop().post(
                endpoint.base_url + "/chat/completions",
                data=payload,
                headers={
                    **_request_headers(endpoint),
                    "Accept": "text/event-stream",
                    **(headers or {}),
                },
                timeout=timeout,
            )
            if response.status == 200 and response.content_type == "text/event-stream":
                return response
            try:
                raw = await response.read()
            finally:
                response.release()
        _parse(endpoint, response.status, response.headers, raw)  # raises for an error
        raise APIResponseError(
            "a stream was asked for but the answer is not an event stream",
            status_code=response.status,
            body=_excerpt(raw, endpoint.secrets),
            endpoint=endpoint.name,
        )

    async def _post(
        self,
        endpoint: Endpoint,
        path: str,
        payload: bytes,
        extra_headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        headers = _request_headers(endpoint)
        if extra_headers:
            headers.update(extra_headers)
        url = endpoint.base_url + path
        with _mapped_errors(endpoint):
            async with self._session_for_loop().post(url, data=payload, headers=headers) as resp:
                raw = await resp.read()
                status, response_headers = resp.status, resp.headers
        return _parse(endpoint, status, response_headers, raw)


class _StopBefore(stop_base):
    """Stop retrying when the next backoff would end past ``deadline`` (loop time)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        now = asyncio.get_running_loop().time()
        return now + retry_state.upcoming_sleep >= self.deadline


@contextlib.contextmanager
def _mapped_errors(endpoint: Endpoint) -> Iterator[None]:
    """aiohttp's and the OS's failures, as limpet's: the one place they are mapped."""
    try:
        yield
    except TimeoutError as exc:
        raise APITimeoutError(
            f"no answer from endpoint {endpoint.name!r} within the timeout",
            endpoint=endpoint.name,
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise APIConnectionError(
            f"connection to endpoint {endpoint.name!r} failed: {type(exc).__name__}",
            endpoint=endpoint.name,
        ) from exc


def _request_headers(endpoint: Endpoint) -> dict[str, str]:
    headers = {"Content-Type": "application/json", **(endpoint.headers or {})}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    return headers


def _stream_chunk(endpoint: Endpoint, data: str) -> dict[str, Any]:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        chunk = None
    if not isinstance(chunk, dict):
        raise APIResponseError(
            "a stream chunk is not a JSON object",
            status_code=200,
            body=_scrub(data[:BODY_EXCERPT_CHARS], endpoint.secrets),
            endpoint=endpoint.name,
        )
    error = stream_error(chunk, endpoint.name)
    if error is not None:
        raise error
    return chunk


def _parse(
    endpoint: Endpoint, status: int, headers: Mapping[str, str], raw: bytes
) -> dict[str, Any]:
    excerpt = _excerpt(raw, endpoint.secrets)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if 200 <= status < 300 and isinstance(body, dict) and "error" in body and "choices" not in body:
        # OpenRouter can report a failure inside a 200; its error code is an HTTP status.
        code = body["error"].get("code") if isinstance(body["error"], dict) else None
        status = code if isinstance(code, int) and 400 <= code < 600 else 502
    if not 200 <= status < 300:
        error_cls = status_error(status)
        raise error_cls(
            _scrub(_error_message(body, excerpt), endpoint.secrets),
            status_code=status,
            body=excerpt,
            request_id=_request_id(headers, body),
            retry_after=parse_retry_after(headers),
            endpoint=endpoint.name,
        )
    if body is None:
        raise APIResponseError(
            "response is not JSON", status_code=status, body=excerpt, endpoint=endpoint.name
        )
    if not _is_chat_completion(body):
        raise APIResponseError(
            "response is not a chat completion (no choices[0].message)",
            status_code=status,
            body=excerpt,
            endpoint=endpoint.name,
        )
    result: dict[str, Any] = body
    return result


def _is_chat_completion(body: object) -> bool:
    if not isinstance(body, dict):
        return False
    choices = body.get("choices")
    return (
        isinstance(choices, list)
        and bool(choices)
        and isinstance(choices[0], dict)
        and isinstance(choices[0].get("message"), dict)
    )


def _error_message(body: object, excerpt: str) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:BODY_EXCERPT_CHARS]
        if isinstance(error, str):
            return error[:BODY_EXCERPT_CHARS]
    return excerpt or "(empty body)"


def _request_id(headers: Mapping[str, str], body: object) -> str | None:
    for name in _REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    if isinstance(body, dict) and isinstance(body.get("id"), str):
        return str(body["id"])
    return None


def _excerpt(raw: bytes, secrets: tuple[str, ...]) -> str:
    # Scrub before cutting, so a secret straddling the cut cannot leak in part.
    text = raw[:_SCRUB_WINDOW].decode("utf-8", errors="replace")
    return _scrub(text, secrets)[:BODY_EXCERPT_CHARS]


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    logger.info(
        "limpet: attempt %d failed (%s); retrying in %.2fs", state.attempt_number, exc, wait
    )
