"""The module levels: a module imports only from lower levels (fsd: the table in
fsd/__init__.py; layers: below)."""

import ast
import pathlib

import pytest

from fsd import LEVELS as FSD_LEVELS

ROOT = pathlib.Path(__file__).resolve().parents[2]


def local_imports(path: pathlib.Path, package: str) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif node.module and node.module.split(".")[0] == package and node.module != package:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package and len(parts) > 1:
                    found.add(parts[1])
    return found


@pytest.mark.parametrize("module", sorted(p.stem for p in (ROOT / "fsd").glob("*.py") if p.stem != "__init__"))
def test_fsd_module_imports_only_lower_levels(module):
    assert module in FSD_LEVELS, f"fsd/{module}.py has no level in the table"
    for imported in local_imports(ROOT / "fsd" / f"{module}.py", "fsd"):
        assert FSD_LEVELS[imported] < FSD_LEVELS[module], f"fsd/{module}.py imports {imported}"


def test_fsd_and_layers_share_no_imports():
    for path in (ROOT / "layers").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "fsd" or n.startswith("fsd.") for n in names), f"{path} imports fsd"
