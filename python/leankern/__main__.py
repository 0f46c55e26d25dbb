"""``python -m leankern ...`` = the ``leankern`` command (see :mod:`leankern.cli`)."""
from .cli import main

raise SystemExit(main())
