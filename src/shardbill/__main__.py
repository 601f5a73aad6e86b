"""``python -m shardbill``: the same as the ``shardbill`` console script."""

from shardbill.cli import main

raise SystemExit(main())
