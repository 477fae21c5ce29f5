"""The chat request the integration tests send, and the model it names."""

from __future__ import annotations

from typing import Any

MODEL = "anthropic/claude-sonnet-4.6"


def ask(
    text: str = "What is a limpet?",
    *,
    model: str = MODEL,
    system: str | None = None,
    **params: Any,
) -> dict[str, Any]:
    """A chat completion request: ``text`` as the user's message, after ``system``'s when
    given, at temperature 0, with ``params`` (``stream``, ``max_tokens``...) added or
    overriding. Pass it as ``client.complete(**ask(...))``."""
    messages = [{"role": "user", "content": text}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return {"model": model, "messages": messages, "temperature": 0, **params}
