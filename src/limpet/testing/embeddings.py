"""``POST /{endpoint}/v1/embeddings`` for ``FakeGateway``: OpenAI's wire format.

Vectors are a pure function of (model, text, dimensions), so a test can compute the
vector it expects (``fake_vector``); ``usage`` counts the inputs' tokens. The switches
live on ``FakeGateway.embeddings`` (a ``FakeEmbeddings``); faults are the endpoint's
(``gw.endpoint("a").fail(500)``), taken one per request as for chat.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from limpet.pipeline.vectors import pack_floats, unpack_floats
from limpet.testing.faults import (
    DelayFault,
    DropConnectionFault,
    MalformedBodyFault,
    StatusFault,
    WrongShapeFault,
)
from limpet.testing.responses import (
    drop_connection,
    error_response,
    json_response,
    status_fault_response,
)
from limpet.testing.tokens import count_tokens

if TYPE_CHECKING:
    from limpet.testing.gateway import FakeGateway

#: Floats per vector when the request gives no ``dimensions``.
DEFAULT_DIMENSIONS = 16


def fake_vector(
    model: str, text: str | list[int], dimensions: int = DEFAULT_DIMENSIONS
) -> list[float]:
    """The vector the fake gateway gives ``text`` (or a token array): float32 values in
    [-1, 1)."""
    shown = text if isinstance(text, str) else "\x01" + ",".join(map(str, text))
    digest = hashlib.shake_256(f"{model}\x00{dimensions}\x00{shown}".encode()).digest(
        4 * dimensions
    )
    raw = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, len(digest), 4)]
    return unpack_floats(pack_floats([n / 2**31 - 1.0 for n in raw]))


class FakeEmbeddings:
    """The embeddings route's switches and counters.

    Attributes:
        max_batch: more inputs than this in one request is a 400, as real providers do.
        shuffle: answer ``data`` in a random order (each item keeps its ``index``), to
            check that clients merge by index.
        supports_base64: False answers lists of floats even when asked for base64.
        supports_dimensions: False ignores a request's ``dimensions`` (vectors of the
            default size), as some models behind a gateway do.
        rng: what ``shuffle`` draws from; seed it for a reproducible order.
        latency: seconds each request takes before it is answered.
        requests: every JSON body received, in order.
        inputs: inputs embedded so far, across requests.
    """

    def __init__(self, gateway: FakeGateway) -> None:
        self.gateway = gateway
        self.max_batch = 2048
        self.shuffle = False
        self.supports_base64 = True
        self.supports_dimensions = True
        self.latency = 0.0
        self.requests: list[dict[str, Any]] = []
        self.inputs = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.rng = random.Random(0)

    @property
    def calls(self) -> int:
        """Embedding requests received."""
        return len(self.requests)

    async def wait_for_requests(self, count: int) -> None:
        """Return once ``count`` requests have been received since the last ``reset``."""
        if len(self.requests) >= count:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((count, waiter))
        await waiter

    def reset(self) -> None:
        """Forget the requests and the counts."""
        self.requests.clear()
        self.inputs = 0

    async def serve(self, request: web.Request) -> web.StreamResponse:
        gateway = self.gateway
        endpoint = gateway.endpoints.get(request.match_info["endpoint"])
        if endpoint is None:
            return error_response(404, "No such endpoint on this gateway")
        if not gateway._authorised(request):
            return error_response(401, "No auth credentials found")
        if not endpoint.up:
            return error_response(503, f"Endpoint {endpoint.name!r} is down")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return error_response(400, "Request body is not valid JSON")
        if not isinstance(body, dict):
            return error_response(400, "Request body is not an object")
        self.requests.append(body)
        self._wake()
        await endpoint.answer_gate()
        problem = self._problem(body)
        if problem is not None:
            return error_response(400, problem)
        fault = endpoint.take_fault()
        if isinstance(fault, StatusFault):
            await gateway._pause(fault.after)  # a failure can be slow too, as on chat
            return status_fault_response(fault)
        if isinstance(fault, DropConnectionFault):
            return drop_connection(request)
        await gateway._pause(self.latency + (fault.seconds if isinstance(fault, DelayFault) else 0))
        if isinstance(fault, MalformedBodyFault):
            return json_response(200, b"{not json")
        given = body["input"]
        texts: list[str | list[int]] = (
            [given] if isinstance(given, str) or type(given[0]) is int else given
        )
        self.inputs += len(texts)
        answer = self._answer(body, texts)
        if isinstance(fault, WrongShapeFault):
            answer["data"] = answer["data"][:-1]  # an index missing
        return json_response(200, answer)

    def _wake(self) -> None:
        received = len(self.requests)
        for count, waiter in self._waiters:
            if count <= received and not waiter.done():
                waiter.set_result(None)
        self._waiters = [(n, w) for n, w in self._waiters if not w.done()]

    def _problem(self, body: dict[str, Any]) -> str | None:
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(body.get("model"), str):
            return "model: expected a string"
        if not isinstance(texts, list) or not texts:
            return "input: expected a string or a non-empty list of strings"
        if all(type(token) is int for token in texts):
            texts = [texts]  # one token array
        if len(texts) > self.max_batch:
            return f"input: at most {self.max_batch} inputs per request, got {len(texts)}"
        kind = str if isinstance(texts[0], str) else list
        if not all(isinstance(text, kind) and text for text in texts):
            return "input: every item must be a non-empty string, or every one a token array"
        if kind is list and not all(
            type(token) is int and token >= 0 for tokens in texts for token in tokens
        ):
            return "input: a token array holds token ids (ints >= 0)"
        dimensions = body.get("dimensions")
        if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
            return "dimensions: expected an int >= 1"
        return None

    def _answer(self, body: dict[str, Any], texts: list[str | list[int]]) -> dict[str, Any]:
        model: str = body["model"]
        dimensions = (self.supports_dimensions and body.get("dimensions")) or DEFAULT_DIMENSIONS
        as_base64 = body.get("encoding_format") == "base64" and self.supports_base64
        data = []
        for index, text in enumerate(texts):
            vector = fake_vector(model, text, dimensions)
            embedding: object = (
                base64.b64encode(pack_floats(vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        if self.shuffle:
            self.rng.shuffle(data)
        tokens = sum(count_tokens(text) if isinstance(text, str) else len(text) for text in texts)
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def add_embedding_routes(app: web.Application, embeddings: FakeEmbeddings) -> None:
    """Serve ``/{endpoint}/v1/embeddings`` on ``app`` with ``embeddings``' switches."""
    app.router.add_post("/{endpoint}/v1/embeddings", embeddings.serve)
