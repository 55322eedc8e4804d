"""``python -m lensiar ...`` runs the ``lensiar`` command."""

from lensiar.cli import main

raise SystemExit(main())
