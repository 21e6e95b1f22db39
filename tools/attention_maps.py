"""`sslvit attention` (sslvit/cli/attention.py), kept so that `python tools/attention_maps.py` goes on working."""

from sslvit.cli.attention import main

if __name__ == "__main__":
    raise SystemExit(main())
