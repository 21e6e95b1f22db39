"""What the command-line tools share: argparse that answers a usage error in one line, and a
runner that turns a user's mistake (``ConfigError``) into one line and exit status 2."""

import argparse
import sys
from pathlib import Path
from typing import Callable, Union

from sslvit.errors import ConfigError


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


def ready_dir(path: Union[str, Path], flag: str) -> Path:
    """``path`` as a folder that exists (made if need be), checked before any long work; a file in the
    way or an uncreatable path is a ``ConfigError`` naming ``flag``."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{flag} {str(path)!r}: {err.strerror or err}") from None
    return folder


def run(prog: str, work: Callable[[], object]) -> int:
    """Prints what ``work()`` returns and gives exit status 0; a ``ConfigError`` becomes one line
    ``PROG: error: ...`` on stderr and exit status 2.  Other exceptions are bugs and keep their traceback."""
    try:
        result = work()
    except ConfigError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(result)
    return 0
