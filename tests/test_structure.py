"""The package's shape: no import circles (function-level imports included) and no private
name imported from another module."""

from __future__ import annotations

import ast
from pathlib import Path

import snows_hf

PACKAGE = Path(snows_hf.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _imports() -> dict[str, list[tuple[str, list[str], int]]]:
    """Per module of the package: each import of another of its modules, as
    ``(module, names, line)``, wherever it stands (top level or inside a function; not
    under ``if TYPE_CHECKING:``)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    found: dict[str, list[tuple[str, list[str], int]]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = []
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    target = f"{base}.{node.module}" if node.module else base
                else:
                    target = node.module or ""
                if not target.startswith("snows_hf"):
                    continue
                names = [a.name for a in node.names]
                if target in modules and not node.module and node.level:  # from . import submodule (or a name)
                    edges += [(f"{target}.{n}", [], node.lineno) for n in names if f"{target}.{n}" in modules]
                    names = [n for n in names if f"{target}.{n}" not in modules]
                    if not names:
                        continue
                edges.append((target, names, node.lineno))
            elif isinstance(node, ast.Import):
                edges += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("snows_hf.")]
        found[name] = [(t, n, line) for t, n, line in edges if t in modules and t != name]
    return found


def test_no_import_circles():
    graph = {name: sorted({t for t, _, _ in edges}) for name, edges in _imports().items()}
    circles, state, path = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == "open":
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert circles == []


def test_no_private_name_is_imported_from_another_module():
    private = [f"{name}:{line} imports {n} from {target}" for name, edges in _imports().items()
               for target, names, line in edges for n in names if n.startswith("_") and not n.startswith("__")]
    assert private == []


def test_the_scan_sees_function_level_and_relative_imports():
    """The checks above would pass on a scan that finds nothing: it finds these."""
    edges = _imports()
    assert any(t == "snows_hf.workflow" for t, _, _ in edges["snows_hf.cli"])  # imported inside a function
    assert any(t == "snows_hf.fields" for t, _, _ in edges["snows_hf.masks.patterns"])  # from ..fields


#: The package's floors, bottom first: a module imports modules of its own floor or below,
#: never above (function-level imports included). Each module of the package is named here
#: by its top-level name (a package, such as ``masks``, stands for all its modules); a new
#: one goes where what it holds belongs.
LAYERS = [
    # settings, math and files, knowing nothing of models
    {"version", "fields", "safe_yaml", "provenance", "console", "blocks", "solver", "masks", "metrics"},
    # models and devices: architectures and heads as data, placement, loading, outputs and their scores
    {"adapters", "heads", "devices", "distributed", "placement", "evaluation", "loading", "windows", "block_order", "activations",
     "statistics"},
    # what a run is made of: methods, settings, data, reports, formats, lm-eval tasks, recipes
    {"methods", "config", "data", "report", "checkpoint", "compact_format", "compact_hook", "harness",
     "sparse_inference", "recipe", "inspection"},
    # the block loop and what is made of its result
    {"pipeline", "targets", "oneshot", "card", "export", "output_folder", "output_claim", "hub"},
    # the verbs: a whole run, the command line, the demo, the package's own top and earlier module names
    {"workflow", "plan", "cli", "cli_options", "demo", "__main__", "", "api", "tasks"},
]


def _floor(module: str) -> int:
    name = module.removeprefix("snows_hf").removeprefix(".").split(".")[0]
    found = [i for i, floor in enumerate(LAYERS) if name in floor]
    assert found, f"snows_hf.{name} is on no floor: add it to LAYERS in tests/test_structure.py"
    return found[0]


def test_no_module_imports_upward():
    upward = [f"{name}:{line} imports {target}" for name, edges in _imports().items()
              for target, _, line in edges if _floor(target) > _floor(name)]
    assert upward == []


def test_every_module_is_on_exactly_one_floor():
    names = [name for floor in LAYERS for name in floor]
    assert len(names) == len(set(names))
    for module in _imports():
        _floor(module)


def test_the_floor_check_sees_an_upward_import():
    """The check above would pass if every module sat on one floor: these are apart."""
    assert _floor("snows_hf.masks.patterns") < _floor("snows_hf.methods.base") < _floor("snows_hf.pipeline") \
        < _floor("snows_hf.workflow")


def _unresolved_imports(path: Path) -> list[str]:
    """Each ``snows_hf`` import in ``path``, wherever it stands, that names a module or an
    attribute the package no longer has."""
    import importlib

    missing = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("snows_hf") and not node.level:
            try:
                module = importlib.import_module(node.module)
            except ImportError:
                missing.append(f"{path.name}:{node.lineno} {node.module}")
                continue
            for alias in node.names:
                if hasattr(module, alias.name):
                    continue
                try:
                    importlib.import_module(f"{node.module}.{alias.name}")
                except ImportError:
                    missing.append(f"{path.name}:{node.lineno} {node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("snows_hf"):
                    try:
                        importlib.import_module(alias.name)
                    except ImportError:
                        missing.append(f"{path.name}:{node.lineno} {alias.name}")
    return missing


def test_every_script_imports_names_the_package_has():
    """Benchmarks and tools import inside their functions, so a moved name breaks them only
    when that branch runs (``quality.py`` lost ``counted_solves`` to a split this way)."""
    root = PACKAGE.parent
    scripts = sorted((root / "benchmarks").glob("*.py")) + sorted((root / "tools").glob("*.py"))
    assert scripts
    assert [m for p in scripts for m in _unresolved_imports(p)] == []


def test_the_script_import_check_sees_a_moved_name(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text("def f():\n    from snows_hf.pipeline import no_such_name\n    import snows_hf.no_such_module\n")
    assert _unresolved_imports(script) == ["bench.py:2 snows_hf.pipeline.no_such_name", "bench.py:3 snows_hf.no_such_module"]
