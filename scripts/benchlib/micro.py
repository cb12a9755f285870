"""The in-process microbench: microseconds per request of fsd's handlers and
of the pyfuse3 floor's (floorfs.py), with no FUSE mount and no kernel.

    .venv/bin/python scripts/benchlib/micro.py [--n N] [--only OP...]

Each operation's handler coroutine is driven as the receive loop drives it
(`send(None)` until it completes), N times in a row, on a fresh mount of fsd
(one lower, an upper; 16 lowers for the deep lookup) and of the floor on the same kind of tree; the median of
5 rounds of the process's CPU time (user and system: steadier than wall time
on a shared machine; waits such as fsync's are not in it) is printed per
operation, with fsd - floor (what fsd's overlay logic
costs per request above a bare passthrough on the same pyfuse3) and how often
a handler of fsd suspended (in the daemon such a handler leaves the reader for
a task of its own: a trip through trio's scheduler). Without the
kernel and /dev/fuse the figures leave out the transport and the receive loop
(the bench's "floor us/req" has them); they are for before/after comparisons
of one handler, on one machine, in one run. A measuring instrument, not a
test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# --fsd DIR: the fsd package of another checkout (before/after a change, side by side)
_FSD_ROOT = sys.argv[sys.argv.index("--fsd") + 1] if "--fsd" in sys.argv[:-1] else str(REPO)
sys.path.insert(0, _FSD_ROOT)
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyfuse3  # noqa: E402
import trio  # noqa: E402

from floorfs import Floor  # noqa: E402

ROOT = pyfuse3.ROOT_INODE


class Ctx:
    def __init__(self):
        self.uid, self.gid, self.pid, self.umask = os.getuid(), os.getgid(), os.getpid(), 0o022
        self.kill_suidgid = self.kill_sgid = False


class Fields:
    update_atime = update_ctime = update_mode = update_uid = update_gid = update_size = False
    update_mtime = True


SUSPENDED: dict[str, int] = {}  # operation -> calls in which a handler suspended
_measuring = [""]  # the operation being measured


async def run(coro):
    """A handler's result, its coroutine run as the receive loop runs it:
    `send(None)` in the calling task, and only if it suspends handed to trio
    trap by trap (as pyfuse3's drive_suspended does, in a task of its own)."""
    try:
        trap = coro.send(None)
    except StopIteration as done:
        return done.value
    SUSPENDED[_measuring[0]] = SUSPENDED.get(_measuring[0], 0) + 1
    return await _finish(coro, trap)


@types.coroutine
def _finish(coro, trap):
    while True:
        try:
            value = yield trap
        except BaseException as exc:
            try:
                trap = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                trap = coro.send(value)
            except StopIteration as done:
                return done.value


def _fake_session() -> None:
    """pyfuse3's functions that need a live session, as no-ops."""
    pyfuse3.readdir_reply = lambda token, name, attr, next_id: True
    pyfuse3.invalidate_inode = lambda inode, attr_only=False: None
    pyfuse3.passthrough_granted = lambda: False


COPY_UPS = 5000  # lower files for the copy-up operation: no more calls of it than that
REMOVALS = 5000  # lower files for the lower unlink operation (w7's): as many calls at most
# the deep lookup (w9's): DEEP_DIRS directories s/dK, each in the top lower and
# in DEEP_LAYERS - 1 lower layers below it, every one holding a file of its own
DEEP_LAYERS = 16
DEEP_DIRS = 500


def _calls(name: str, n: int) -> int:
    """Calls per round of operation name: those that use up a lower file each
    have a fifth of their files per round."""
    if "copy-up" in name:
        return min(n, COPY_UPS // 5)
    if "unlink (lower" in name:
        return min(n, REMOVALS // 5)
    if "layers" in name:
        return min(n, DEEP_DIRS // 5)
    return n


def _tree(root: Path) -> None:
    (root / "d").mkdir(parents=True)
    for i in range(100):
        (root / "d" / f"f{i:03d}").write_bytes(os.urandom(4096))
    (root / "x").touch()  # a file with an xattr of its own
    os.setxattr(root / "x", "user.mark", b"y")
    (root / "c").mkdir()
    for i in range(COPY_UPS):
        (root / "c" / f"f{i}").write_bytes(os.urandom(4096))
    (root / "r").mkdir()
    for i in range(REMOVALS):
        (root / "r" / f"f{i}").touch()
    _deep_layer(root, 0)


def _deep_layer(root: Path, layer: int) -> None:
    """Layer number `layer`'s part of the deep directories (the floor's one
    tree holds every layer's)."""
    for k in range(DEEP_DIRS):
        (root / "s" / f"d{k}").mkdir(parents=True, exist_ok=True)
        (root / "s" / f"d{k}" / f"f{layer}").touch()


def _fsd(base: Path):
    from fsd.mount import Mount
    from fsd.params import parse_options
    for d in ("lower", "upper", "work", "mnt"):
        (base / d).mkdir()
    _tree(base / "lower")
    deep = [base / f"deep{layer}" for layer in range(1, DEEP_LAYERS)]
    for layer, root in enumerate(deep, 1):
        _deep_layer(root, layer)
    lowers = ":".join(str(p) for p in [base / "lower", *deep])
    params = parse_options([f"lowerdir={lowers},upperdir={base}/upper,workdir={base}/work"],
                           str(base / "mnt"))
    mount = Mount(params)
    mount.ops.init()
    return mount.ops, mount


def _floor(base: Path):
    (base / "upper").mkdir()
    _tree(base / "upper")
    for layer in range(1, DEEP_LAYERS):
        _deep_layer(base / "upper", layer)
    return Floor(os.fsencode(base / "upper")), None


async def operations(ops, ctx):
    """{name: an async function making one request}: what each measures."""
    d = (await ops.lookup(ROOT, b"d", ctx)).st_ino
    f = (await ops.lookup(d, b"f000", ctx)).st_ino
    await ops.create(d, b"up", 0o100644, os.O_WRONLY, ctx)  # an upper file (its handle left open)
    up = (await ops.lookup(d, b"up", ctx)).st_ino
    fh = (await ops.open(f, os.O_RDONLY, ctx)).fh
    x = (await ops.lookup(ROOT, b"x", ctx)).st_ino
    c = (await ops.lookup(ROOT, b"c", ctx)).st_ino
    await ops.create(c, b"up", 0o100644, os.O_WRONLY, ctx)  # c copied up before what is measured
    names = iter(range(10**9))
    lower_files = iter(range(COPY_UPS))
    r = (await ops.lookup(ROOT, b"r", ctx)).st_ino
    removed = iter(range(REMOVALS))
    s = (await ops.lookup(ROOT, b"s", ctx)).st_ino
    deep_dirs = iter(range(DEEP_DIRS))

    async def lookup():
        await run(ops.lookup(d, b"f001", ctx))

    async def lookup_negative():
        await run(ops.lookup(d, b"nothing", ctx))

    async def getattr_lower():
        await run(ops.getattr(f, ctx))

    async def getattr_upper():
        await run(ops.getattr(up, ctx))

    async def getxattr_enodata(ino):
        try:
            await run(ops.getxattr(ino, b"security.capability", ctx))
        except pyfuse3.FUSEError:
            pass

    async def getxattr_present_lower():
        await run(ops.getxattr(x, b"user.mark", ctx))

    async def listxattr(ino):
        await run(ops.listxattr(ino, ctx))

    async def open_release():
        await run(ops.release((await run(ops.open(f, os.O_RDONLY, ctx))).fh))

    async def read():
        await run(ops.read(fh, 0, 4096))

    async def setattr_mtime():
        await run(ops.setattr(up, _Attr, Fields, None, ctx))

    async def create_write_release_unlink():
        name = b"n%d" % next(names)
        info, attr = await run(ops.create(d, name, 0o100644, os.O_WRONLY, ctx))
        await run(ops.write(info.fh, 0, b"x" * 4096, ctx))
        await run(ops.release(info.fh))
        await run(ops.unlink(d, name, ctx))
        await run(ops.forget([(attr.st_ino, 1)]))  # the kernel drops the unlinked inode

    async def unlink_lower():
        name = b"f%d" % next(removed)
        ino = (await run(ops.lookup(r, name, ctx))).st_ino
        await run(ops.unlink(r, name, ctx))
        await run(ops.forget([(ino, 1)]))

    async def copy_up_append():
        lower = (await run(ops.lookup(c, b"f%d" % next(lower_files), ctx))).st_ino
        info = await run(ops.open(lower, os.O_WRONLY | os.O_APPEND, ctx))
        await run(ops.write(info.fh, 4096, b"x", ctx))
        await run(ops.release(info.fh))

    async def lookup_deep():
        k = next(deep_dirs)
        dk = (await run(ops.lookup(s, b"d%d" % k, ctx))).st_ino
        await run(ops.lookup(dk, b"f%d" % (DEEP_LAYERS - 1), ctx))

    async def listing():
        dh = (await run(ops.opendir(d, ctx))).fh
        await run(ops.readdir(dh, 0, None))
        await run(ops.releasedir(dh))

    return {
        "lookup": lookup,
        "lookup (negative)": lookup_negative,
        "getattr (lower file)": getattr_lower,
        "getattr (upper file)": getattr_upper,
        "getxattr (ENODATA, upper file)": functools.partial(getxattr_enodata, up),
        "getxattr (ENODATA, lower file)": functools.partial(getxattr_enodata, f),
        "getxattr (present, lower file)": getxattr_present_lower,
        "listxattr (lower file)": functools.partial(listxattr, f),
        "listxattr (upper file)": functools.partial(listxattr, up),
        "open+release (lower)": open_release,
        "read 4 KiB": read,
        "setattr mtime (upper)": setattr_mtime,
        "create+write+release+unlink+forget": create_write_release_unlink,
        "lookup+copy-up (append)+write+release": copy_up_append,
        "lookup+unlink (lower file: a whiteout)+forget": unlink_lower,
        "opendir+readdir 100+releasedir": listing,
        f"lookup of a new dir in {DEEP_LAYERS} layers + of its bottom layer's file": lookup_deep,
    }


class _Attr:
    st_mtime_ns = 1_000_000_000


def measure(make, n: int, only) -> dict[str, float]:
    """CPU µs per call of each operation: the median of 5 rounds of n calls."""
    base = Path(tempfile.mkdtemp(prefix="strata-micro-"))
    try:
        ops, keep = make(base)
        out = {}

        async def rounds():  # in trio's context, as handlers run
            for name, call in (await operations(ops, Ctx())).items():
                if only and not any(o in name for o in only):
                    continue
                times = []
                calls = _calls(name, n)
                _measuring[0] = name
                for _ in range(5):
                    t = time.process_time()
                    for _ in range(calls):
                        await call()
                    times.append((time.process_time() - t) / calls * 1e6)
                out[name] = statistics.median(times)

        trio.run(rounds)
        if keep is not None:
            keep.close()
        return out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="calls per round (default 2000)")
    ap.add_argument("--only", nargs="+", metavar="OP", help="operations whose name contains OP")
    ap.add_argument("--fsd", metavar="DIR", help="measure the fsd package in DIR (a checkout or a "
                    "worktree of an older commit) instead of this checkout's")
    ap.add_argument("--no-floor", action="store_true", help="fsd only")
    args = ap.parse_args(argv)
    _fake_session()
    fsd = measure(_fsd, args.n, args.only)
    suspended = dict(SUSPENDED)
    floor = {name: float("nan") for name in fsd} if args.no_floor else measure(_floor, args.n, args.only)
    width = max(map(len, fsd))
    print(f"{'operation':<{width}}  fsd us  floor us  fsd-floor  fsd suspended")
    for name, us in fsd.items():
        calls = 5 * _calls(name, args.n)
        print(f"{name:<{width}}  {us:6.1f}  {floor[name]:8.1f}  {us - floor[name]:9.1f}  "
              f"{suspended.get(name, 0) / calls:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
