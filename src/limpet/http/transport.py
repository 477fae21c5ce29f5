"""HTTP to OpenAI-compatible endpoints: one aiohttp session, retries, error mapping.

aiohttp's and tenacity's exceptions stop here; callers see only ``limpet.errors``. Every
request, and the parsing of its answer, runs inside ``limpet.errors.upstream_errors``, so
an error is mapped and scrubbed of the endpoint's secrets before a retry logs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base

from limpet._version import __version__
from limpet.config import AdmissionConfig, Endpoint, RetryConfig, Timeouts
from limpet.errors import (
    BODY_EXCERPT_CHARS,
    APIConnectionError,
    APIGenerationError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    ClientClosedError,
    excerpt,
    scrub,
    status_error,
    upstream_errors,
)
from limpet.http.admission import Admissions
from limpet.http.admission_rules import estimated_tokens, total_tokens
from limpet.http.admission_slots import REFUSALS, Seen, Ticket
from limpet.http.chunks import stream_error
from limpet.http.retry import backoff_delay, parse_retry_after, should_retry
from limpet.http.sse import SSEDecoder

__all__ = ["BODY_EXCERPT_CHARS", "Transport", "UpstreamResponse"]

logger = logging.getLogger("limpet.transport")

_REQUEST_ID_HEADERS = ("x-generation-id", "x-request-id", "request-id")


#: Told what a call waits for now, for a timeout's message (``Call.waiting_for``).
Waiting = Callable[[str], None]


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
        admission: how attempts are admitted to each endpoint (``limpet.http.admission``);
            None sends every attempt at once.
    """

    __slots__ = ("_admissions", "_closed", "_headers", "_retry", "_session", "_timeouts")

    def __init__(
        self,
        *,
        timeouts: Timeouts,
        retry: RetryConfig,
        headers: Mapping[str, str] | None = None,
        admission: AdmissionConfig | None = None,
    ) -> None:
        self._timeouts = timeouts
        self._retry = retry
        self._admissions = (
            None if admission is None else Admissions(admission, max_pause=retry.max_retry_after)
        )
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
        waiting: Waiting | None = None,
    ) -> UpstreamResponse:
        """POST ``body`` to ``{endpoint.base_url}/chat/completions``, retrying what may pass.

        Args:
            headers: this call's own headers (the OpenAI SDK's ``extra_headers``); they win.
            deadline: event-loop time past which no retry is started: a backoff that would
                end after it gives up at once with the last error. The caller bounds the
                call itself (``asyncio.timeout``). It covers the wait for admission: a call
                that cannot be admitted before it fails with ``APITimeoutError``, unsent.
            waiting: told what the call waits for as that changes (admission, an answer).

        Raises:
            APIStatusError: a non-2xx answer (after retries, when retryable).
            APIConnectionError: no answer (``APITimeoutError`` when it was a timeout).
            APIResponseError: a 2xx answer that is not a chat completion.
            APIGenerationError: a 200 whose generation failed (``finish_reason: "error"``),
                after retries.
        """
        endpoint = _as_sent(endpoint, headers)
        payload = orjson.dumps({**(endpoint.extra_body or {}), **body})
        retrying = self._retrying(deadline)
        async for attempt in retrying:
            with attempt:
                retry = attempt.retry_state.attempt_number > 1
                async with self._admitted(endpoint, payload, deadline, waiting, retry) as ticket:
                    data = await self._post(endpoint, "/chat/completions", payload, saw=ticket.saw)
                    ticket.used_tokens = total_tokens(data)
        # reraise=True: reaching here means the last attempt returned.
        return UpstreamResponse(
            body=data, endpoint=endpoint.name, attempts=retrying.statistics["attempt_number"]
        )

    async def embeddings(
        self,
        endpoint: Endpoint,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        deadline: float | None = None,
    ) -> UpstreamResponse:
        """POST ``body`` to ``{endpoint.base_url}/embeddings``, admitted and retried as
        ``chat`` is (the endpoint's cap, learned limit and pause hold for embeddings too).

        Raises:
            As ``chat``; ``APIResponseError`` for a 2xx without a ``data`` list.
        """
        endpoint = _as_sent(endpoint, headers)
        payload = orjson.dumps({**(endpoint.extra_body or {}), **body})
        retrying = self._retrying(deadline)
        async for attempt in retrying:
            with attempt:
                retry = attempt.retry_state.attempt_number > 1
                async with self._admitted(endpoint, payload, deadline, None, retry) as ticket:
                    data = await self._post(
                        endpoint, "/embeddings", payload, _parse_embeddings, saw=ticket.saw
                    )
                    ticket.used_tokens = total_tokens(data)
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
        waiting: Waiting | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """POST ``body`` with ``stream: true`` and yield each chunk as it arrives.

        Opening the stream is retried like ``chat``; once chunks flow, a failure is final
        (a retry would repeat what the caller already has). ``headers``, ``deadline`` and
        ``waiting`` are as ``chat``'s; the stream holds its admission slot until it ends.

        Raises:
            APIStatusError, APIConnectionError, APITimeoutError: as ``chat``, before or
                (connection) after the first chunk.
            APIStreamError: the upstream reported a failure inside the stream.
            APIResponseError: a chunk that is not JSON.
        """
        endpoint = _as_sent(endpoint, headers)
        payload = orjson.dumps({**(endpoint.extra_body or {}), **body, "stream": True})
        response: aiohttp.ClientResponse | None = None
        ticket: Ticket | None = None
        async for attempt in self._retrying(deadline):
            with attempt:
                retry = attempt.retry_state.attempt_number > 1
                ticket = await self._admit(endpoint, payload, deadline, waiting, retry)
                try:
                    response = await self._open_stream(endpoint, payload, ticket.saw)
                except BaseException as exc:
                    ticket.close(exc)
                    raise
        assert response is not None and ticket is not None
        decoder = SSEDecoder()
        try:
            with upstream_errors(endpoint.name, endpoint.secrets, stream=True):
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
        finally:
            response.release()
            ticket.close(None)

    async def get_json(self, endpoint: Endpoint, path: str) -> object:
        """GET ``{endpoint.base_url}{path}`` once, without retries, and return its JSON
        (for listings such as ``/models``).

        Raises:
            APIStatusError: a non-2xx answer.
            APIConnectionError: no answer (``APITimeoutError`` when it was a timeout).
            APIResponseError: a 2xx answer that is not JSON.
        """
        with upstream_errors(endpoint.name, endpoint.secrets):
            async with self._session_for_loop().get(
                endpoint.base_url + path, headers=_request_headers(endpoint)
            ) as response:
                raw = await response.read()
                status, headers = response.status, response.headers
            text = excerpt(raw, endpoint.secrets)
            body = _json(raw)
            if not 200 <= status < 300:
                raise _status_error(endpoint, status, headers, body, text)
            if body is None:
                raise APIResponseError(
                    "response is not JSON", status_code=status, body=text, endpoint=endpoint.name
                )
            return body

    @property
    def admissions(self) -> Admissions | None:
        """Every endpoint's admission (limits, queues, pauses), or None when it is off."""
        return self._admissions

    @contextlib.asynccontextmanager
    async def _admitted(
        self,
        endpoint: Endpoint,
        payload: bytes,
        deadline: float | None,
        waiting: Waiting | None,
        retry: bool,
    ) -> AsyncIterator[Ticket]:
        """One attempt's place on the wire, given back with its verdict when it ends."""
        ticket = await self._admit(endpoint, payload, deadline, waiting, retry)
        try:
            yield ticket
        except BaseException as exc:
            ticket.close(exc)
            raise
        ticket.close(None)

    async def _admit(
        self,
        endpoint: Endpoint,
        payload: bytes,
        deadline: float | None,
        waiting: Waiting | None,
        retry: bool,
    ) -> Ticket:
        """Wait (first come, first served; a retry first of all) for a place on the wire.

        Raises:
            APITimeoutError: the deadline passes, or the endpoint's pause outlasts it,
                before the call is admitted; nothing was sent.
        """
        if self._admissions is None:
            return Ticket(None)
        admission = self._admissions.of(endpoint)
        queued = (
            f"admission to endpoint {endpoint.name!r}, queued behind other calls (nothing sent)"
        )
        if deadline is not None and admission.paused_until >= deadline:
            raise _QueuedTooLong(
                f"endpoint {endpoint.name!r} is paused by its rate limit past the call's "
                "deadline; the call was queued for admission and nothing was sent",
                endpoint=endpoint.name,
            )
        if waiting is not None:
            waiting(queued)
        scope = asyncio.timeout_at(deadline)
        try:
            async with scope:
                tokens = estimated_tokens(payload) if admission.counts_tokens else 0.0
                slot = await admission.acquire(tokens, first=retry)
        except TimeoutError:
            if not scope.expired():
                raise
            raise _QueuedTooLong(
                f"the call's deadline passed while it was queued for admission to endpoint "
                f"{endpoint.name!r}; nothing was sent",
                endpoint=endpoint.name,
            ) from None
        if waiting is not None:
            waiting(f"an answer from endpoint {endpoint.name!r}")
        return Ticket(slot)

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
            retry=retry_if_exception(_retryable),
            before_sleep=_log_retry,
            reraise=True,
        )

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if self._admissions is not None and retry_after is not None and _refusal(exc):
            return 0.0  # the endpoint's shared pause holds the retry, and everyone else
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
        self, endpoint: Endpoint, payload: bytes, saw: Seen | None = None
    ) -> aiohttp.ClientResponse:
        """The response of a stream request once its status says chunks will follow."""
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeouts.connect, sock_read=self._timeouts.total
        )
        with upstream_errors(endpoint.name, endpoint.secrets):
            response = await self._session_for_loop().post(
                endpoint.base_url + "/chat/completions",
                data=payload,
                headers={**_request_headers(endpoint), "Accept": "text/event-stream"},
                timeout=timeout,
            )
            if saw is not None:
                saw(response.status, response.headers)
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
                body=excerpt(raw, endpoint.secrets),
                endpoint=endpoint.name,
            )

    async def _post(
        self,
        endpoint: Endpoint,
        path: str,
        payload: bytes,
        parse: Callable[[Endpoint, int, Mapping[str, str], bytes], dict[str, Any]] | None = None,
        saw: Seen | None = None,
    ) -> dict[str, Any]:
        headers = _request_headers(endpoint)
        url = endpoint.base_url + path
        with upstream_errors(endpoint.name, endpoint.secrets):
            async with self._session_for_loop().post(url, data=payload, headers=headers) as resp:
                raw = await resp.read()
                status, response_headers = resp.status, resp.headers
            if saw is not None:
                saw(status, response_headers)
            return (parse or _parse)(endpoint, status, response_headers, raw)


