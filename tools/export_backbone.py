"""`sslvit export` (sslvit/cli/export.py), kept so that `python tools/export_backbone.py` goes on working."""

from sslvit.cli.export import main

if __name__ == "__main__":
    raise SystemExit(main())
