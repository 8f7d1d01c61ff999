"""No import cycles between nbllm's modules (and the Triton kernel package's), lazy imports included.

Every module is parsed with `ast`, not imported: each `import`, `from ... import` and
`importlib.import_module(...)` anywhere in it (at the top, inside a function, under
`if TYPE_CHECKING`, in a try block) is an edge to the module it names. An
`import_module` of a name computed at run time (a lazy-import table such as
`_LAZY[name]`) is taken to import every module that the file's top-level tables name.
A cycle is a strongly connected group of modules; the failure message lists one
cycle of each.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_HOMES = (ROOT, ROOT / "kernels")  # where nbllm and its kernel package (nbllm_kernels) live


# ----------------------------------------------------------------------------- modules
def top_level_packages(homes: tuple[Path, ...] = PACKAGE_HOMES) -> dict[str, Path]:
    """Import name -> folder of every nbllm* package found in `homes`.

    Where one name is in two folders (a package half moved), the one Python imports wins.
    """
    found: dict[str, list[Path]] = {}
    for home in homes:
        for init in sorted(home.glob("nbllm*/__init__.py")):
            found.setdefault(init.parent.name, []).append(init.parent)
    packages = {}
    for name, folders in found.items():
        spec = importlib.util.find_spec(name) if len(folders) > 1 else None
        imported = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
        packages[name] = next((f for f in folders if f in imported), folders[0])
    return packages


def module_files(packages: dict[str, Path]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file in the packages (a package is its __init__.py)."""
    modules = {}
    for name, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [name, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


# ----------------------------------------------------------------------------- edges
def imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, Optional[str]]]:
    """(module named, attribute imported from it or None) for every import in the tree, absolute."""
    package = module if is_package else module.rpartition(".")[0]
    tables = _top_level_table_strings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: level 1 is this module's package, each further level one up
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                yield base, alias.name
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args:
            name = node.args[0]
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                yield name.value, None
            else:
                yield from ((table_string, None) for table_string in tables)


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id in ("import_module", "__import__")


def _top_level_table_strings(tree: ast.Module) -> list[str]:
    """Every string in the dicts, lists, tuples and sets assigned at the module's top level."""
    strings = []
    for statement in tree.body:
        value = statement.value if isinstance(statement, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(value, (ast.Dict, ast.List, ast.Tuple, ast.Set)):
            strings += [n.value for n in ast.walk(value) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return strings


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules it imports (among `modules`).

    `import a.b.c` and `from a.b import c` (c a submodule) are edges to a.b.c only, not
    to a and a.b, although Python runs their __init__ first: a package's __init__ that
    imports its own submodules is how packages are built, and counting the implicit
    parent imports would make every such package a cycle. `from a.b import name`, where
    name is not a submodule, is an edge to a.b's __init__: re-exports count.
    """
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = set()
        for base, name in imported_names(tree, module, path.name == "__init__.py"):
            if name is not None and f"{base}.{name}" in modules:
                targets.add(f"{base}.{name}")
            elif base in modules:
                targets.add(base)
        targets.discard(module)
        graph[module] = targets
    return graph


# ----------------------------------------------------------------------------- cycles
def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (its modules in import order, the first repeated at the end) per strongly connected group."""
    found = []
    for group in strongly_connected(graph):
        if len(group) > 1:
            found.append(_cycle_in(graph, group))
    return sorted(found)


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (the graph may be deeper than the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                groups.append(group)
    return groups


def _cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """The shortest path back to the group's first module, found breadth first inside the group."""
    start = min(group)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & group):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{sorted(group)} is not strongly connected")


# ----------------------------------------------------------------------------- tests
def test_there_are_no_import_cycles():
    packages = top_level_packages()
    assert "nbllm" in packages and len(packages) >= 2, f"nbllm and its kernel package, found {sorted(packages)}"
    graph = import_graph(module_files(packages))
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def test_the_walker_sees_lazy_relative_and_dynamic_imports(tmp_path):
    """A made-up package whose only cycles go through imports inside functions."""
    files = {
        "nbllm_demo/__init__.py": "from nbllm_demo.data import Record\n",
        "nbllm_demo/data.py": "class Record:\n    def show(self):\n        from .views import draw\n",
        "nbllm_demo/views/__init__.py": "import importlib\n\ndef load():\n"
                                        "    return importlib.import_module('nbllm_demo.views.helpers')\n",
        "nbllm_demo/views/draw.py": "from ..data import Record\nfrom . import helpers\n",
        "nbllm_demo/views/helpers.py": "import importlib\n\n_LAZY = {'Record': 'nbllm_demo', 'dumps': 'json'}\n\n"
                                       "def __getattr__(name):\n"
                                       "    return getattr(importlib.import_module(_LAZY[name]), name)\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(module_files(top_level_packages((tmp_path,))))
    assert graph == {
        "nbllm_demo": {"nbllm_demo.data"},
        "nbllm_demo.data": {"nbllm_demo.views.draw"},
        "nbllm_demo.views": {"nbllm_demo.views.helpers"},
        "nbllm_demo.views.draw": {"nbllm_demo.data", "nbllm_demo.views.helpers"},
        "nbllm_demo.views.helpers": {"nbllm_demo"},
    }
    assert cycles(graph) == [["nbllm_demo", "nbllm_demo.data", "nbllm_demo.views.draw", "nbllm_demo.views.helpers",
                              "nbllm_demo"]]
