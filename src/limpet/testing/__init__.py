"""Test support: ``FakeGateway``, a faithful local OpenAI/OpenRouter-compatible gateway.

Example:
    >>> from limpet.testing import FakeGateway
    >>> async with FakeGateway(endpoints=("a", "b")) as gw:
    ...     gw.endpoint("b").take_down()
    ...     base_url = gw.base_url("a")   # http://127.0.0.1:PORT/a/v1
"""

from __future__ import annotations

from limpet.testing.catalog import DEFAULT_MODELS, UNKNOWN_MODEL_PRICE, FakeModel, ModelPrice
from limpet.testing.endpoint import FakeEndpoint
from limpet.testing.faults import Fault
from limpet.testing.gateway import FakeGateway
from limpet.testing.openrouter import OpenRouterProviders
from limpet.testing.provider_cache import (
    NoPromptCache,
    PromptCacheModel,
    PromptCacheResult,
    ProviderPromptCache,
)
from limpet.testing.tokens import count_message_tokens, count_prompt_tokens, count_tokens

__all__ = [
    "DEFAULT_MODELS",
    "UNKNOWN_MODEL_PRICE",
    "FakeEndpoint",
    "FakeGateway",
    "FakeModel",
    "Fault",
    "ModelPrice",
    "NoPromptCache",
    "OpenRouterProviders",
    "PromptCacheModel",
    "PromptCacheResult",
    "ProviderPromptCache",
    "count_message_tokens",
    "count_prompt_tokens",
    "count_tokens",
]
