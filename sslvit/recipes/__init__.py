"""The recipes sslvit ships, inside the package, so that an installed sslvit finds them by name:
``sslvit fit mae_vitb16 ...`` is ``sslvit fit <this folder>/mae_vitb16.yaml ...``.  (In a clone of the
repository, the top-level ``recipes/`` is a link to this folder, so ``recipes/quickstart.yaml`` works too.)

Each recipe opens with the command that runs it and three one-line fields that ``sslvit recipes`` lists:

    # sslvit fit NAME ...
    #
    # Purpose: what it trains, how
    # Hardware: what it is sized for
    # Reaches: the figure it states, and where that figure comes from

Reading them needs no YAML parser and imports nothing heavy: ``sslvit recipes`` and ``--help`` stay instant.
"""

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from sslvit.errors import ConfigError

FOLDER = Path(__file__).resolve().parent
FIELDS = ("Purpose", "Hardware", "Reaches")


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    command: str  # the first line, without "# "
    purpose: str
    hardware: str
    reaches: str


def names() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.yaml"))


def paths() -> list[Path]:
    return [FOLDER / f"{name}.yaml" for name in names()]


def find(recipe: Union[str, Path]) -> Path:
    """A recipe file: ``recipe`` itself when it is a file, else the shipped recipe of that name
    (``mae_vitb16`` or ``mae_vitb16.yaml``); anything else is a ``ConfigError`` that lists the names."""
    path = Path(recipe).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"recipe {str(recipe)!r} is a folder; to train on a folder of images: sslvit fit --data {recipe}")
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    if (FOLDER / f"{name}.yaml").is_file() and (path.parent == Path(".") or path.parent.name == "recipes"):
        return FOLDER / f"{name}.yaml"  # a name, or recipes/NAME.yaml outside the repository
    known = names()
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(f"recipe {str(recipe)!r} is neither a file nor a shipped recipe: {hint}known: {', '.join(known)}")


MAX_VALUES = 100_000  # a recipe is a few hundred values; YAML aliases that expand past this are a mistake or a bomb


def check_file(path: Path) -> None:
    """A recipe file jsonargparse can take, or one line: UTF-8 text, valid YAML, no alias that refers to itself
    or expands to more than ``MAX_VALUES`` values (jsonargparse copies every alias out: a recursive one never
    ends, a "billion laughs" one fills the memory)."""
    import yaml

    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"recipe {str(path)!r} is not a text file (byte {err.start} is not UTF-8)") from None
    except OSError as err:
        raise ConfigError(f"recipe {str(path)!r} cannot be read: {err.strerror or err}") from None
    if "\0" in text:
        raise ConfigError(f"recipe {str(path)!r} is not a text file (it holds NUL bytes)")
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"recipe {str(path)!r} is not valid YAML{at}: {getattr(err, 'problem', None) or err}") from None
    count, stack = 0, [(tree, ())]
    while stack:  # walked as jsonargparse will see it: every alias copied out
        node, parents = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(f"recipe {str(path)!r}: its YAML aliases expand to more than {MAX_VALUES:,} values")
        if isinstance(node, (dict, list)):
            if id(node) in parents:
                raise ConfigError(f"recipe {str(path)!r}: a YAML alias refers to itself (a recursive anchor)")
            children = node.values() if isinstance(node, dict) else node
            stack += [(child, (*parents, id(node))) for child in children]


def describe(path: Union[str, Path]) -> Recipe:
    """The command and the Purpose / Hardware / Reaches lines of a recipe's opening comment."""
    path = Path(path)
    lines = path.read_text().splitlines()
    head = [ln[2:] for ln in lines if ln.startswith("# ")]
    fields = {}
    for field in FIELDS:
        found = [ln[len(field) + 2:].strip() for ln in head if ln.startswith(f"{field}: ")]
        fields[field.lower()] = found[0] if found else ""
    command = lines[0][2:] if lines and lines[0].startswith("# ") else ""
    return Recipe(path.stem, path, command, **fields)
