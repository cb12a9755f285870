"""The podman section: what podman users feel, fsd against fuse-overlayfs as
podman's `mount_program` (issue 15), rootful.

    section = PodmanSection(image_tar, scratch, trace, say)   one store per mount program
    section.run(rep, results)                                 p1..p3 once on each, in turn
    section.close()

The stores are those of the podman tests (tests/support/podman.py: a private
storage root in a sandbox, driven through an agent in a mount namespace of its
own); the image is imported into each before anything is timed. Its root
filesystem is a real one (`debootstrap_image`: Debian 12 minbase from the apt
mirror, built once and kept in /var/cache/strata-bench) or, for a smoke test,
a busybox tree (`tiny_image`).

Podman starts its mount program in the background and never waits for the
daemon, so the bench becomes a child subreaper while this section runs: the
daemons, orphaned when their starter returns, become its children, and once a
step is over their exact CPU time comes from wait4 when they exit. Their FUSE
connections are read from the agent's mount table while the step runs
(sampled every few ms: a container's mount lives for a fraction of a second),
and their requests counted from the trace (trace.py) of all connections.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from .mounts import mount_table

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from support import podman as podman_support  # noqa: E402
from support.podman import BUILD_OPTS, RUN_OPTS, PodmanStore  # noqa: E402
from support.rootless import Sandbox  # noqa: E402

CACHE = Path("/var/cache/strata-bench")
IMAGE = "localhost/strata-bench"
BUILT = "localhost/strata-bench-built"
DAEMON_NAMES = {"fsd", "fuse-overlayfs"}  # /proc/PID/comm of the two daemons
PR_SET_CHILD_SUBREAPER = 36

CONTAINERFILE = """\
FROM {image}
RUN mkdir /w && for i in $(seq 1 {n}); do echo "file $i" > /w/f$i; done
RUN for i in $(seq 1 {n}); do mv /w/f$i /w/g$i; done && rm -f /w/g1*
RUN cp -a /etc /copy && rm -rf /w /copy && ls -lR {usr} >/dev/null
"""
# The tests' busybox tree has no /usr: there the listing is of /bin.
USR = "$(test -d /usr && echo /usr || echo /bin)"


class PodmanError(Exception):
    """The podman section cannot run or a step failed; str(self) is one line."""


# -- the image -----------------------------------------------------------------------------

def _apt_mirror() -> str:
    """The Debian mirror apt uses here (deb822 or one-line sources)."""
    texts = []
    for p in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if p.suffix in (".list", ".sources") or p.name == "sources.list":
            try:
                texts.append(p.read_text())
            except OSError:
                pass
    for m in re.finditer(r"(?:^URIs:\s*|^deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", "\n".join(texts), re.M):
        if "security" not in m.group(1):
            return m.group(1)
    return "http://deb.debian.org/debian"


def debootstrap_image(say, cache: Path = CACHE) -> Path:
    """A tar of a Debian 12 minbase root filesystem, built with debootstrap
    (installed with apt when missing) the first time and kept in `cache`."""
    tar = cache / "bookworm-minbase.tar"
    if tar.exists():
        return tar
    cache.mkdir(parents=True, exist_ok=True)
    if shutil.which("debootstrap") is None:
        say("bench: apt-get install debootstrap")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env)
        r = subprocess.run(["apt-get", "install", "-y", "-qq", "debootstrap"], capture_output=True, text=True,
                           env=env)
        if r.returncode:
            raise PodmanError(f"apt-get install debootstrap failed: {r.stderr.strip()[-300:]}")
    root = cache / f".rootfs.build-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    mirror = _apt_mirror()
    say(f"bench: debootstrap --variant=minbase bookworm from {mirror} (once, kept in {tar})")
    try:
        r = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(root), mirror],
                           capture_output=True, text=True)
        if r.returncode:
            raise PodmanError(f"debootstrap failed: {(r.stdout + r.stderr).strip()[-400:]}")
        tmp = tar.with_name(f".{tar.name}.{os.getpid()}")
        subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(tmp), "."], check=True)
        os.rename(tmp, tar)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return tar


def tiny_image(box: Sandbox) -> Path:
    """The podman tests' busybox root filesystem: for a smoke test of the section."""
    return podman_support.busybox_rootfs(box)


# -- the daemons ---------------------------------------------------------------------------

def _set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0):
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _adopted(keep: set[int]) -> dict[int, tuple[str, str]]:
    """Our children that we did not start (pid -> (comm, state)): orphans adopted as subreaper."""
    me = str(os.getpid())
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in keep:
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                head, _, rest = f.read().rpartition(")")
        except OSError:
            continue
        fields = rest.split()
        if fields[1] == me:
            out[int(d)] = (head.partition("(")[2], fields[0])
    return out


