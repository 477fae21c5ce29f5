"""``FakeEndpoint``: the state of one fake provider instance behind a ``FakeGateway``."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import Any

from limpet.testing.faults import (
    DelayFault,
    DropConnectionFault,
    EarlyDoneFault,
    EchoAuthorizationFault,
    EchoShape,
    Fault,
    GenerationErrorFault,
    MalformedBodyFault,
    NoUsageFault,
    StatusFault,
    StreamErrorFault,
    WrongShapeFault,
)
from limpet.testing.provider_cache import (
    NoPromptCache,
    PromptCacheModel,
    PromptCacheResult,
    cached_latency,
)
from limpet.testing.rate_limits import RateLimits


class FakeEndpoint:
    """One endpoint of a ``FakeGateway``: counters, availability, latency and queued faults.

    A chat request to the endpoint goes through these steps, and stops at the first that
    answers: count it in ``calls``; 401 without the gateway's API key; 503 while the
    endpoint is down; 400 for a body that is not JSON (otherwise it is appended to
    ``requests``) or not a valid chat request; the next queued fault, if any; then, after
    ``latency`` seconds, the completion, counted in ``completions``. So a fault is used
    up only by a request that would otherwise have succeeded. Status faults and dropped
    connections strike at once; the other faults wait ``latency`` like an answer.

    Example:
        >>> ep = FakeEndpoint("a")
        >>> ep.fail(429, times=2, retry_after=1)   # the next two requests get 429
        >>> ep.latency = 0.05                        # then answers take 50 ms

    Attributes:
        name: the endpoint's name, its URL prefix and the ``provider`` of its answers.
        latency: seconds every answer waits before it is sent; settable.
        up: False after ``take_down()``; requests then get 503.
        calls: chat requests received, failed or not.
        completions: chat completions answered in full.
        in_flight: chat requests being answered right now.
        max_in_flight: the most chat requests answered at once since the last reset.
        model_listings: ``GET /models`` requests received.
        requests: the JSON bodies received, in order (not those that were not JSON).
        last_headers: the HTTP headers of the last chat request received (Authorization
            blanked), matched without regard to case, or None.
        prompt_cache: decides cache reads and writes reported in ``usage``.
        always_stream_usage: send usage at the end of every stream, as OpenRouter does;
            False (the default) sends it only when the request's
            ``stream_options.include_usage`` is true, as OpenAI does. Settable.
        rate_limited: 429s answered by the limits of ``limit()`` and ``close_for()``.

    Rate limits (``limit()``, ``close_for()``) are checked before anything else: a
    request over them is counted in ``calls`` and ``rate_limited`` and answered 429 with
    ``Retry-After``, ``retry-after-ms`` and OpenAI's ``x-ratelimit-*`` headers, by the
    endpoint's ``RateLimits``.
    """

    __slots__ = (
        "_answer_gate",
        "_call_waiters",
        "_calls",
        "_faults",
        "_rate_limits",
        "_stream_gate",
        "always_stream_usage",
        "completions",
        "in_flight",
        "last_headers",
        "latency",
        "max_in_flight",
        "model_listings",
        "name",
        "prompt_cache",
        "requests",
        "stream_pause_after",
        "up",
    )

    def __init__(
        self,
        name: str,
        *,
        latency: float = 0.0,
        prompt_cache: PromptCacheModel | None = None,
    ) -> None:
        self.name = name
        self.latency = latency
        self.prompt_cache: PromptCacheModel = prompt_cache or NoPromptCache()
        self.up = True
        self.always_stream_usage = False
        self._calls = 0
        self._call_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.stream_pause_after: int | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        self._stream_gate = asyncio.Event()
        self._answer_gate = asyncio.Event()
        self._answer_gate.set()
        self.completions = 0
        self.model_listings = 0
        self.requests: list[dict[str, Any]] = []
        self.last_headers: Mapping[str, str] | None = None
        self._faults: deque[Fault] = deque()
        self._rate_limits = RateLimits()

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        return (
            f"FakeEndpoint({self.name!r}, {state}, calls={self.calls}, "
            f"completions={self.completions}, pending_faults={len(self._faults)})"
        )

    @property
    def calls(self) -> int:
        """Chat requests received, failed or not."""
        return self._calls

    @calls.setter
    def calls(self, value: int) -> None:
        self._calls = value
        waiting = []
        for target, future in self._call_waiters:
            if value >= target:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((target, future))
        self._call_waiters = waiting

    @property
    def rate_limited(self) -> int:
        """429s answered by the limits of ``limit()`` and ``close_for()``."""
        return self._rate_limits.refused

    @rate_limited.setter
    def rate_limited(self, value: int) -> None:
        self._rate_limits.refused = value

    def pause_stream(self, after_chunks: int) -> None:
        """Hold every stream after ``after_chunks`` chunks until ``resume_stream()``, so a
        test can act while a stream is part-way through."""
        self.stream_pause_after = after_chunks
        self._stream_gate.clear()

    def resume_stream(self) -> None:
        self.stream_pause_after = None
        self._stream_gate.set()

    def hold_answers(self) -> None:
        """Hold every chat request, once counted in ``calls``, and every embedding
        request, once in ``FakeEmbeddings.requests``, until ``release_answers()``:
        a test can act while a request is known to be upstream (say, let another process
        start following it) however fast the answer would be."""
        self._answer_gate.clear()

    def release_answers(self) -> None:
        self._answer_gate.set()

    async def answer_gate(self) -> None:
        """Wait here while ``hold_answers()`` holds requests."""
        await self._answer_gate.wait()

    async def stream_gate(self, index: int) -> None:
        """Wait here before chunk ``index`` while a pause holds it."""
        if self.stream_pause_after is not None and index == self.stream_pause_after:
            await self._stream_gate.wait()

    async def wait_for_calls(self, count: int) -> None:
        """Return once this endpoint has received ``count`` chat requests.

        Lets a test act at a known point (say, once the leader's request is upstream)
        without sleeping.
        """
        if self._calls >= count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._call_waiters.append((count, future))
        await future

    @property
    def pending_faults(self) -> tuple[Fault, ...]:
        """The faults still queued, next first."""
        return tuple(self._faults)

    @property
    def last_request(self) -> dict[str, Any] | None:
        """The last JSON body received, or None."""
        return self.requests[-1] if self.requests else None

    def fail(
        self,
        status: int,
        times: int = 1,
        *,
        retry_after: float | None = None,
        retry_after_ms: float | None = None,
        message: str | None = None,
        after: float = 0.0,
    ) -> None:
        """Answer the next ``times`` requests with ``status`` and an OpenRouter error body.

        Args:
            status: an HTTP error status, 400 to 599.
            times: how many requests get it.
            retry_after: seconds to send in a ``Retry-After`` header.
            retry_after_ms: milliseconds to send in a ``retry-after-ms`` header.
            message: the error message; a gateway-like default when None.
            after: seconds to take before answering (by default at once).

        Raises:
            ValueError: a status outside 400-599, or ``times`` < 1.
        """
        fault = StatusFault(status, message, retry_after, retry_after_ms, after)
        self._queue(fault, times)

    def delay(self, seconds: float, times: int = 1) -> None:
        """Answer the next ``times`` requests ``seconds`` late, to trip client timeouts."""
        self._queue(DelayFault(seconds), times)

    def drop_connection(self, times: int = 1, *, after_chunks: int | None = None) -> None:
        """Close the connection of the next ``times`` requests without an answer.

        Args:
            times: how many requests get it.
            after_chunks: for stream requests, drop after this many content chunks.
        """
        self._queue(DropConnectionFault(after_chunks), times)

    def malformed(self, times: int = 1) -> None:
        """Answer the next ``times`` requests 200 with a body that is not JSON."""
        self._queue(MalformedBodyFault(), times)

    def wrong_shape(self, times: int = 1) -> None:
        """Answer the next ``times`` requests 200 with JSON that is not a chat completion."""
        self._queue(WrongShapeFault(), times)

    def stream_error(
        self,
        after_chunks: int = 2,
        times: int = 1,
        *,
        status: int = 502,
        message: str = "Provider disconnected unexpectedly",
    ) -> None:
        """Fail the next ``times`` streams with a mid-stream error chunk after ``after_chunks``.

        A plain (non-stream) request that meets this fault gets ``status`` as an error
        response instead.
        """
        self._queue(StreamErrorFault(after_chunks, status, message), times)

    def end_stream_early(self, after_chunks: int | None = 2, times: int = 1) -> None:
        """End the next ``times`` streams with ``[DONE]`` after ``after_chunks`` content
        chunks, before any choice finished and without usage (None: before any chunk).
        A plain request that meets this fault is answered whole."""
        self._queue(EarlyDoneFault(after_chunks), times)

    def generation_error(
        self,
        times: int = 1,
        *,
        status: int = 502,
        message: str = "Provider disconnected unexpectedly",
    ) -> None:
        """Answer the next ``times`` requests 200 with a generation that failed part-way
        (``finish_reason: "error"``); a stream gets the error chunk after its first chunk."""
        self._queue(GenerationErrorFault(status, message), times)

    def omit_usage(self, times: int = 1) -> None:
        """Answer the next ``times`` requests without usage (no ``usage``, no usage chunk)."""
        self._queue(NoUsageFault(), times)

    def echo_authorization(
        self, shape: EchoShape = "json", times: int = 1, *, status: int = 401
    ) -> None:
        """Fail the next ``times`` requests with an error that echoes the request's
        ``Authorization`` header in ``shape`` (see ``EchoAuthorizationFault``)."""
        self._queue(EchoAuthorizationFault(shape, status), times)

    def limit(
        self,
        *,
        in_flight: int | None = None,
        requests: int | None = None,
        per: float = 60.0,
        retry_after: float | None = None,
    ) -> None:
        """Refuse, with 429, requests beyond ``in_flight`` being answered at once, or
        beyond ``requests`` accepted in any ``per`` seconds (None: no such limit).

        Args:
            retry_after: the ``Retry-After`` of an in-flight refusal; by default the
                endpoint's ``latency`` (a slot frees within one answer). A window's
                refusal says when its oldest request leaves the window.
        """
        self._rate_limits.limit(
            in_flight=in_flight, requests=requests, per=per, retry_after=retry_after
        )

    def close_for(self, seconds: float, now: float) -> None:
        """Refuse every request with 429 until ``seconds`` after ``now`` (gateway clock),
        each saying how long is left in ``Retry-After``."""
        self._rate_limits.close_for(seconds, now)

    def refusal(self, now: float) -> dict[str, str] | None:
        """The headers of a 429 for a request arriving at ``now`` (gateway clock), or
        None when the limits let it through (it is then counted in the window)."""
        return self._rate_limits.refusal(now, in_flight=self.in_flight, latency=self.latency)

    def quota_headers(self, now: float) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*-requests`` headers of an answer sent at ``now``, under
        a ``limit(requests=...)`` window; empty without one."""
        return self._rate_limits.quota_headers(now)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        self._faults.clear()

    def take_down(self) -> None:
        """Answer every chat request with 503 until ``bring_up()``."""
        self.up = False

    def bring_up(self) -> None:
        """Answer chat requests again."""
        self.up = True

    def reset(self) -> None:
        """Zero the counters, forget requests, faults and the prompt cache, and bring it up.

        ``latency`` is configuration, not state, and is kept.
        """
        self.calls = 0
        self.completions = 0
        self.model_listings = 0
        self.max_in_flight = self.in_flight
        self._rate_limits.reset()
        self.requests.clear()
        self.last_headers = None
        self._faults.clear()
        self.prompt_cache.reset()
        self.up = True

    def latency_for(self, cache: PromptCacheResult, prompt_tokens: int) -> float:
        """Seconds to wait before answering a request that met the prompt cache so.

        Real providers answer a cached prefix faster: ``latency``, less up to 80% of it in
        proportion to the prompt read from the cache (``cached_latency``).
        """
        return cached_latency(self.latency, cache, prompt_tokens)

    def take_fault(self) -> Fault | None:
        """Remove and return the next queued fault; the gateway calls this once per request."""
        return self._faults.popleft() if self._faults else None

    def _queue(self, fault: Fault, times: int) -> None:
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        self._faults.extend([fault] * times)
