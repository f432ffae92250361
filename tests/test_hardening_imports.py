"""Issue 11, item 15: the package's modules import each other one way (no cycle), counting
imports inside functions too (they are cycles waiting for a refactor)."""
import ast
from pathlib import Path

import tritonsparse

PKG = Path(tritonsparse.__file__).parent


def _module_name(path: Path) -> str:
    parts = ("tritonsparse",) + path.relative_to(PKG).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    """Package modules ``path`` imports (relative and absolute, at any depth of the file)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("tritonsparse"):
                found.add(mod)
                found.update(f"{mod}.{a.name}" for a in node.names)  # `from . import cpu`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tritonsparse"))
    return found


def _graph():
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # an edge to a package means its __init__; the package itself is not an edge source
        # for its submodules (importing tritonsparse.x.y runs tritonsparse/__init__ first)
        graph[name] = {m for m in _imports(path, name) if m in modules and m != name}
    return graph


def _find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):
                continue  # a package re-exporting its own submodules
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle_between_the_package_modules():
    graph = _graph()
    assert "tritonsparse.cpu" in graph and "tritonsparse._structure" in graph["tritonsparse.cpu"] | graph["tritonsparse.ops"]
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_old_import_paths_still_work():
    from tritonsparse.formats import CondensedWeight, transpose_structure  # noqa: F401
    from tritonsparse.ops import _condensed_matmul, condensed_matmul  # noqa: F401
