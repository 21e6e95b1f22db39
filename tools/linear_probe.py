"""`sslvit probe` (sslvit/cli/probe.py), kept so that `python tools/linear_probe.py` goes on working."""

from sslvit.cli.probe import main

if __name__ == "__main__":
    raise SystemExit(main())
