"""The key stage: the hit path's key (``Keying.now``) is the key every other path gives."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from limpet.cache.generations import Generations
from limpet.pipeline.credentials import call_scope
from limpet.pipeline.keying import Keying
from limpet.pipeline.keys import canonical_request, request_key
from tests.test_keys import requests

headers = st.none() | st.sampled_from(
    [{}, {"X-Request-Id": "r1"}, {"Authorization": "Bearer sk-2"}, {"x-api-key": "k"}]
)


@given(
    requests,
    headers,
    st.sampled_from(["", "tenant-a"]),
    st.sampled_from(["", "c0ffee"]),
    st.sampled_from([0.0, 0.5]),
)
def test_the_hit_paths_key_is_request_key_and_the_async_key(
    body: dict[str, Any],
    sent: dict[str, str] | None,
    namespace: str,
    credential: str,
    temperature: float,
) -> None:
    body = {**body, "temperature": temperature, "stream": False}  # normalised, dropped
    keying = Keying(Generations(), namespace, credential)
    key = keying.now(body, sent)
    # A call sending a key of its own adds that key's generations to the Client's.
    scope = keying.generations.scope_now(body["model"], keying.callers(sent))
    assert scope is not None
    expected = request_key(
        canonical_request(body),
        namespace=namespace,
        scope=scope,
        credential=call_scope(credential, sent),
    )
    assert key == expected == asyncio.run(keying.of(body, sent))
