"""The layout of the README, pinned from the code's own imports (read with `ast`, nothing run):

    memory_models/        imports nothing from envs/ or experiments/, nor Ray or gymnasium
    envs/                 imports no torch
    experiments/report/   imports neither Ray nor torch, itself or through the project's
                          modules it imports at module level
    experiments/          no import circle among its files (lazy imports included, imports
                          for annotations only under `if TYPE_CHECKING:` not)
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("memory_models", "envs", "experiments")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def _runtime_nodes(tree: ast.Module, top_level_only: bool):
    """The statements that run on import (top level) or ever (all), without the bodies of
    `if TYPE_CHECKING:` (imports for annotations only)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            todo += node.orelse
            continue
        yield node
        if not top_level_only:
            todo += list(ast.iter_child_nodes(node))


def imports(module: str, *, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) for every import in `module`; `from A import b` names A.b when
    that is a module of the project, else A."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = _runtime_nodes(tree, top_level_only)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in MODULES else base, node.lineno))
    return found


def offending(modules, forbidden: tuple[str, ...], **kw) -> list[str]:
    return [f"{MODULES[m].relative_to(ROOT)}:{line} imports {name}"
            for m in modules for name, line in imports(m, **kw)
            if name.split(".")[0] in forbidden]


def in_package(package: str) -> list[str]:
    return sorted(m for m in MODULES if m == package or m.startswith(package + "."))


def test_memory_models_import_no_rl_side():
    bad = offending(in_package("memory_models"), ("envs", "experiments", "ray", "gymnasium"))
    assert not bad, "\n".join(bad)


def test_envs_import_no_torch():
    bad = offending(in_package("envs"), ("torch",))
    assert not bad, "\n".join(bad)


def test_report_imports_neither_ray_nor_torch():
    bad = offending(in_package("experiments.report"), ("ray", "torch"))
    seen, todo = set(), list(in_package("experiments.report"))
    while todo:                                  # the project's modules it loads on import
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += [name for name, _ in imports(module, top_level_only=True) if name in MODULES]
    bad += offending(sorted(seen), ("ray", "torch"), top_level_only=True)
    assert not bad, "\n".join(bad)


def cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One import circle of `graph` (module -> imported modules), None if there is none."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle_in_experiments():
    files = in_package("experiments")
    graph = {m: sorted({n for n, _ in imports(m) if n in files and n != m
                        and not m.startswith(n + ".")})      # a package's own __init__
             for m in files}
    found = cycle(graph)
    assert found is None, "import circle: " + " -> ".join(found)


def test_cycle_finder_finds_a_circle():
    assert cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert cycle({"a": ["b"], "b": [], "c": ["a"]}) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_is_read(package):
    assert in_package(package), package
