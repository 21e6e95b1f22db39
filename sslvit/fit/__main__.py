"""``python -m sslvit.fit ...``: the same as ``sslvit fit ...`` (an entry point, as ``sslvit/__main__.py``: the
command's front end, ``sslvit.cli.fit``, imports ``sslvit.fit``, never the other way)."""

from sslvit.cli.fit import main

raise SystemExit(main())