class _QueuedTooLong(APITimeoutError):
    """The call could not be admitted before its deadline; final, never retried."""


def _retryable(exc: BaseException) -> bool:
    return should_retry(exc) and not isinstance(exc, _QueuedTooLong)


def _refusal(exc: BaseException | None) -> bool:
    return isinstance(exc, APIStatusError) and exc.status_code in REFUSALS


def _as_sent(endpoint: Endpoint, headers: Mapping[str, str] | None) -> Endpoint:
    """``endpoint`` with one call's own headers on top of its own (they win), so they
    are sent, and scrubbed from every error, exactly like the endpoint's."""
    if not headers:
        return endpoint
    return replace(endpoint, headers={**(endpoint.headers or {}), **headers})


class _StopBefore(stop_base):
    """Stop retrying when the next backoff would end past ``deadline`` (loop time)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        now = asyncio.get_running_loop().time()
        return now + retry_state.upcoming_sleep >= self.deadline


def _request_headers(endpoint: Endpoint) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    headers.update(endpoint.headers or {})  # a call's own Authorization wins (_as_sent)
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
            body=excerpt(data.encode(), endpoint.secrets),
            endpoint=endpoint.name,
        )
    error = stream_error(chunk, endpoint.name)
    if error is not None:
        raise error
    return chunk


def _parse(
    endpoint: Endpoint, status: int, headers: Mapping[str, str], raw: bytes
) -> dict[str, Any]:
    """The chat completion a response carries; raises the error it reports instead."""
    body, text = _answer(endpoint, status, headers, raw, "choices")
    if not _is_chat_completion(body):
        raise APIResponseError(
            "response is not a chat completion (no choices[0].message)",
            status_code=status,
            body=text,
            endpoint=endpoint.name,
        )
    failed = _failed_generation(body, endpoint)
    if failed is not None:
        raise failed
    return body


def _parse_embeddings(
    endpoint: Endpoint, status: int, headers: Mapping[str, str], raw: bytes
) -> dict[str, Any]:
    """The embeddings a response carries; raises the error it reports instead."""
    body, text = _answer(endpoint, status, headers, raw, "data")
    if not isinstance(body.get("data"), list):
        raise APIResponseError(
            "response is not an embedding list (no data list)",
            status_code=status,
            body=text,
            endpoint=endpoint.name,
        )
    return body


def _answer(
    endpoint: Endpoint, status: int, headers: Mapping[str, str], raw: bytes, field: str
) -> tuple[dict[str, Any], str]:
    """A successful response's JSON object and its scrubbed excerpt; raises the error a
    response reports instead, a status or (OpenRouter) an error inside a 200 without the
    answer's ``field``."""
    text = excerpt(raw, endpoint.secrets)
    body = _json(raw)
    if 200 <= status < 300 and isinstance(body, dict) and "error" in body and field not in body:
        # OpenRouter can report a failure inside a 200; its error code is an HTTP status.
        code = _error_code(body["error"])
        status = code if code is not None and 400 <= code < 600 else 502
    if not 200 <= status < 300:
        raise _status_error(endpoint, status, headers, body, text)
    if not isinstance(body, dict):
        what = "not JSON" if body is None else "not a JSON object"
        raise APIResponseError(
            f"response is {what}", status_code=status, body=text, endpoint=endpoint.name
        )
    return body, text


