"""Layering: lower never imports higher, no import cycles, and Beam/TensorFlow stay off the daemon's path.

Layers, lowest first: ``core`` ← ``transforms`` ← ``online`` ← ``pipelines`` ← ``riverbeam``
(the CLI and the Python API). Function-level imports count as imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "transforms", "online", "pipelines", "riverbeam")
HEAVY = ("tensorflow", "tensorflow_transform", "apache_beam", "tfx_bsl")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, module_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) for every import of `path`, relative imports resolved."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.append((node.lineno, base))
            # `from package import module` imports the module too
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def our_modules() -> dict[str, Path]:
    return {module_name(path): path for layer in LAYERS for path in sorted((ROOT / layer).rglob("*.py"))}


def layer_of(module: str) -> int | None:
    top = module.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else None


def files_of(target: str) -> list[Path]:
    path = ROOT / target
    return [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))


@pytest.mark.parametrize("layer", LAYERS)
def test_lower_layers_never_import_higher(layer):
    violations = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in files_of(layer)
        for line, name in imports(path)
        if layer_of(name) is not None and layer_of(name) > LAYERS.index(layer)
    ]
    assert violations == []


def import_graph() -> dict[str, set[str]]:
    modules = our_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for _, imported in imports(path):
            if imported in modules and imported != name:
                graph[name].add(imported)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (a list of modules, first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    # a package's __init__ importing its own submodules is not a cycle of logic: drop parent edges
    graph = {name: {i for i in deps if not name.startswith(i + ".")} for name, deps in import_graph().items()}
    assert find_cycle(graph) is None


@pytest.mark.parametrize("target", ["core", "online", "riverbeam", "transforms/fitted.py", "transforms/spec.py"])
def test_no_module_level_heavy_imports_on_the_daemon_path(target):
    violations = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in files_of(target)
        for line, name in imports(path, module_level_only=True)
        if name.split(".")[0] in HEAVY
    ]
    assert violations == []


def test_the_python_api_imports_no_cli_command():
    """`riverbeam.api` is the library surface: what it shares with a command (the job kinds,
    `online.config.job_config_class`) lives below the CLI, never in `riverbeam.commands`."""
    violations = [f"riverbeam/api.py:{line} imports {name}" for line, name in imports(ROOT / "riverbeam" / "api.py") if name.startswith("riverbeam.commands")]
    assert violations == []


# -- the wings of online/ ------------------------------------------------------------------------
# Each wing may import the base of `online` (its top-level modules and kafka_clients) and the
# wings listed for it, as its package docstring says; the base imports no wing.
WINGS = {
    "learning": set(),
    "checkpoints": {"learning"},
    "consume": {"learning", "checkpoints"},
    "replay": {"learning", "checkpoints"},
    "serving": {"learning", "checkpoints"},
}


def wing_of(module: str) -> str | None:
    """The wing of an `online` module (``"base"`` for the shared base), None outside `online`."""
    parts = module.split(".")
    if parts[0] != "online":
        return None
    return parts[1] if len(parts) > 2 and parts[1] in WINGS else "base"


def test_wing_of():
    assert wing_of("online.learning.learner") == "learning"
    assert wing_of("online.config") == "base"
    assert wing_of("online.kafka_clients.base") == "base"
    assert wing_of("online.learning") == "base"  # the package itself: its docstring only
    assert wing_of("pipelines.archive") is None


@pytest.mark.parametrize("wing", ["base", *WINGS])
def test_wings_import_only_what_their_docstring_allows(wing):
    allowed = {"base", wing} | WINGS.get(wing, set())
    violations = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in files_of("online")
        if wing_of(module_name(path)) == wing
        for line, name in imports(path)
        if wing_of(name) is not None and wing_of(name) not in allowed
    ]
    assert violations == []


def test_every_wing_says_what_it_owns_and_may_import():
    for wing in WINGS:
        docstring = ast.get_docstring(ast.parse((ROOT / "online" / wing / "__init__.py").read_text())) or ""
        assert "Owns" in docstring or "owns" in docstring, wing
        assert "May import" in docstring, wing
