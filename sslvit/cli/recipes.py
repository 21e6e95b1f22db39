"""The recipes sslvit ships: each with its purpose, the hardware it is sized for and the result it states.

    sslvit recipes                 the list
    sslvit recipes mae_vitb16      that recipe's file, as it is (copy it to change more than a few keys)

Run one by name, any key overridden: ``sslvit fit mae_vitb16 --data.train_shards='shards/train-{000000..000099}.tar'``.
"""

import textwrap

from sslvit.cli import OneLineParser, run

PROG = "sslvit recipes"


def parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__)
    p.add_argument("name", nargs="?", metavar="NAME", help="print this recipe's file")
    return p


def listing() -> str:
    from sslvit.recipes import describe, paths

    recipes = [describe(p) for p in paths()]
    width = max(len(r.name) for r in recipes) + 2
    lines = []
    for r in recipes:
        lines.append(f"{r.name:<{width}}{r.purpose}")
        for label, text in (("hardware", r.hardware), ("reaches", r.reaches)):
            wrapped = textwrap.wrap(text, 100 - width - 10) or [""]
            lines.append(f"{'':<{width}}{label + ':':<10}{wrapped[0]}")
            lines += [f"{'':<{width + 10}}{more}" for more in wrapped[1:]]
    lines.append(f"\nsslvit fit NAME [--section.key=value ...]; the files are in {recipes[0].path.parent}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.name:
        from sslvit.recipes import find

        return run(PROG, lambda: find(args.name).read_text().rstrip("\n"))
    return run(PROG, listing)
