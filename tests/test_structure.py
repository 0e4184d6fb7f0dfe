"""The package's shape: no import circle, evaluation never reaches into discovery, no overlong functions, a cheap
``import circuitfind``, wrappers that show the real signature."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

from circuitfind.models import load_model, loading

PACKAGE = Path(__file__).resolve().parent.parent / "circuitfind"

# Functions allowed past MAX_LINES lines of code, each with its reason.
LONG_FUNCTIONS: dict[str, str] = {}
MAX_LINES = 60


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), filename=str(path))
    return out


def _imports(name: str, tree: ast.Module, *, top_level_only: bool) -> set[str]:
    """Package modules ``name`` imports (at module level only, or anywhere)."""
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("circuitfind"):
            # `from circuitfind import export` imports the submodule, not the package's own imports
            subs = {f"{node.module}.{a.name}" for a in node.names} & _MODULE_NAMES
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("circuitfind"))
    return found


_MODULE_NAMES = {
    ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    for p in PACKAGE.rglob("*.py")
}


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    mods = _modules()
    return {
        n: {m for m in _imports(n, t, top_level_only=top_level_only) if m in mods and m != n} for n, t in mods.items()
    }


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _circles(graph: dict[str, set[str]]) -> list[str]:
    # A package's __init__ importing its own submodules is not a circle; a submodule importing back is.
    return sorted(n for n in graph if n in _reachable(graph, n) and not all(m.startswith(n + ".") for m in graph[n]))


def test_no_import_circle():
    assert not _circles(_graph(top_level_only=True)), "modules on an import circle"


def test_no_import_circle_even_through_imports_inside_functions():
    graph = _graph(top_level_only=False)
    assert "circuitfind.export" in graph["circuitfind.circuit"]  # the check sees the imports
    assert not _circles(graph), f"modules on an import circle: {_circles(graph)}"


def test_evaluate_never_imports_discovery():
    graph = _graph(top_level_only=False)
    for name in ("circuitfind.evaluate", "circuitfind.evaluate.scores"):
        assert "circuitfind.discovery" not in _reachable(graph, name), name


def test_no_function_is_overlong():
    long = {}
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                lines = {n.lineno for stmt in body for n in ast.walk(stmt) if hasattr(n, "lineno")}
                key = f"{name}.{node.name}"
                if len(lines) > MAX_LINES and key not in LONG_FUNCTIONS:
                    long[key] = len(lines)
    assert not long, f"functions over {MAX_LINES} lines of code (split them or state why in LONG_FUNCTIONS): {long}"


def test_import_circuitfind_loads_no_optional_or_script_module():
    code = (
        "import sys, circuitfind; "
        "print(sorted(m for m in ('circuitfind.models.loading', 'circuitfind.cli.plots', 'circuitfind.reproduce', "
        "'circuitfind.cli', 'matplotlib', 'graphviz', 'networkx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_load_model_shows_the_signature_of_the_loader():
    assert inspect.signature(load_model) == inspect.signature(loading.load_model)


def test_readme_layout_matches_the_tree():
    """Every top-level module and subpackage is in the README's layout, and every file it names exists."""
    readme = (PACKAGE.parent / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    named_files = set(re.findall(r"\b(\w+\.py)\b", block))
    named_dirs = set(re.findall(r"\b(\w+)/", block))
    top_files = {p.name for p in PACKAGE.glob("*.py")}
    top_dirs = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert top_files <= named_files, f"modules missing from the README layout: {sorted(top_files - named_files)}"
    assert top_dirs <= named_dirs, f"subpackages missing from the README layout: {sorted(top_dirs - named_dirs)}"
    existing = {p.name for p in PACKAGE.rglob("*.py")} | {p.name for p in PACKAGE.parent.glob("*.py")}
    assert named_files <= existing, f"the README layout names files that do not exist: {sorted(named_files - existing)}"


# The layers, bottom up (README "Layout"): a module imports from its own layer or below, never above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "fileio"),
    ("graph", "export"),
    ("models",),
    ("engine",),
    ("metrics", "tasks"),
    ("problem",),
    ("selection",),
    ("algorithms",),
    ("circuit", "evaluate"),
    ("discovery",),
    ("viewer", "analysis", "reproduce", "scrubbing", "compare"),
    ("sweeps",),
    ("validation",),
    ("cli",),
)
# Imports against the order, each a documented lazy import of a README API.
UPWARD_ALLOWED = {
    ("graph", "models"),  # Graph.from_model(model): a model's graph without building anything else
    ("circuit", "viewer"),  # Circuit.to_html(): the explorer page of a circuit
}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "circuitfind"


def _layer_of() -> dict[str, int]:
    return {unit: i for i, units in enumerate(LAYERS) for unit in units}


