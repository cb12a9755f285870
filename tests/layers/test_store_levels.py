"""The layering of the `layers` package, as its one table (`layers.LEVELS`)
says: a module imports only modules of lower levels; siblings of one level
never import each other."""

import ast
from pathlib import Path

import layers

LEVELS = layers.LEVELS
PKG = Path(layers.__file__).parent


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text())
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            target = ".".join(base + ([node.module] if node.module else []))
            if node.module is None:
                for alias in node.names:
                    out.add(".".join(base + [alias.name]))
            else:
                out.add(target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("layers."):
                    out.add(alias.name[len("layers."):])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("layers"):
            out.add(node.module[len("layers."):])
    return {o.strip(".") for o in out}


def test_every_module_has_a_level():
    names = {module_name(p) for p in PKG.rglob("*.py")}
    assert names - set(LEVELS) == set()


def test_imports_go_down_only():
    bad = []
    for path in PKG.rglob("*.py"):
        name = module_name(path)
        for target in imports_of(path, name):
            if target not in LEVELS:
                continue
            if LEVELS[target] >= LEVELS[name] and target != name:
                bad.append(f"{name} (level {LEVELS[name]}) imports {target} "
                           f"(level {LEVELS[target]})")
    assert bad == []


def test_fsd_is_never_imported():
    for path in PKG.rglob("*.py"):
        assert "fsd" not in {n.split(".")[0] for n in _absolute_imports(path)}, path


def _absolute_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            out.add(node.module)
    return out