def _status_error(
    endpoint: Endpoint, status: int, headers: Mapping[str, str], body: object, text: str
) -> APIStatusError:
    return status_error(status)(
        _error_message(body, endpoint.secrets) or text or "(empty body)",
        status_code=status,
        body=text,
        request_id=_request_id(headers, body),
        retry_after=parse_retry_after(headers),
        endpoint=endpoint.name,
    )


def _failed_generation(body: Mapping[str, Any], endpoint: Endpoint) -> APIGenerationError | None:
    """The failure a 200 reports with ``finish_reason: "error"`` on a choice, or None.

    OpenRouter puts the error on the choice (``choices[i].error``) or beside the choices;
    either way the answer is not whole, so none of it is returned or cached.
    """
    for choice in body["choices"]:
        if isinstance(choice, dict) and choice.get("finish_reason") == "error":
            error = choice.get("error") or body.get("error")
            return APIGenerationError(
                _error_message({"error": error}, endpoint.secrets) or "the generation failed",
                status_code=_error_code(error),
                endpoint=endpoint.name,
            )
    return None


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


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _error_message(body: object, secrets: Iterable[str]) -> str | None:
    """The message of an OpenRouter error body (``{"error": {"message"}}`` or
    ``{"error": "..."}``), scrubbed before it is cut; None when it has none."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    if not isinstance(error, str) or not error:
        return None
    return scrub(error, secrets)[:BODY_EXCERPT_CHARS]


def _error_code(error: object) -> int | None:
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _request_id(headers: Mapping[str, str], body: object) -> str | None:
    for name in _REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    if isinstance(body, dict) and isinstance(body.get("id"), str):
        return str(body["id"])
    return None


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    logger.info(
        "limpet: attempt %d failed (%s); retrying in %.2fs", state.attempt_number, exc, wait
    )
