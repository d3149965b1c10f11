"""The package's imports point down its layers, and no module imports itself through others.

Read with ``ast``, without importing anything: every ``import`` and ``from ... import`` of a
modelplex module counts, at module level or inside a function, except under
``if TYPE_CHECKING:`` (annotations only; nothing runs).
"""

from __future__ import annotations

import ast
import pathlib

import modelplex

PACKAGE = pathlib.Path(modelplex.__file__).parent

# Lowest first. A module may import its own layer and the layers below it.
LAYERS: list[tuple[str, set[str]]] = [
    ("vocabulary", {
        "_errors", "_messages", "_specs", "_config", "_types", "_events", "_context", "_aio",
        "_model_ids",
    }),
    ("observability and storage", {"_obs", "_storage"}),
    ("data plane", {"_data"}),
    ("HTTP", {"_http"}),
    ("replica", {"_replica"}),
    ("user API", {"_user"}),
    ("control plane", {"_control"}),
    ("config deploys", {"_deploy"}),
    ("driver", {"_driver"}),
    ("public modules", {"__init__", "__main__", "config", "handle", "exceptions", "grpc_util"}),
]


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The modelplex modules that ``path`` imports."""
    name = _module_name(path)
    is_package = path.name == "__init__.py"
    here = name.split(".") if name != "__init__" else []
    package = here if is_package else here[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[: len(package) - (child.level - 1)]
                else:
                    if not (child.module or "").startswith("modelplex"):
                        continue
                    base = []
                target = base + ((child.module or "").split(".") if child.module else [])
                if not child.level:
                    target = target[1:]  # drop "modelplex"
                for alias in child.names:
                    sub = ".".join(target + [alias.name])
                    found.add(sub if sub in modules else ".".join(target) or "__init__")
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("modelplex."):
                        found.add(alias.name.split(".", 1)[1])
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, modules) for name, path in paths.items()}


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for i, (_, members) in enumerate(LAYERS):
        if top in members:
            return i
    raise AssertionError(f"modelplex.{module} is in no layer: add its package to LAYERS")


def test_every_module_has_a_layer():
    for module in _graph():
        _layer(module)


def test_imports_point_down_the_layers():
    upward = [
        f"modelplex.{module} ({LAYERS[_layer(module)][0]}) imports modelplex.{target} "
        f"({LAYERS[_layer(target)][0]})"
        for module, targets in sorted(_graph().items())
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_no_import_cycles():
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert [" -> ".join(cycle) for cycle in cycles] == []


def test_the_walker_sees_imports():
    graph = _graph()
    assert "_errors" in graph["_http.proxy"] or any(
        t.startswith("_errors") for t in graph["_http.proxy"]
    )
    assert "_data.router" in graph["_data.routers"]
