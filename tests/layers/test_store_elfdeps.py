"""elfdeps.py: what an ELF program loads first, read from its headers, and
paths resolved inside a layer's tree."""

import os

from layers import elfdeps

SH = os.path.realpath("/bin/sh")


def test_an_elf_program_names_its_interpreter_and_libraries():
    with open(SH, "rb") as f:
        interp, needed, machine = elfdeps.needs(f.fileno())
    assert interp.startswith("/") and "ld" in os.path.basename(interp)
    assert any(n.startswith("libc.so") for n in needed)
    assert machine == {"x86_64": 62, "aarch64": 183}.get(os.uname().machine, machine)


def test_anything_else_needs_nothing(tmp_path):
    with open(SH, "rb") as f:
        elf = f.read()
    for name, data in [("text", b"#!/bin/sh\necho hi\n"), ("empty", b""),
                       ("cut", elf[:100]), ("bad-headers", elf[:32] + b"\xff" * 32 + elf[64:4096])]:
        (tmp_path / name).write_bytes(data)
        with open(tmp_path / name, "rb") as f:
            assert elfdeps.needs(f.fileno())[:2] == (None, []), name


def test_resolve_follows_symlinks_inside_the_tree_only(tmp_path):
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "libz.so.1.3").write_text("z")
    os.symlink("usr/lib", tmp_path / "lib")
    os.symlink("libz.so.1.3", tmp_path / "usr" / "lib" / "libz.so.1")
    os.symlink("/usr/lib/libz.so.1", tmp_path / "abs")          # from the tree's root
    os.symlink("../../../../etc/passwd", tmp_path / "usr" / "lib" / "up")
    os.symlink("loop", tmp_path / "loop")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert elfdeps.resolve(fd, "lib/libz.so.1") == "usr/lib/libz.so.1.3"
        assert elfdeps.resolve(fd, "/abs") == "usr/lib/libz.so.1.3"
        assert elfdeps.resolve(fd, "usr/lib/up") is None       # etc/passwd: not in the tree
        assert elfdeps.resolve(fd, "loop") is None
        assert elfdeps.resolve(fd, "lib/missing") is None
    finally:
        os.close(fd)
