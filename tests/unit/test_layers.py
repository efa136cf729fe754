"""The package's layers point only down, and nothing imports in a circle.

Every module of `panaversity_fs` belongs to one layer below (the first prefix that names it). A
module may import modules of lower layers, and modules of its own layer only inside its own
package (services never import each other; `books.search` may use `books.regex`). Imports made
inside functions count like any other. The test also keeps the test suite and the benchmarks
apart: neither imports the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGE = ROOT / "src" / "panaversity_fs"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "kernel: settings, errors, identifiers, generic helpers",
        (
            "__init__",
            "config",
            "errors",
            "paths",
            "arguments",
            "times",
            "paging",
            "globs",
            "logs",
            "metrics",
            "signing",
            "identity",
            "operation",
            "deadlines",
            "limits",
            "after_response",
        ),
    ),
    ("database and storage", ("db", "storage")),
    ("the audit trail", ("audit.chain", "audit.recorder", "audit.trail", "audit.verify", "audit.checkpoints",
                         "audit.monitor")),
    ("journaled files", ("files",)),
    ("services", ("content", "assets", "books", "builds", "archive", "history", "audit.query")),
    ("wiring and access rules", ("app.resources", "app.jobs", "app.context", "auth")),
    ("request pipeline", ("app.middleware", "app.http", "app.transport", "app.json_replies", "app.challenge")),
    ("surface: tools and routes", ("tools", "routes")),
    ("the server", ("app.server", "app.fixed_tools")),
    ("command line", ("ops", "__main__")),
]  # fmt: skip


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in relative.parts if p != "__init__"] or ["__init__"]
    return ".".join(parts)


def layer_of(module: str) -> int:
    for index, (_name, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    if (PACKAGE / module.replace(".", "/") / "__init__.py").exists():
        return 0  # a package whose modules sit in several layers: its __init__ holds only a docstring
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")


def package_of(module: str) -> str:
    """The sub-package a module belongs to (`books` for `books.search`); the top-level modules
    are the kernel's, and `__main__` is the command line's."""
    if module == "__main__":
        return "ops"
    first = module.split(".")[0]
    return first if (PACKAGE / first).is_dir() else ""


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py") if "migrations" not in path.parts}


def imports(path: Path, known: set[str]) -> set[str]:
    """The `panaversity_fs` modules `path` imports (packages resolved to their modules)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for name in names:
            if not name.startswith("panaversity_fs"):
                continue
            local = name.removeprefix("panaversity_fs").lstrip(".") or "__init__"
            if local in known:
                found.add(local)
            elif local.rsplit(".", 1)[0] in known and isinstance(node, ast.ImportFrom):
                continue  # an attribute of a module: the module itself is counted
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {module: imports(path, known) - {module} for module, path in found.items()}


def test_every_module_has_a_layer() -> None:
    for module in modules():
        layer_of(module)


def test_imports_point_only_down() -> None:
    wrong: list[str] = []
    for module, targets in sorted(graph().items()):
        mine = layer_of(module)
        for target in sorted(targets):
            theirs = layer_of(target)
            if theirs > mine or (theirs == mine and package_of(target) != package_of(module)):
                wrong.append(f"{module} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]})")
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_in_a_circle() -> None:
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


def _top_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_tests_and_benchmarks_share_only_the_testkit() -> None:
    """`tests/` and `bench/` never import each other; `testkit/` (what they share) imports neither,
    and the product imports none of the three."""
    forbidden = {"tests": {"bench"}, "bench": {"tests"}, "testkit": {"tests", "bench"}}
    wrong = [
        f"{path.relative_to(ROOT)} imports {', '.join(sorted(_top_imports(path) & others))}"
        for folder, others in forbidden.items()
        for path in (ROOT / folder).rglob("*.py")
        if _top_imports(path) & others
    ]
    wrong += [
        f"{path.relative_to(ROOT)} imports {', '.join(sorted(_top_imports(path) & {'tests', 'bench', 'testkit'}))}"
        for path in PACKAGE.rglob("*.py")
        if _top_imports(path) & {"tests", "bench", "testkit"}
    ]
    assert not wrong, "\n".join(wrong)
