"""The mount's life: open the layers, take the work area, probe the upper,
mount, serve until unmounted or signalled, and clean up.

Without -f the process forks: the child mounts and serves; the parent waits
until the kernel has sent FUSE_INIT (the mount is live) and exits 0, or prints
the child's one-line error and exits 1 with nothing mounted.
"""

from __future__ import annotations

import fcntl
import logging
import os
import resource
import signal
import stat
import sys
import tempfile
import time
from typing import NoReturn

import pyfuse3
import trio

from .attr import AttrOps
from .copy_up import INDEX_DIR, TMP_DIR, CopyUp, discard_tree
from .dir import DirOps
from .file import FileOps
from .freeze import SIGNALS, Freezer, WriteGate
from .idmap import IdMap
from .inode import UPPER, InodeTable
from .layer import RENAME_WHITEOUT, Layer, Stack
from .namei import Namei
from .ops import Operations
from .params import OverlayParams, ParamError
from .quota import Quota
from .readdir import ReaddirOps
from .watchdog import Requests
from .whiteout import Markers, whiteout_mode

log = logging.getLogger("fsd")

WORK_AREA = "fsd"  # fsd's own directory inside the workdir
WORK_LOCK_WAIT = 2.0  # seconds a mount waits for the work area's last daemon to exit
_FUSE_FLAGS = frozenset("nosuid suid nodev dev noexec exec sync async dirsync".split())


def _raise_limits() -> None:
    """Enough descriptors for a deep stack, and recursion for deep trees (a
    directory move walks the tree it copies)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def open_work_area(params: OverlayParams) -> tuple[Layer, int]:
    """fsd's directory in the workdir: locked against a second mount, emptied of
    what an earlier run left half-built.

    The lock is held until the daemon exits, which is a moment after its
    unmount: a remount right after `fusermount3 -u` waits up to
    WORK_LOCK_WAIT seconds for it; past that, ParamError naming the holder."""
    path = os.path.join(params.workdir, WORK_AREA)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    lock_fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + WORK_LOCK_WAIT
    while True:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            holders = _flock_holders(os.fstat(lock_fd))
            os.close(lock_fd)
            by = f" (pid {', '.join(map(str, holders))})" if holders else ""
            raise ParamError(f"upperdir '{params.upperdir}' and workdir '{params.workdir}' "
                             f"are in use by another mount{by}") from None
    work = Layer(path, UPPER)
    discard_tree(work, TMP_DIR)
    work.mkdir(TMP_DIR, 0o700)
    if work.try_lstat(INDEX_DIR) is None:
        work.mkdir(INDEX_DIR, 0o700)
    return work, lock_fd


def _flock_holders(st: os.stat_result) -> list[int]:
    """Pids holding a flock on the file `st` describes, from /proc/locks
    (`N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF`, device numbers in hex)."""
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    return sorted({int(fields[4]) for fields in (line.split() for line in lines)
                   if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == key
                   and fields[4].isdigit()})


def probe_markers(work: Layer, forced_whiteout: str | None) -> Markers:
    """Find out what the upper's filesystem lets us write, in a scratch dir."""
    probe = TMP_DIR + b"/probe"
    work.mkdir(probe, 0o700)
    try:
        chardev = True
        try:
            mode, rdev = whiteout_mode()
            work.mknod(probe + b"/wh", mode, rdev)
        except OSError:
            chardev = False
        opaque = prefix = None
        for candidate in (b"trusted.overlay.", b"user.overlay."):
            try:
                work.setxattr(probe, candidate + b"fsd.probe", b"y")
            except OSError:
                continue
            opaque, prefix = candidate + b"opaque", candidate
            break
        rename_whiteout = False
        if chardev:
            os.close(work.open(probe + b"/a", os.O_WRONLY | os.O_CREAT, 0o600))
            try:
                work.rename(probe + b"/a", work, probe + b"/b", RENAME_WHITEOUT)
                rename_whiteout = True
            except OSError:
                pass
    finally:
        discard_tree(work, probe)
    whiteout = forced_whiteout or ("chardev" if chardev else "file")
    return Markers(whiteout=whiteout, opaque_xattr=opaque, private_prefix=prefix,
                   rename_whiteout=rename_whiteout and whiteout == "chardev")


