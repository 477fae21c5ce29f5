"""The ``limpet`` command: ``demo | bench | stats | flush | warm | serve``."""

from limpet.cli.main import main

__all__ = ["main"]
