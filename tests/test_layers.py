"""Imports flow one way (../shared/STYLE.md): each package may import only the layers below it, and no
module imports itself back through another.  Read from the source (every import, also those inside
functions), so a lazy import cannot hide a cycle."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sslvit"

# what each part of sslvit may import (besides itself); a part not listed may import anything below `fit`
MAY_IMPORT = {
    "errors": set(),
    "files": {"errors"},
    "models": {"errors"},
    "losses": set(),
    "data": {"errors", "files"},  # the DataModule too: it knows no objective
    "recipes": {"errors"},
    "machine": {"errors"},
    "figures": set(),
    "summary": {"files"},
    "published": {"errors", "models"},  # released checkpoints' layouts -> timm / sslvit names
    "checkpoint": {"errors", "files", "models", "published"},
    "strategies": {"files"},  # Lightning's strategies with sslvit's checkpoint writes
    "export": {"errors", "files", "checkpoint", "models", "summary"},
    "callbacks": {"errors", "summary", "figures"},
    "objectives": {"errors", "files", "models", "losses", "checkpoint", "figures"},
    "eval": {"errors", "files", "data", "models", "checkpoint", "summary"},
}
# the front ends: ``cli`` (the sslvit command) uses ``fit`` (training) and ``plan`` (a run sized for a folder);
# nothing but the entry points (``python -m sslvit``, the command itself) imports ``cli``
IMPORTED_ONLY_BY = {"fit": {"cli"}, "plan": {"cli"}, "cli": {"__main__"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_main_block(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``: what the module does when run as a script, not an import by another module."""
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__" and any(getattr(c, "value", None) == "__main__" for c in test.comparators))


def imports() -> dict[str, set[str]]:
    """sslvit module -> the sslvit modules it imports."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        found = set()
        tree = ast.parse(path.read_text())
        tree.body = [node for node in tree.body if not is_main_block(node)]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sslvit"):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.startswith("sslvit")}
        graph[module_name(path)] = found
    return graph


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_each_part_imports_only_the_layers_below_it():
    wrong = []
    for module, deps in imports().items():
        allowed = MAY_IMPORT.get(part(module))
        for dep in deps:
            if part(dep) == part(module):
                continue
            entry_point = module.endswith(".__main__")  # python -m sslvit / python -m sslvit.fit: the command
            if part(dep) in IMPORTED_ONLY_BY and part(module) not in IMPORTED_ONLY_BY[part(dep)] and not entry_point:
                wrong.append(f"{module} imports {dep}")
            elif allowed is not None and part(dep) not in allowed:
                wrong.append(f"{module} imports {dep}")
    assert not wrong, wrong


def test_no_import_cycles():
    graph = imports()
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        for dep in graph.get(module, ()):
            if dep in path:
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep in graph and dep not in done:
                visit(dep, path + [dep])
        done.add(module)

    done: set[str] = set()
    for module in graph:
        if module not in done:
            visit(module, [module])
    # a package's __init__ importing its own modules is how packages expose them, not a cycle
    cycles = [c for c in cycles if not all(m.startswith(c.split(" -> ")[0]) for m in c.split(" -> "))]
    assert not cycles, cycles
