"""``limpet serve``: an OpenAI-compatible caching proxy over one ``Client``."""

from limpet.serve.app import create_app, run
from limpet.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app", "run"]
