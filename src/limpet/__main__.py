"""``python -m limpet``: the same as the ``limpet`` command."""

from limpet.cli.main import main

raise SystemExit(main())