def _reap(keep: set[int], timeout: float) -> tuple[float, list[str]]:
    """Wait for the adopted daemons to exit and reap every adopted process that
    has; (the daemons' CPU seconds, problems)."""
    cpu, problems = 0.0, []
    end = time.monotonic() + timeout
    while True:
        adopted = _adopted(keep)
        for pid, (comm, state) in adopted.items():
            if state in ("Z", "X"):
                _, _, rusage = os.wait4(pid, 0)
                if comm in DAEMON_NAMES:
                    cpu += rusage.ru_utime + rusage.ru_stime
        running = [f"{comm} {pid}" for pid, (comm, state) in adopted.items()
                   if comm in DAEMON_NAMES and state not in ("Z", "X")]
        if not running:
            return cpu, problems
        if time.monotonic() > end:
            return cpu, [f"daemons still running {timeout:.0f}s after the step: {', '.join(running)}"]
        time.sleep(0.005)


class _Connections(threading.Thread):
    """The FUSE connections mounted under `root` in the namespace of `pid`
    while it runs (sampled)."""

    def __init__(self, pid: int, root: Path):
        super().__init__(daemon=True)
        self.pid, self.prefix = pid, str(root) + "/"
        self.found: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for mnt, fstype, dev in mount_table(self.pid):
                if fstype.startswith("fuse") and mnt.startswith(self.prefix):
                    self.found.add(int(dev.split(":")[1]))
            self.stop.wait(0.003)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.join()


# -- the section ---------------------------------------------------------------------------

class PodmanSection:
    def __init__(self, programs: dict[str, str], image_tar: Path, small: bool, trace, say,
                 timeout: float):
        """programs: implementation name -> mount program."""
        self.programs = programs
        self.small = small
        self.trace = trace
        self.say = say
        self.timeout = timeout
        self.stores: dict[str, PodmanStore] = {}
        self.boxes: list[Sandbox] = []
        self.problems: list[str] = []
        self.keep: set[int] = set()
        _set_subreaper(True)
        try:
            for name, program in programs.items():
                box = Sandbox(None, prefix="strata-bench-podman-")
                self.boxes.append(box)
                store = PodmanStore(box, rootless=False, timeout=timeout, mount_program=program)
                self.stores[name] = store
                store("import", image_tar, IMAGE)
                ctx = box.dir("build", owned=False)
                (ctx / "Containerfile").write_text(CONTAINERFILE.format(image=IMAGE, n=20 if small else 500, usr=USR))
        except BaseException:
            self.close()
            raise
        self.keep = {s.agent.proc.pid for s in self.stores.values()}
        _reap(self.keep, 30)  # what the imports left

    def steps(self, store: PodmanStore) -> list[tuple[str, list[str], list[str] | None]]:
        """(workload id, podman arguments, what to run untimed after it)."""
        ctx = store.box.root / "build"
        return [
            ("p1", ["run", "--rm", *RUN_OPTS, IMAGE, "true"], None),
            ("p2", ["run", "--rm", *RUN_OPTS, IMAGE, "sh", "-c", f"find / -xdev >/dev/null; ls -lR {USR} >/dev/null"],
             None),
            ("p3", ["build", *BUILD_OPTS, "--layers=false", "-t", BUILT, "-f", str(ctx / "Containerfile"), str(ctx)],
             ["rmi", "-f", BUILT]),
        ]

    def run_one(self, name: str, rep: int, results) -> None:
        """p1..p3 once with `name`'s mount program, warm (a container start
        right after an image was pulled or used); each result into `results`."""
        store = self.stores[name]
        for wid, args, after in self.steps(store):
            if self.trace is not None:
                self.trace.start(None)
            t = time.perf_counter()
            with _Connections(store.agent.pid, store.box.root) as conns:
                r = store(*args, check=False, timeout=self.timeout)
            seconds = time.perf_counter() - t
            cpu, problems = _reap(self.keep, 30)
            requests = lost = None
            if self.trace is not None:
                counts = self.trace.stop()
                requests, lost = dict(counts.of(conns.found)), counts.lost
            if r.returncode:
                results.add(wid, name, rep, error=f"podman {' '.join(args[:2])}: exit {r.returncode}: "
                                                  + " | ".join(r.stderr.strip().splitlines()[-3:]))
            else:
                results.add(wid, name, rep, seconds, cpu, info={"mounts": len(conns.found)},
                            requests=requests, lost=lost or 0)
            self.problems += [f"{wid} {name} rep {rep}: {p}" for p in problems]
            if after:
                store(*after, check=False)
            self.say(f"bench: rep {rep + 1} {wid:<4} podman+{name:<15} "
                     + (f"{seconds:.3f}s (daemon cpu {cpu:.2f})" if not r.returncode else "ERROR"))

    def close(self) -> list[str]:
        problems = self.problems
        for store in self.stores.values():
            problems += store.close()
        for box in self.boxes:
            problems += box.cleanup()
        try:
            _reap(self.keep, 10)
        finally:
            _set_subreaper(False)
        self.stores.clear()
        self.boxes.clear()
        return problems