def fuse_options(params: OverlayParams) -> set[str]:
    opts = {"fsname=fsd", "subtype=fsd", "default_permissions"}
    if os.geteuid() == 0 or params.allow_other:
        opts.add("allow_other")
    if os.geteuid() == 0:
        opts.update(("dev", "suid"))
    for flag in params.passthrough:
        if flag in _FUSE_FLAGS:
            opts.discard({"nodev": "dev", "nosuid": "suid", "noexec": "exec"}.get(flag, ""))
            opts.add(flag)
    if params.noatime:
        opts.add("noatime")  # shown in the mount table; fsd does the work (FileOps)
    if params.ro:
        opts.add("ro")
    return opts


class Mount:
    """Everything one mount owns, built from checked params."""

    def __init__(self, params: OverlayParams, on_init=None):
        self.params = params
        _raise_limits()
        self.lock_fd = None
        lowers = [Layer(p, i) for i, p in enumerate(params.lowerdirs)]
        upper = work = None
        if params.upperdir is not None:
            upper = Layer(params.upperdir, UPPER)
            work, self.lock_fd = open_work_area(params)
            markers = probe_markers(work, params.whiteout)
        else:
            markers = Markers("chardev", None, None, False)
        self.stack = Stack(lowers, upper, work)
        gate = WriteGate()
        # a reader can freeze the upper (freeze.py) through fsd's work area
        self.freezer = Freezer(gate, os.path.join(params.workdir, WORK_AREA)) \
            if work is not None else None
        self.table = InodeTable([layer.dev for layer in [*lowers, upper] if layer is not None])
        self.namei = Namei(self.stack, self.table, markers)
        self.namei.root_node()
        fsync = params.fsync and not params.volatile
        idmap = IdMap(params)
        quota = None
        if params.quota_bytes is not None or params.quota_inodes is not None:
            quota = Quota(params.quota_bytes, params.quota_inodes)
            quota.scan(upper.fd)  # before serving: no request waits for it
        copyup = CopyUp(self.stack, self.table, self.namei, markers, idmap, quota, fsync)
        attrs = AttrOps(self.stack, copyup, idmap, params.timeout, params.static_nlink, params.metacopy)
        dirs = DirOps(self.stack, self.table, self.namei, copyup, markers, idmap)
        if work is not None:
            dirs.finish_interrupted_move()
            trio.run(copyup.finish_interrupted_links)
        self.ops = Operations(
            self.stack, self.table, self.namei, attrs, dirs,
            FileOps(self.stack, self.table, copyup, params.writable, fsync, params.noatime),
            ReaddirOps(self.table, self.namei, attrs, dir_atime=not (params.noatime or params.nodiratime)),
            params.writable, params.noacl, on_init, gate)
        log.debug("markers: %s", markers)

    def close(self) -> None:
        self.stack.close()
        if self.lock_fd is not None:
            os.close(self.lock_fd)


async def _serve(freezer: Freezer | None, requests: Requests) -> None:
    # the freeze signals are caught from here on, before the mount can go live
    # (FUSE_INIT is answered inside pyfuse3.main): none can end the daemon
    with trio.open_signal_receiver(*SIGNALS) as freeze_signals:
        async with trio.open_nursery() as nursery:
            async def stop_on_signal():
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT,
                                               signal.SIGHUP) as signals:
                    async for signum in signals:
                        log.info("signal %d: unmounting", signum)
                        pyfuse3.terminate()
                        return
            nursery.start_soon(stop_on_signal)
            nursery.start_soon(requests.watch)
            if freezer is not None:
                nursery.start_soon(freezer.serve, freeze_signals)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()


