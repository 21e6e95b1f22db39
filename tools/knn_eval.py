"""`sslvit knn` (sslvit/cli/knn.py), kept so that `python tools/knn_eval.py` goes on working."""

from sslvit.cli.knn import main

if __name__ == "__main__":
    raise SystemExit(main())
