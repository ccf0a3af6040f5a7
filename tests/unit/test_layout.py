"""The layout rules the README promises: a small root, short modules and functions, no import
cycles, and tests that find the project through pytest's configuration alone."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "chatterbox_worker"
MAX_ROOT_MODULES = 8
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
CODE_DIRS = (PACKAGE, "chatterbox_client", "scripts", "bench", "tests")


def project_files() -> list[Path]:
    files = list(REPO.glob("*.py"))
    for folder in CODE_DIRS:
        files += (REPO / folder).rglob("*.py")
    return sorted(files)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every project module ``path`` imports, at any depth (lazy and typing-only imports too)."""
    here = module_name(path)
    package = here if is_package(path) else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            # ``from pkg import sub`` names a module; ``from mod import func`` names its module.
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != here:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    sources = [p for p in project_files() if p.parts[len(REPO.parts)] in (PACKAGE,) or p.parent == REPO]
    known = {module_name(p) for p in sources}
    return {module_name(p): imported_modules(p, known) for p in sources}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_root_holds_only_the_entry_points_and_the_fixed_names():
    root = sorted(p.name for p in REPO.glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, root


@pytest.mark.parametrize("path", project_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_modules_and_functions_stay_short(path):
    source = path.read_text()
    assert source.count("\n") <= MAX_MODULE_LINES, f"{path.name}: {source.count(chr(10))} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "handler" in graph and f"{PACKAGE}.settings" in graph  # the walk saw the project
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_never_imports_the_entry_points():
    graph = import_graph()
    entry_points = {"handler", "server", "main", "handler_legacy"}
    # The testing kit is the one exception: its soak drives the real handler, as RunPod does.
    offenders = {name: sorted(deps & entry_points) for name, deps in graph.items()
                 if name.startswith(PACKAGE) and not name.startswith(f"{PACKAGE}.testing") and deps & entry_points}
    assert offenders == {}


FORBIDDEN_IN_TESTS = re.compile(r"sys\.path\.|sys\.path\[|spec_from_file_location|from conftest import")


def test_tests_find_the_project_through_pytest_configuration_alone():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("*.py")
                 if p.name != "test_layout.py" and FORBIDDEN_IN_TESTS.search(p.read_text())]
    assert offenders == []


def test_no_project_file_is_loaded_by_path():
    offenders = [str(p.relative_to(REPO)) for p in project_files()
                 if p.name != "test_layout.py" and "spec_from_file_location" in p.read_text()]
    assert offenders == []
