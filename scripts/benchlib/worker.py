"""The bench's timed loops, run as a separate process on a mounted tree.

    python worker.py OP ARGS...

Prints one JSON line, {"seconds": S, ...}: the time of the loop alone, without
the interpreter's start-up. Exits 1 with a one-line message on stderr when an
operation fails (a missing path, an I/O error): a failure, not a timing.
Run it by path, never with -m and never with its cwd in the mount, so that
Python's start-up touches nothing on the filesystem being measured.

OPs:
  seqread FILE                read FILE start to end in 1 MiB blocks
  randread FILE COUNT SEED    COUNT 4 KiB preads at seeded random aligned offsets
  append ROOT LIST            append one byte to each file of LIST (paths under ROOT)
  createsync DIR COUNT        COUNT x (create, write 4 KiB, fsync, close, unlink)
  statlist ROOT LIST          lstat every path of LIST under ROOT
"""

from __future__ import annotations

import json
import os
import random
import sys
import time


def seqread(path: str) -> dict:
    fd = os.open(path, os.O_RDONLY)
    total = 0
    t = time.perf_counter()
    try:
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
    finally:
        os.close(fd)
    return {"seconds": time.perf_counter() - t, "bytes": total}


def randread(path: str, count: str, seed: str) -> dict:
    fd = os.open(path, os.O_RDONLY)
    try:
        blocks = os.fstat(fd).st_size // 4096
        rng = random.Random(int(seed))
        offsets = [rng.randrange(blocks) * 4096 for _ in range(int(count))]
        t = time.perf_counter()
        for off in offsets:
            if len(os.pread(fd, 4096, off)) != 4096:
                raise OSError(f"short read at {off}")
        return {"seconds": time.perf_counter() - t, "reads": len(offsets)}
    finally:
        os.close(fd)


def _list(root: str, listfile: str) -> list[str]:
    with open(listfile) as f:
        return [os.path.join(root, line.rstrip("\n")) for line in f if line.strip()]


def append(root: str, listfile: str) -> dict:
    paths = _list(root, listfile)
    t = time.perf_counter()
    for p in paths:
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
    return {"seconds": time.perf_counter() - t, "files": len(paths)}


def createsync(directory: str, count: str) -> dict:
    block = os.urandom(4096)
    t = time.perf_counter()
    for i in range(int(count)):
        p = os.path.join(directory, f"f{i}")
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, block)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(p)
    return {"seconds": time.perf_counter() - t, "files": int(count)}


def statlist(root: str, listfile: str) -> dict:
    paths = _list(root, listfile)
    t = time.perf_counter()
    for p in paths:
        os.lstat(p)
    return {"seconds": time.perf_counter() - t, "paths": len(paths)}


OPS = {"seqread": seqread, "randread": randread, "append": append,
       "createsync": createsync, "statlist": statlist}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in OPS:
        print(f"worker: unknown op {argv[:1]}; one of {sorted(OPS)}", file=sys.stderr)
        return 2
    try:
        result = OPS[argv[0]](*argv[1:])
    except OSError as e:
        print(f"worker {argv[0]}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
