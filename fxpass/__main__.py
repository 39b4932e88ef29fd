"""``python -m fxpass``: the command line."""

from fxpass.cli import main

raise SystemExit(main())
