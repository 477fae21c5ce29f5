"""Native provider APIs a ``FakeGateway`` proxies, as a gateway that passes them through
would. Each endpoint ``{name}`` also serves:

- ``POST /{name}/anthropic/v1/messages``: Anthropic's Messages API, whole or streamed
  (``limpet.testing.anthropic_messages``).
- ``/{name}/google/v1beta/cachedContents`` (and ``.../{id}``): Gemini's explicit caches,
  and ``POST /{name}/google/v1beta/models/{model}:generateContent``, Gemini's native call
  (``limpet.testing.gemini_caches``).

Errors follow each API's own shape. Native calls count in none of the endpoint's chat
counters, but a taken-down endpoint refuses them too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from limpet.testing.anthropic_messages import AnthropicMessages
from limpet.testing.gemini_caches import GeminiCaches

if TYPE_CHECKING:
    from limpet.testing.gateway import FakeGateway


def add_native_routes(app: web.Application, gateway: FakeGateway) -> None:
    """Serve the native APIs of this module on ``app``, for ``gateway``'s endpoints."""
    messages = AnthropicMessages(gateway)
    gemini = GeminiCaches(gateway)
    prefix = "/{endpoint}/google/v1beta"
    app.router.add_post("/{endpoint}/anthropic/v1/messages", messages.serve)
    app.router.add_post(prefix + "/cachedContents", gemini.create_cache)
    app.router.add_get(prefix + "/cachedContents", gemini.list_caches)
    app.router.add_get(prefix + "/cachedContents/{id}", gemini.get_cache)
    app.router.add_patch(prefix + "/cachedContents/{id}", gemini.update_cache)
    app.router.add_delete(prefix + "/cachedContents/{id}", gemini.delete_cache)
    app.router.add_post(prefix + "/models/{call}", gemini.generate_content)
