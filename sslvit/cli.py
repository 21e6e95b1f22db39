"""What the command-line tools share: argparse that answers a usage error in one line."""

import argparse
import sys


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line naming the argument, with exit status 2 (no usage block)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def at_least(kind: type, low: float):
    """An argparse ``type`` that parses ``kind`` and refuses values below ``low``, naming the value."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text!r}")
        return value

    return parse
