"""`sslvit shards` (sslvit/cli/shards.py), kept so that `python tools/make_shards.py` goes on working."""

from sslvit.cli.shards import main

if __name__ == "__main__":
    raise SystemExit(main())
