"""The mount's life: open the layers, take the work area, probe the upper,
mount, serve until unmounted or signalled, and clean up.

Without -f the process forks: the child mounts and serves; the parent waits
until the kernel has sent FUSE_INIT (the mount is live) and exits 0, or prints
the child's one-line error and exits 1 with nothing mounted.
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import signal
import stat
import sys
from typing import NoReturn

import pyfuse3
import trio

from .freeze import SIGNALS, Freezer
from .ops import Operations
from .overlay import Overlay
from .params import OverlayParams, ParamError
from .watchdog import Requests

log = logging.getLogger("fsd")

_FUSE_FLAGS = frozenset("nosuid suid nodev dev noexec exec sync async dirsync".split())


def _raise_limits() -> None:
    """Enough descriptors for a deep stack, and recursion for deep trees (a
    directory move walks the tree it copies)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _collect_less() -> None:
    """Before serving: what exists now (modules, the mount's objects) lives as
    long as the daemon, so the cyclic collector stops scanning it (gc.freeze),
    and it runs after 10,000 new objects instead of 700.  A request makes a few
    short-lived objects and a lookup a node that stays: with the defaults
    a cold walk of a 27,000-entry tree spent a fifth of its CPU (0.045 of
    0.24 s) in the collector, scanning the inode table again and again; 0.015 s
    after this.  A daemon's start collected nothing (cli.py): the garbage its
    imports left (~0.6 MB) stays with the rest, the price of ~6 ms of start."""
    gc.freeze()
    gc.set_threshold(10_000, *gc.get_threshold()[1:])
    gc.enable()


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
    """Everything one mount owns, built from checked params and recovered."""

    def __init__(self, params: OverlayParams, on_init=None):
        self.params = params
        _raise_limits()
        self.overlay = Overlay(params)
        try:
            self.ops = Operations(self.overlay, params.noacl, on_init)
            trio.run(self.ops.recover)
        except BaseException:
            self.overlay.close()
            raise
        # a reader can freeze the upper (freeze.py) through fsd's work area
        self.freezer = Freezer(self.overlay.gate, self.overlay.work.layer.path) \
            if self.overlay.work is not None else None
        log.debug("markers: %s", self.overlay.markers)

    def close(self) -> None:
        self.overlay.close()


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
    """pyfuse3.init, with what libfuse prints on failure folded into one error
    (caught in a memory file: tempfile would import shutil at every start)."""
    saved = os.dup(2)
    with os.fdopen(os.memfd_create("fsd-mount-messages"), "w+b") as said:
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
    _collect_less()
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