def _setup_logging(params: OverlayParams, detached: bool) -> None:
    root = logging.getLogger("fsd")
    root.setLevel(logging.DEBUG if params.debug else logging.INFO)
    fmt = logging.Formatter("%(asctime)s fsd[%(process)d] %(levelname)s %(message)s")
    root.handlers.clear()
    level = logging.DEBUG if params.debug else logging.WARNING
    if params.logfile:
        handler = logging.FileHandler(params.logfile)
        handler.setFormatter(fmt)
        handler.setLevel(level)
        root.addHandler(handler)
        for warning in params.warnings:  # already printed on stderr by the cli
            handler.handle(log.makeRecord("fsd", logging.WARNING, __file__, 0, warning, (), None))
    if not detached:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(fmt)
        handler.setLevel(level)
        root.addHandler(handler)
    elif os.path.exists("/dev/log") and stat.S_ISSOCK(os.stat("/dev/log").st_mode):
        from logging.handlers import SysLogHandler  # only a detached daemon needs it
        try:
            handler = SysLogHandler(address="/dev/log")
        except OSError:
            return
        handler.setFormatter(logging.Formatter("fsd[%(process)d]: %(levelname)s %(message)s"))
        handler.setLevel(level)
        root.addHandler(handler)


def _check_fuse_device() -> None:
    try:
        st = os.stat("/dev/fuse")
    except OSError as exc:
        raise ParamError(f"/dev/fuse: {exc.strerror}") from None
    if not stat.S_ISCHR(st.st_mode):
        raise ParamError("/dev/fuse is not a character device")


def _fuse_mount(ops, params: OverlayParams) -> None:
    """pyfuse3.init, with what libfuse prints on failure folded into one error."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as said:
        os.dup2(said.fileno(), 2)
        try:
            pyfuse3.init(ops, params.mountpoint, fuse_options(params))
        except RuntimeError:
            os.dup2(saved, 2)
            said.seek(0)
            lines = said.read().decode(errors="replace").split("\n")
            detail = next((ln.removeprefix("fuse: ") for ln in reversed(lines) if ln.strip()), "mount failed")
            raise ParamError(f"cannot mount on '{params.mountpoint}': {detail}") from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _mount_and_serve(params: OverlayParams, on_init, on_error) -> int:
    try:
        _check_fuse_device()
        mount = Mount(params, on_init)
        _fuse_mount(mount.ops, params)
    except ParamError as exc:
        return on_error(str(exc))
    except OSError as exc:
        where = f" '{os.fsdecode(exc.filename)}'" if exc.filename else ""
        return on_error(f"{exc.strerror}{where}")
    try:
        trio.run(_serve, mount.freezer, mount.ops.requests)
    except* ConnectionAbortedError:
        # Someone aborted the FUSE connection (/sys/fs/fuse/connections/N/abort):
        # no request can be answered any more; end as after an unmount.
        log.warning("the kernel aborted the FUSE connection of %s", params.mountpoint)
    finally:
        pyfuse3.close(unmount=True)
        mount.close()
    return 0


def _exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown. Once the mount is gone
    and the layers are closed nothing in it matters, and the teardown frees every
    node of the inode table one by one and runs trio's finalizers: `fsd -f` took
    up to 2 s to exit after `fusermount3 -u` on a big tree, and the starter of a
    background mount ~30 ms to return."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to say there
            pass
    os._exit(code)


def run(params: OverlayParams, foreground: bool) -> int:
    """Mount and serve; in the background unless `foreground`. The process ends
    here (`_exit_now`), except when a background start fails: then the exit
    code is returned."""
    if params.logfile:
        try:
            open(params.logfile, "a").close()
        except OSError as exc:
            print(f"fsd: logfile '{params.logfile}': {exc.strerror}", file=sys.stderr)
            return 1
    os.umask(0)
    if foreground:
        _setup_logging(params, detached=False)

        def error(msg):
            print(f"fsd: {msg}", file=sys.stderr)
            return 1
        _exit_now(_mount_and_serve(params, None, error))

    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(ready_w)
        with os.fdopen(ready_r, "rb") as pipe:
            message = pipe.read()
        if message == b"ok":
            _exit_now(0)
        text = message.decode(errors="replace").strip() or "the daemon exited before the mount was live"
        print(f"fsd: {text}", file=sys.stderr)
        os.waitpid(pid, 0)
        return 1

    os.close(ready_r)
    os.setsid()
    _setup_logging(params, detached=True)

    def ready():
        os.write(ready_w, b"ok")
        os.close(ready_w)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)

    def error(msg):
        os.write(ready_w, msg.encode())
        os.close(ready_w)
        return 1

    try:
        code = _mount_and_serve(params, ready, error)
    except BaseException:
        log.error("fsd daemon failed", exc_info=True)
        code = 1
    _exit_now(code)



