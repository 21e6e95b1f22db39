"""How long the `sslvit` command takes to answer --help: the goal is under 1.5 s for `sslvit --help` and every
`sslvit COMMAND --help` (issue 16), which holds because no command imports torch or Lightning before it runs.

    python benchmarks/cli_startup.py [--repeats 5]

Each line: the command, then the median and the slowest wall time over the repeats, each in a fresh
interpreter (`python -m sslvit ...`, what the installed `sslvit` script runs).  For comparison, the last
line times `import torch` alone, what every --help cost before.
"""

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = ["", "fit", "export", "knn", "probe", "shards", "analyze", "attention", "recipes"]


def wall(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    rows = [(f"sslvit {c} --help".replace("  ", " "), ["-m", "sslvit", *([c] if c else []), "--help"]) for c in COMMANDS]
    rows.append(("python -c 'import torch'", ["-c", "import torch"]))
    for name, argv in rows:
        times = [wall(argv) for _ in range(args.repeats)]
        print(f"{name:<28} median {statistics.median(times):.2f} s   slowest {max(times):.2f} s")


if __name__ == "__main__":
    main()
