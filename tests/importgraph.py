"""Who imports whom inside a package, read from the source (no import runs): every import
statement counts, at module level, inside functions or under ``TYPE_CHECKING``."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def modules(package: str, repo: Path = REPO) -> dict[str, Path]:
    """``{"pkg.sub.mod": path}`` for every ``.py`` file of ``package`` (``__init__`` is the package)."""
    out = {}
    for path in sorted((repo / package.replace(".", "/")).rglob("*.py")):
        parts = list(path.relative_to(repo).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_names(path: Path, module: str) -> set[str]:
    """Every absolute name an import statement of ``path`` (the module ``module``) names:
    ``import a.b`` gives ``a.b``, ``from a.b import c`` gives ``a.b.c`` (a module or an
    attribute of ``a.b``); relative imports are resolved."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out.update(f"{base}.{alias.name}" if base else alias.name for alias in node.names)
    return out


def import_graph(package: str, repo: Path = REPO) -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports (a name that is an attribute counts as
    the module that holds it: ``from a.b import f`` is an edge to ``a.b``)."""
    mods = modules(package, repo)
    graph = {}
    for module, path in mods.items():
        targets = set()
        for name in imported_names(path, module):
            while name and name not in mods:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None
