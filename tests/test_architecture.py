"""The package's layering: imports flow one way, the estimators and the registry sit at the bottom, and what a
penalty declares (its metrics) reaches the model outputs without a second list to edit."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from hf_knife.modeling import knife_output_fields
from hf_knife.penalties import KNIFEPenalty
from hf_knife.registry import PENALTY_REGISTRY

PACKAGE = Path(__file__).resolve().parents[1] / "hf_knife"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The hf_knife modules ``path`` imports at run time (``TYPE_CHECKING`` blocks and the package root excluded)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
        for sub in ast.walk(node)
    }
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or id(node) in typing_only:
            continue
        base = package[: len(package) - node.level + 1] if node.level else []
        target = ".".join(base + ([node.module] if node.module else []))
        for candidate in [target, *(f"{target}.{alias.name}" for alias in node.names)]:
            if candidate in modules and candidate != "hf_knife":
                found.add(candidate)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}


def test_imports_form_no_cycle(graph):
    """Every module can be ordered below the modules that import it (a topological order exists)."""
    remaining = {name: set(deps) for name, deps in graph.items()}
    while remaining:
        leaves = [name for name, deps in remaining.items() if not deps & set(remaining)]
        assert leaves, f"import cycle among {sorted(remaining)}"
        for name in leaves:
            del remaining[name]


def test_bottom_layers_import_nothing_above_them(graph):
    assert graph["hf_knife.registry"] == set()
    for name, deps in graph.items():
        if name.startswith("hf_knife.estimators"):
            outside = {d for d in deps if not d.startswith("hf_knife.estimators")}
            assert outside <= {"hf_knife.registry"}, (name, outside)
    # the config knows the penalties only through the registry
    assert not {d for d in graph["hf_knife.config"] if d.startswith(("hf_knife.penalties", "hf_knife.modeling"))}


def test_a_registered_penalty_declares_its_output_fields(monkeypatch):
    class Custom(KNIFEPenalty):
        name = "custom"
        metric_names = ("custom_estimate",)

    assert "knife_custom_estimate" not in knife_output_fields()
    monkeypatch.setitem(PENALTY_REGISTRY._entries, "custom", Custom)
    assert "knife_custom_estimate" in knife_output_fields()
    assert {"knife_loss", "knife_mutual_information", "knife_weight", "knife_multiplier"} <= set(knife_output_fields())
