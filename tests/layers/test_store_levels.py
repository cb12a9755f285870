"""The layering of the `layers` package (DESIGN.md): a module imports only
modules of lower levels; siblings of one level never import each other.
A decimal orders modules inside one of DESIGN's levels (digest uses errors)."""

import ast
from pathlib import Path

import layers

LEVELS = {
    "units": 0, "errors": 0.01, "progress": 0.01, "digest": 0.1, "layout": 0.2,
    "fsutil": 1, "records": 1, "config": 1, "fsprobe": 1, "tarsplit": 1.5, "driverchoice": 1.5,
    "quota": 2, "ociwriter": 2, "bundle": 2,
    "archive": 2, "recordstore": 2, "changelist": 2, "tarentries": 2,
    "source": 2.5, "drivers.base": 2.5, "analyze": 2.5,
    "layerstore": 3, "imagestore": 3, "containerstore": 3, "mounts": 3,
    "drivers.fuse": 3, "drivers.overlay": 3, "drivers.vfs": 3, "drivers.btrfs": 3.5,
    "drivers": 4, "volumes": 3, "gc": 4, "check": 4,
    "store": 5,
    "cli": 6, "__init__": 0,
    # pull and push (layers/registry/): below the facade, `command` above it
    "registry": 0, "registry.errors": 0.05, "registry.auth": 0, "registry.parallel": 0,
"registry.reference": 0.3, "registry.credentials": 1.1,
    "registry.regconf": 1.1, "registry.parking": 1.5, "registry.blobinfo": 1.5,
    "registry.client": 2, "registry.remote": 2.8, "registry.upload": 2.8,
    "registry.session": 3, "registry.command": 5.5,
}
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
