"""``python -m sslvit COMMAND ...``: the same as the installed ``sslvit`` command."""

from sslvit.cli.main import main

raise SystemExit(main())
