"""`sslvit analyze` (sslvit/cli/analyze.py), kept so that `python tools/analyze.py` goes on working."""

from sslvit.cli.analyze import main

if __name__ == "__main__":
    raise SystemExit(main())
