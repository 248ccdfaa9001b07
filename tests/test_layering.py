"""Layering: lower never imports higher; the daemon's path never imports Beam or TensorFlow at module level."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ("riverbeam.cli", "riverbeam.commands", "riverbeam.demo")
FORBIDDEN = {
    "riverbeam/errors.py": ("transforms", "online", "pipelines", *TOP, "riverbeam.configuration"),
    "riverbeam/configuration.py": ("transforms", "online", "pipelines", *TOP),
    "riverbeam/local_stack.py": ("transforms", "online", "pipelines", *TOP),
    "riverbeam/gcs.py": ("transforms", "online", "pipelines", *TOP),
    "transforms": ("online", "pipelines", *TOP),
    "online": ("pipelines", *TOP),
    "pipelines": TOP,
}
HEAVY = ("tensorflow", "tensorflow_transform", "apache_beam", "tfx_bsl")


def imports(path: Path, module_level_only: bool = False) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def files_of(target: str) -> list[Path]:
    path = ROOT / target
    return [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))


@pytest.mark.parametrize("target", sorted(FORBIDDEN))
def test_lower_layers_never_import_higher(target):
    violations = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in files_of(target)
        for line, name in imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[target])
    ]
    assert violations == []


@pytest.mark.parametrize("target", ["online", "riverbeam", "transforms/fitted.py", "transforms/spec.py"])
def test_no_module_level_heavy_imports_on_the_daemon_path(target):
    violations = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in files_of(target)
        for line, name in imports(path, module_level_only=True)
        if name.split(".")[0] in HEAVY
    ]
    assert violations == []