def test_every_top_level_module_has_a_layer():
    units = {_unit(n) for n in _modules()} - {"circuitfind", "__main__"}
    assert units == set(_layer_of()), f"modules without a layer: {sorted(units - set(_layer_of()))}"


def test_no_import_goes_up_the_layers():
    layer, upward = _layer_of(), []
    for name, deps in _graph(top_level_only=False).items():
        a = _unit(name)
        if a in ("circuitfind", "__main__"):
            continue
        for dep in deps:
            b = _unit(dep)
            if b != "circuitfind" and layer[b] > layer[a] and (a, b) not in UPWARD_ALLOWED:
                upward.append(f"{name} -> {dep}")
    assert not upward, f"imports against the layer order (README Layout): {sorted(upward)}"


def test_package_root_holds_at_most_12_modules():
    root = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(root) <= 12, root


def test_discover_takes_at_most_ten_parameters_and_names_no_method():
    """``discover``: model, task, method, cut, metric, ablation, tokenizer, progress and ``**options`` (issue 20);
    what a method does is asked of its registry entry and options object, never of its name."""
    import circuitfind.discovery as discovery
    from circuitfind.algorithms import METHODS

    params = inspect.signature(discovery.discover).parameters
    assert len(params) <= 10, list(params)
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    tree = ast.parse(inspect.getsource(discovery))
    allowed = {id(d) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for d in f.args.defaults}
    allowed |= {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef,
                ast.Module)) and ast.get_docstring(n)}  # fmt: skip
    named = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in METHODS and id(node) not in allowed
    ]
    calls = [n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    assert not named and "startswith" not in calls, named


def test_only_the_memory_module_reads_proc():
    """One memory reader: /proc and getrusage are read in circuitfind/engine/memory.py only (package and benchmarks)."""
    root = PACKAGE.parent
    readers = sorted(
        str(p.relative_to(root))
        for folder in ("circuitfind", "benchmarks", "scripts")
        for p in (root / folder).rglob("*.py")
        if re.search(r"""["']/proc/|getrusage\(""", p.read_text())
    )
    assert readers == ["circuitfind/engine/memory.py"], readers


# Function-level imports of circuitfind modules allowed outside cli/ and __init__ files (issue 20: at most 8), each
# a documented lazy import: the layering leaves no circle to break, and `import circuitfind` stays cheap without them.
MAX_FUNCTION_IMPORTS = 8


def _function_level_imports() -> list[str]:
    found: dict[tuple[str, int], str] = {}  # (module, line) -> offender; a nested function's import counts once
    for name, tree in _modules().items():
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        if name.startswith("circuitfind.cli") or not path.exists():  # cli/ and the __init__ files do not count
            continue
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in fn.body:
                for imp in ast.walk(node):
                    if (
                        isinstance(imp, ast.ImportFrom)
                        and imp.level == 0
                        and (imp.module or "").startswith("circuitfind")
                    ):
                        found.setdefault((name, imp.lineno), f"{name}.{fn.name}:{imp.lineno} -> {imp.module}")
                    elif isinstance(imp, ast.Import) and any(a.name.startswith("circuitfind") for a in imp.names):
                        found.setdefault((name, imp.lineno), f"{name}.{fn.name}:{imp.lineno} -> {imp.names[0].name}")
    return sorted(found.values())


def test_at_most_8_function_level_imports_of_circuitfind_modules():
    found = _function_level_imports()
    assert any("circuitfind.graph.from_model" in f for f in found)  # the check sees them (Graph.from_model's)
    assert len(found) <= MAX_FUNCTION_IMPORTS, (
        f"{len(found)} function-level imports of circuitfind modules (at most {MAX_FUNCTION_IMPORTS}; move them to "
        "the module's top, the layers allow it):\n" + "\n".join(found)
    )


# the one stated exception to "one test file per module" (tests/__init__.py says why)
TEST_FILES_NOT_NAMED_AFTER_A_MODULE = {"test_structure.py", "models/test_families.py"}


def test_every_test_file_is_named_after_the_module_it_tests():
    """``tests/<package path>/test_<module>[_real|_browser].py`` for ``circuitfind/<package path>/<module>.py``, or
    ``tests/<package>/test_<package>.py`` for what a package's ``__init__.py`` defines (tests/__init__.py)."""
    tests = Path(__file__).resolve().parent
    wrong = []
    for path in sorted(tests.rglob("test_*.py")):
        rel = path.relative_to(tests)
        module = re.sub(r"_(real|browser)$", "", path.stem.removeprefix("test_"))
        folder = PACKAGE / rel.parent
        init = module == rel.parent.name and (folder / "__init__.py").is_file()
        if not ((folder / f"{module}.py").is_file() or init or rel.as_posix() in TEST_FILES_NOT_NAMED_AFTER_A_MODULE):
            wrong.append(rel.as_posix())
    assert not wrong, f"test files named after no module of circuitfind/ (rename, or split by module): {wrong}"
