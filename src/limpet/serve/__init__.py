"""``limpet serve``: an OpenAI-compatible caching proxy over one ``Client``."""

from limpet.serve.app import ServeConfig, create_app, run

__all__ = ["ServeConfig", "create_app", "run"]
