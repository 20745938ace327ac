"""``python -m functional_bp``: the command line (see :mod:`functional_bp.cli`)."""

from .cli import main

raise SystemExit(main())
