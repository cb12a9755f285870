"""The in-process harness stays whole as fsd changes: every pyfuse3 function
fsd calls is either faked by the harness's Session or needs no FUSE session."""

from __future__ import annotations

import ast
import pathlib

from harness import Session

FSD = pathlib.Path(__file__).resolve().parents[2] / "fsd"
# types, constants and the error; and the calls of the mount's life, which the
# harness does not make (it builds fsd.mount.Mount and calls its Operations)
NEEDS_NO_SESSION = {"EntryAttributes", "FileInfo", "FdRange", "StatvfsData", "Operations", "FUSEError",
                    "ROOT_INODE", "init", "main", "close", "terminate"}


def test_every_pyfuse3_call_of_fsd_is_faked_or_needs_no_session():
    used = set()
    for path in FSD.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id == "pyfuse3":
                used.add(node.attr)
            if isinstance(node, ast.ImportFrom) and node.module == "pyfuse3":
                used.update(f"from pyfuse3 import {a.name}" for a in node.names)
    unknown = used - NEEDS_NO_SESSION - set(Session.FAKED)
    assert not unknown, (f"fsd uses pyfuse3's {sorted(unknown)}: give tests/fsd/harness.py's Session "
                         "a fake of each, or list it here if it needs no FUSE session")
