"""What an ELF program or library loads as soon as it runs: its interpreter
(PT_INTERP) and the libraries it names (DT_NEEDED), read from its headers.

The fetcher (fetcher.py) fetches these when a file it was asked for turns
out to be an ELF file, before the dynamic loader asks for them one after
the other, each a round trip.  Best effort: anything but a 64-bit
little-endian ELF file, or a malformed one, needs nothing; what is fetched
is checked against its TOC digests as any fetch is.

- `needs(fd)` → (interpreter path or None, sonames), from the open file;
- `library_dirs(machine)`: where a loader looks for a soname without
  ld.so.cache (Debian's multiarch directories first, then the plain ones);
- `resolve(root_fd, relpath)`: a path inside a layer's tree, symlinks
  followed inside the tree (an absolute target is taken from the tree's
  root), or None.
"""

from __future__ import annotations

import errno
import os
import struct

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB = 0, 1, 5
MAX_HEADERS = 256        # program headers looked at
MAX_DYNAMIC = 1024       # dynamic entries looked at
MAX_NEEDED = 32
MAX_NAME = 4096
MAX_HOPS = 40            # symlinks followed by `resolve`
TRIPLETS = {62: "x86_64-linux-gnu", 183: "aarch64-linux-gnu", 243: "riscv64-linux-gnu",
            21: "powerpc64le-linux-gnu", 22: "s390x-linux-gnu"}


def needs(fd: int) -> tuple[str | None, list[str], int]:
    """(interpreter, needed sonames, e_machine) of the ELF file open on fd;
    (None, [], 0) when it is none this reads."""
    try:
        head = os.pread(fd, 64, 0)
        if len(head) < 64 or head[:6] != b"\x7fELF\x02\x01":     # 64-bit, little-endian
            return None, [], 0
        (machine,) = struct.unpack_from("<H", head, 18)
        (phoff,) = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        if phentsize != 56 or not 0 < phnum <= MAX_HEADERS:
            return None, [], 0
        table = os.pread(fd, 56 * phnum, phoff)
        loads, interp, dynamic = [], None, None
        for i in range(len(table) // 56):
            kind, _, offset, vaddr, _, filesz, _, _ = struct.unpack_from("<IIQQQQQQ", table, 56 * i)
            if kind == PT_LOAD:
                loads.append((vaddr, offset, filesz))
            elif kind == PT_INTERP:
                interp = _string(os.pread(fd, min(filesz, MAX_NAME), offset))
            elif kind == PT_DYNAMIC:
                dynamic = (offset, min(filesz, 16 * MAX_DYNAMIC))
        if dynamic is None:
            return interp, [], machine
        entries = os.pread(fd, dynamic[1], dynamic[0])
        needed, strtab = [], None
        for i in range(len(entries) // 16):
            tag, value = struct.unpack_from("<qQ", entries, 16 * i)
            if tag == DT_NULL:
                break
            if tag == DT_NEEDED and len(needed) < MAX_NEEDED:
                needed.append(value)
            elif tag == DT_STRTAB:
                strtab = value
        base = next((offset + strtab - vaddr for vaddr, offset, size in loads
                     if strtab is not None and vaddr <= strtab < vaddr + size), None)
        if base is None:
            return interp, [], machine
        names = [_string(os.pread(fd, 256, base + n)) for n in needed]
        return interp, [n for n in names if n and "/" not in n], machine
    except (OSError, struct.error, OverflowError):
        return None, [], 0


def _string(data: bytes) -> str | None:
    name = data.split(b"\0", 1)[0]
    return os.fsdecode(name) if name else None


def library_dirs(machine: int) -> list[str]:
    triplet = TRIPLETS.get(machine)
    multiarch = [f"lib/{triplet}", f"usr/lib/{triplet}"] if triplet else []
    return [*multiarch, "lib64", "usr/lib64", "lib", "usr/lib"]


def resolve(root_fd: int, relpath: str) -> str | None:
    """`relpath` (relative to the tree open on root_fd) with every symlink on
    the way followed inside the tree; None when it leads nowhere there."""
    parts = relpath.split("/")
    done: list[str] = []         # components checked to be no symlink
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        try:
            target = os.readlink("/".join([*done, part]), dir_fd=root_fd)
        except OSError as e:
            if e.errno != errno.EINVAL:          # missing, or not a directory
                return None
            done.append(part)                    # no symlink
            continue
        hops += 1
        if hops > MAX_HOPS:
            return None
        if target.startswith("/"):
            done = []
        parts = target.split("/") + parts
    return "/".join(done) or None
