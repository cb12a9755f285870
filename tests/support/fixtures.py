"""The objects behind the real-mount fixtures of tests/conftest.py.

FsdLog        the fsd log files of one test and the check for ERROR lines
Deadline      aborts a test's FUSE connections when it runs too long
FsdRunner     starts fsd (background, foreground, any command line) and cleans
              up whatever it started
FsdMount      one fsd mount: mountpoint, daemon pids, log, how it was started
KernelOverlay mounts the kernel overlay and unmounts it at the end
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import mounts
from .mounts import Result

DEFAULT_DEADLINE = 60.0


class FsdLog:
    ERROR = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback \(most recent call last\)")

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(exist_ok=True)
        self.allowed: list[re.Pattern] = []
        self.allow_all = False
        self._n = 0

    def new_path(self, stem: str = "fsd") -> Path:
        self._n += 1
        return self.dir / f"{stem}-{self._n}.log"

    def expect_errors(self, *regexes: str):
        if not regexes:
            self.allow_all = True
        self.allowed += [re.compile(r) for r in regexes]

    def text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.dir.glob("*.log")))

    def error_lines(self) -> list[str]:
        return [line for line in self.text().splitlines() if self.ERROR.search(line)]

    def unexpected_errors(self) -> list[str]:
        if self.allow_all:
            return []
        return [line for line in self.error_lines() if not any(r.search(line) for r in self.allowed)]


class Deadline:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.fired = False
        self.minors: set[int] = set()
        self.procs: list[subprocess.Popen] = []
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch_mount(self, mnt):
        for m in mounts.mounts_at(mnt):
            if m.fstype.startswith("fuse"):
                self.minors.add(m.minor)

    def _fire(self):
        self.fired = True
        for minor in list(self.minors):
            mounts.fuse_abort(minor)

    def cancel(self):
        self._timer.cancel()


@dataclass
class FsdMount:
    mnt: Path
    pids: list[int]  # the daemon processes serving the mount
    log: Path | None
    result: Result | None  # the background start; None for popen
    proc: subprocess.Popen | None = None  # foreground (-f) starts
    output_file: object = None  # foreground starts: stdout+stderr, a binary file object
    unmounted: bool = False
    devs: list[str] = field(default_factory=list)  # "0:NN" of the FUSE mount
    note: str = ""  # set by wait_gone when another mount namespace held the mount

    def __post_init__(self):
        self.remember_dev()

    def remember_dev(self):
        self.devs = sorted({m.dev for m in mounts.mounts_at(self.mnt) if m.fstype.startswith("fuse")}
                           | set(self.devs))

    def output(self) -> str:
        if self.output_file is None:
            return ""
        self.output_file.seek(0)
        return self.output_file.read().decode(errors="replace")

    def unmount(self, how: str = "fusermount3", timeout: float = 10.0) -> None:
        """Unmount the way a user would and wait for the daemon to exit."""
        cmd = {"fusermount3": ["fusermount3", "-u"], "umount": ["umount"]}[how]
        r = subprocess.run([*cmd, str(self.mnt)], capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"{' '.join(cmd)} {self.mnt}: {r.stderr}"
        self.wait_gone(timeout)

    def wait_gone(self, timeout: float = 10.0) -> None:
        """Assert the mount disappears and every daemon process exits."""
        assert mounts.wait_for(lambda: not mounts.is_mounted(self.mnt), timeout), \
            f"{self.mnt} still mounted after {timeout}s"
        left, self.note = mounts.wait_daemon_exit(self.pids, self.devs, timeout)
        if self.note:
            warnings.warn(f"{self.mnt}: {self.note}; its connection was aborted", stacklevel=2)
        assert not left, f"daemon {left} still running {timeout}s after the unmount: " + \
            " | ".join(mounts.describe_process(p) for p in left) + (f" ({self.note})" if self.note else "")
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"foreground fsd {self.proc.pid} still running") from None
        self.unmounted = True


class FsdRunner:
    """Starts fsd; whatever it started is cleaned up by the fixture."""

    def __init__(self, tmp_path: Path, log: FsdLog, deadline: Deadline):
        self.tmp_path = tmp_path
        self.log = log
        self.deadline = deadline
        self.tracked: list[tuple[Path, list[int], FsdMount | None]] = []
        self._n = 0

    def new_mountpoint(self, name: str = "mnt") -> Path:
        self._n += 1
        p = self.tmp_path / f"{name}-{self._n}"
        p.mkdir()
        return p

    def __call__(self, lowers, upper=None, work=None, extra_opts=(), mountpoint=None,
                 cwd=None, logfile: bool = True) -> FsdMount:
        """Mount fsd in the background on lowers (top first) and check it is live."""
        mnt = Path(mountpoint) if mountpoint is not None else self.new_mountpoint()
        log = self.log.new_path() if logfile else None
        opts = mounts.overlay_opts(lowers, upper, work, extra_opts)
        if log is not None:
            opts.append(f"logfile={log}")
        r = self.run(["-o", ",".join(opts), str(mnt)], mnt, cwd=cwd)
        assert r.returncode == 0, "fsd failed to mount:\n" + r.describe()
        assert mounts.is_mounted(mnt, mounts.FSD_FSTYPE), \
            f"fsd exited 0 but {mnt} is not mounted as {mounts.FSD_FSTYPE}: {mounts.mounts_at(mnt)}\n" + r.describe()
        m = FsdMount(mnt.absolute(), mounts.pids_with_arg(str(mnt)), log, r)
        assert m.pids, f"no fsd process found serving {mnt}"
        self._track(mnt, m.pids, m)
        return m

    def run(self, args, mountpoint=None, cwd=None, timeout: float = 30.0) -> Result:
        """Run fsd with exactly args; mountpoint (as passed) is cleaned up at teardown."""
        r = mounts.run_fsd(args, cwd=cwd, timeout=timeout)
        if mountpoint is not None:
            self.track(mountpoint, cwd)
        assert r.returncode is not None, f"fsd did not return within {timeout}s:\n" + r.describe()
        return r

    def popen(self, args, mountpoint, cwd=None, wait_mounted: float | None = 15.0) -> FsdMount:
        """Start fsd (normally with -f) without waiting for it; optionally wait
        for the mount to appear as fuse.fsd."""
        argv = [mounts.fsd_executable(), *map(os.fspath, args)]
        errf = open(self.tmp_path / f"popen-{self._n}-{len(self.tracked)}.stderr", "w+b")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf, cwd=cwd)
        mnt = Path(cwd or ".", mountpoint).absolute()
        m = FsdMount(mnt, [p.pid], None, None, proc=p, output_file=errf)
        self._track(mnt, [p.pid], m)
        if wait_mounted:
            ok = mounts.wait_for(lambda: mounts.is_mounted(mnt, mounts.FSD_FSTYPE) or p.poll() is not None,
                                 wait_mounted)
            if not mounts.is_mounted(mnt, mounts.FSD_FSTYPE):
                errf.seek(0)
                raise AssertionError(f"fsd -f did not mount {mnt} within {wait_mounted}s "
                                     f"(exit {p.poll()}, timed out {not ok}): {errf.read().decode()}")
            self.deadline.watch_mount(mnt)
            m.remember_dev()
        return m

    def track(self, mountpoint, cwd=None):
        """Have the fixture clean up a mount made some other way (mountpoint as
        passed to fsd, relative to cwd)."""
        mnt = Path(cwd or ".", mountpoint).absolute()
        self._track(mnt, mounts.pids_with_arg(os.fspath(mountpoint), str(mnt)), None)

    def _track(self, mnt: Path, pids, m: FsdMount | None):
        self.tracked.append((mnt, list(pids), m))
        self.deadline.watch_mount(mnt)

    def cleanup(self) -> list[str]:
        problems = []
        for mnt, pids, m in reversed(self.tracked):
            if m is not None and m.unmounted:
                continue
            if m is not None and mounts.is_mounted(mnt) and not any(mounts.alive(p) for p in pids):
                problems.append(f"fsd daemon {pids} died while {mnt} was mounted")
            problems += mounts.unmount_fuse(mnt, pids)
            if m is not None and m.proc is not None:
                try:
                    m.proc.wait(10)
                except subprocess.TimeoutExpired:
                    m.proc.kill()
                    m.proc.wait()
                    problems.append(f"foreground fsd {m.proc.pid} did not exit after unmount; killed")
        return problems


class KernelOverlay:
    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.mounted: list[Path] = []
        self._n = 0

    def __call__(self, lowers, upper=None, work=None, opts=(), mountpoint=None) -> Path:
        """Mount the kernel overlay; lowers top first. A lone lower without
        upper gets an empty bottom layer (the kernel wants two)."""
        self._n += 1
        lowers = [Path(p) for p in lowers]
        if len(lowers) == 1 and upper is None:
            empty = self.tmp_path / f"kovl-empty-{self._n}"
            empty.mkdir()
            lowers.append(empty)
        mnt = Path(mountpoint) if mountpoint is not None else self.tmp_path / f"kovl-{self._n}"
        mnt.mkdir(exist_ok=True)
        optstr = ",".join(mounts.overlay_opts(lowers, upper, work, opts))
        r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", optstr, str(mnt)],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"kernel overlay mount failed: {r.stderr} (options {optstr})"
        self.mounted.append(mnt.absolute())
        return mnt.absolute()

    def umount(self, mnt):
        problems = mounts.unmount_plain(mnt)
        assert not problems, problems
        self.mounted.remove(Path(mnt).absolute())

    def cleanup(self) -> list[str]:
        problems = []
        for mnt in reversed(self.mounted):
            problems += mounts.unmount_plain(mnt)
        return problems
