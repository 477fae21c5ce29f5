"""Faults a ``FakeEndpoint`` can be told to inject, one per request, first in first out.

Each is a small frozen value; ``FakeEndpoint.fail()`` and friends queue them and the
gateway consumes one per chat request that passes auth, availability and validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias


@dataclass(frozen=True, slots=True)
class StatusFault:
    """Answer with an error status and an OpenRouter error body.

    Attributes:
        status: the HTTP status, 400 to 599.
        message: the error message; a gateway-like default per status when None.
        retry_after: seconds for a ``Retry-After`` header, when set.
        retry_after_ms: milliseconds for a ``retry-after-ms`` header, when set.
        after: seconds the gateway takes before it answers (a failure can be slow too).
    """

    status: int
    message: str | None = None
    retry_after: float | None = None
    retry_after_ms: float | None = None
    after: float = 0.0

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {self.status}")


@dataclass(frozen=True, slots=True)
class DelayFault:
    """Answer normally, but only after ``seconds`` more than the endpoint's latency."""

    seconds: float

    def __post_init__(self) -> None:
        if not self.seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {self.seconds}")


@dataclass(frozen=True, slots=True)
class DropConnectionFault:
    """Close the TCP connection without an answer.

    Attributes:
        after_chunks: for a stream request, drop after this many content chunks instead of
            before the response; a plain request is always dropped before any byte.
    """

    after_chunks: int | None = None

    def __post_init__(self) -> None:
        if self.after_chunks is not None and self.after_chunks < 0:
            raise ValueError(f"after_chunks must be >= 0, got {self.after_chunks}")


@dataclass(frozen=True, slots=True)
class MalformedBodyFault:
    """Answer 200 ``application/json`` with a truncated, non-JSON body.

    A stream request gets a well-formed event stream whose first data line is not JSON.
    """


@dataclass(frozen=True, slots=True)
class WrongShapeFault:
    """Answer 200 with valid JSON that is not a chat completion (``{"hello": "world"}``)."""


@dataclass(frozen=True, slots=True)
class StreamErrorFault:
    """Fail a stream mid-way, as OpenRouter does: HTTP 200, then an error chunk.

    After ``after_chunks`` content chunks comes a chunk with ``error`` and
    ``finish_reason: "error"``, and the stream ends without ``[DONE]``. A plain request
    gets the status as an ordinary error response, since nothing was sent yet.

    Attributes:
        after_chunks: content chunks sent before the error.
        status: the ``error.code`` in the chunk.
        message: the ``error.message`` in the chunk.
    """

    after_chunks: int = 2
    status: int = 502
    message: str = "Provider disconnected unexpectedly"

    def __post_init__(self) -> None:
        if self.after_chunks < 0:
            raise ValueError(f"after_chunks must be >= 0, got {self.after_chunks}")


@dataclass(frozen=True, slots=True)
class EarlyDoneFault:
    """End a stream early but "cleanly": ``[DONE]`` after ``after_chunks`` content
    chunks, without the finish chunks or the usage, as a proxy that lost its upstream
    mid-answer may. A plain request is answered whole.

    Attributes:
        after_chunks: content chunks sent (after the role chunks) before ``[DONE]``;
            None: ``[DONE]`` before any chunk at all.
    """

    after_chunks: int | None = 2

    def __post_init__(self) -> None:
        if self.after_chunks is not None and self.after_chunks < 0:
            raise ValueError(f"after_chunks must be >= 0, got {self.after_chunks}")


@dataclass(frozen=True, slots=True)
class GenerationErrorFault:
    """Fail a generation part-way, as OpenRouter does in a plain answer: HTTP 200 whose
    choice has ``finish_reason: "error"`` and an ``error`` object beside the content so
    far and the usage. A stream request gets the error chunk right after its first chunk.

    Attributes:
        status: the ``error.code``.
        message: the ``error.message``.
    """

    status: int = 502
    message: str = "Provider disconnected unexpectedly"


@dataclass(frozen=True, slots=True)
class NoUsageFault:
    """Answer normally but report no usage: no ``usage`` in a plain answer and no usage
    chunk in a stream, as some providers and proxies do."""


EchoShape: TypeAlias = Literal["json", "text", "header", "sse"]
"""Where an ``EchoAuthorizationFault`` puts the request's credentials."""


@dataclass(frozen=True, slots=True)
class EchoAuthorizationFault:
    """Fail with an error that echoes the request's ``Authorization`` header back, its
    key alone and whole (``Bearer ...``), as a careless upstream does.

    Attributes:
        shape: ``"json"``, an OpenRouter error body whose message quotes them;
            ``"text"``, that message as a ``text/plain`` body; ``"header"``, an OpenRouter
            error whose ``x-request-id`` header is the key (and ``X-Echo-Authorization``
            the whole header); ``"sse"``, HTTP 200 and an event stream whose error chunk,
            after one chunk, quotes them (a plain request gets ``"json"``).
        status: the HTTP status, or the error chunk's ``code``.
    """

    shape: EchoShape = "json"
    status: int = 401

    def __post_init__(self) -> None:
        if self.shape not in ("json", "text", "header", "sse"):
            raise ValueError(f"shape must be json, text, header or sse, got {self.shape!r}")
        if not 400 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {self.status}")


Fault: TypeAlias = (
    StatusFault
    | DelayFault
    | DropConnectionFault
    | MalformedBodyFault
    | WrongShapeFault
    | StreamErrorFault
    | EarlyDoneFault
    | GenerationErrorFault
    | NoUsageFault
    | EchoAuthorizationFault
)
"""Any fault a ``FakeEndpoint`` can queue."""
