"""podman with fsd as the overlay driver's mount_program, in a throw-away store.

    reason = ensure_podman()            installs what is missing (apt); None when usable
    podman_ready                        a module fixture skipping where podman cannot run
    tar = busybox_rootfs(box)           a small rootfs tar from busybox-static
    store = PodmanStore(box, rootless)  a store under the sandbox; store(*args) runs podman
                                        (mount_program=PATH: another one than fsd, "":
                                        the kernel overlay; layer_stores: podman's
                                        additional layer stores; force_mask: owners
                                        and modes kept in override_stat)
    store.close()                       removes containers, stops the rootless pause process

The agent (tests/support/rootless.py) gives podman the namespace this machine
needs: a private mount namespace in which /sys/fs/cgroup/unified is unmounted
(crun refuses the hybrid cgroup layout), / is rshared (rootless podman wants
it) and, for rootless, a usable /dev/fuse. The rest of the machine's quirks
are in RUN_OPTS and in the store's containers.conf.

fsd is reached through a two-line wrapper that adds `-o logfile=` so that the
test's fsd_log check sees what the daemons logged; everything else podman
passes (options, `--version`) reaches fsd unchanged.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from . import mounts
from .rootless import Agent, Sandbox, abort_fuse_of, processes_under, why_no_rootless

PACKAGES = ("podman", "crun", "uidmap", "slirp4netns", "busybox-static")
LIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096")  # the hard limits here are low
RUN_OPTS = (*LIMITS, "--cgroups=disabled", "--network=none")
BUILD_OPTS = (*LIMITS, "--network=none")
BUSYBOX = "/bin/busybox"

CONTAINERS_CONF = """\
[containers]
cgroups = "disabled"
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def _missing_packages() -> list[str]:
    out = []
    for pkg in PACKAGES:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if "ok installed" not in r.stdout:
            out.append(pkg)
    return out


def ensure_podman() -> str | None:
    """Install the packages podman tests need if missing; None when all is there,
    else why the tests cannot run."""
    if os.geteuid() != 0:
        return "podman tests need root (to install packages and to run rootful podman)"
    if shutil.which("dpkg-query") is None:
        return "podman tests install their packages with apt; this is not a Debian system"
    missing = _missing_packages()
    if missing:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=300", *missing]
        r = subprocess.run(install, capture_output=True, text=True, env=env)
        if r.returncode:
            subprocess.run(["apt-get", "update", "-qq", "-o", "DPkg::Lock::Timeout=300"],
                           capture_output=True, env=env)
            r = subprocess.run(install, capture_output=True, text=True, env=env)
        if r.returncode:
            return f"apt-get install {' '.join(missing)} failed: {r.stderr.strip()[-500:]}"
    for tool in ("podman", "crun", "newuidmap", "newgidmap"):
        if shutil.which(tool) is None:
            return f"{tool} not found after installing {' '.join(PACKAGES)}"
    if not os.access(BUSYBOX, os.X_OK):
        return f"{BUSYBOX} (busybox-static) not found"
    return None


@pytest.fixture(scope="module")
def podman_ready():
    """Skips the module's tests where podman cannot run (import it into the module)."""
    reason = why_no_rootless() or ensure_podman()
    if reason:
        pytest.skip(reason)


# -- the image ---------------------------------------------------------------------------------

# Lower content the tests change: every path here is named by a test.
LOWER_FILES = {
    "lower/append.txt": "a\n",
    "lower/delete-me.txt": "d\n",
    "lower/keep.txt": "keep\n",
    "lower/link-src": "l\n",
    "lower/delete-dir/sub/x": "x\n",
    "lower/delete-dir/y": "y\n",
    "lower/rename-dir/r": "r\n",
    "lower/rename-dir/sub/s": "s\n",
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\n",
}
LOWER_SYMLINKS = {"lower/keep-link": "keep.txt"}


def busybox_rootfs(box: Sandbox) -> Path:
    """box/rootfs.tar: busybox-static installed with `busybox --install -s`, plus
    LOWER_FILES and LOWER_SYMLINKS, everything owned by root; readable by everyone."""
    root = box.dir("rootfs", owned=False)
    (root / "bin").mkdir()
    shutil.copy2(os.path.realpath(BUSYBOX), root / "bin" / "busybox")
    r = subprocess.run(["chroot", str(root), "/bin/busybox", "--install", "-s", "/bin"],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"busybox --install -s: {r.stderr}"
    for d in ("tmp", "root", "proc", "sys", "dev", "etc", "run"):
        (root / d).mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)
    for rel, text in LOWER_FILES.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for rel, target in LOWER_SYMLINKS.items():
        os.symlink(target, root / rel)
    tar = box.root / "rootfs.tar"
    r = subprocess.run(["tar", "--numeric-owner", "--owner=0", "--group=0", "-C", str(root),
                        "-cf", str(tar), "."], capture_output=True, text=True)
    assert r.returncode == 0, f"tar: {r.stderr}"
    tar.chmod(0o644)
    return tar


# -- the store -----------------------------------------------------------------------------------

class PodmanStore:
    """A podman store in the sandbox, driven through an agent (root or the user)."""

    def __init__(self, box: Sandbox, rootless: bool, timeout: float = 240.0,
                 mount_program: str | None = None, layer_stores: tuple[str, ...] = (),
                 force_mask: str | None = None):
        self.box = box
        self.rootless = rootless
        self.timeout = timeout
        owned = rootless
        self.graph = box.dir("store/graph", owned=owned, mode=0o700)
        self.runroot = box.dir("store/run", owned=owned, mode=0o700)
        self.tmpdir = box.dir("store/libpod-tmp", owned=owned, mode=0o700)
        self.logdir = box.dir("fsd-logs", owned=owned)
        home = box.dir("home", owned=owned, mode=0o700)
        xdg = box.dir("xdg-runtime", owned=owned, mode=0o700)
        tmp = box.dir("tmp", owned=owned, mode=0o700)
        self.wrapper = box.root / "fsd-wrapper"
        self.wrapper.write_text("#!/bin/sh\n"
                                f"exec {shlex.quote(mounts.fsd_executable())} \"$@\" "
                                f"-o logfile={shlex.quote(str(self.logdir))}/fsd-$$.log\n")
        self.wrapper.chmod(0o755)
        self.mount_program = str(self.wrapper) if mount_program is None else mount_program
        self.layer_stores = tuple(map(str, layer_stores))
        self.force_mask = force_mask
        conf = box.root / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        conf.chmod(0o644)
        storage = box.root / "storage.conf"
        storage.write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{self.graph}"\n'
            f'runroot = "{self.runroot}"\n'
            "[storage.options]\n"
            f"additionallayerstores = {json.dumps(list(self.layer_stores))}\n"
            "[storage.options.overlay]\n"
            + (f'mount_program = "{self.mount_program}"\n' if self.mount_program else "")
            + (f'force_mask = "{force_mask}"\n' if force_mask else ""))
        storage.chmod(0o644)
        env = {"CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage),
               "TMPDIR": str(tmp), "HOME": str(home), "XDG_RUNTIME_DIR": str(xdg)}
        self.pause_pid_file = self.tmpdir / "pause.pid"  # podman --tmpdir
        self.agent = Agent(box, root_agent=not rootless, cgroup_v1_only=True, shared_root=True,
                           env=env, timeout=timeout + 30)
        self.history: list[tuple[str, int | None]] = []  # (command, exit status), for the report

    @property
    def global_opts(self) -> list[str]:
        return ["--root", str(self.graph), "--runroot", str(self.runroot), "--tmpdir", str(self.tmpdir),
                "--storage-driver", "overlay",
                # --storage-opt replaces storage.conf's options: every one is given
                *([f"--storage-opt=overlay.mount_program={self.mount_program}"]
                  if self.mount_program else []),
                *(f"--storage-opt=overlay.additionallayerstore={d}" for d in self.layer_stores),
                *([f"--storage-opt=overlay.force_mask={self.force_mask}"] if self.force_mask else [])]

    def __call__(self, *args, timeout: float | None = None, check: bool = True) -> mounts.Result:
        """podman ARGS in the agent; asserts exit 0 unless check=False. A command
        still running after `timeout` has its FUSE connections aborted and is killed."""
        timeout = self.timeout if timeout is None else timeout
        argv = ["podman", *self.global_opts, *map(str, args)]
        watchdog = threading.Timer(timeout - 5, self.abort_fuse)
        watchdog.daemon = True
        watchdog.start()
        try:
            r = self.agent.run(argv, timeout=timeout, cwd=self.box.root)
        finally:
            watchdog.cancel()
        self.history.append((" ".join(map(str, args)), r.returncode))
        if check:
            assert r.returncode == 0, f"podman {' '.join(map(str, args))} failed:\n{r.describe()}"
        return r

    def abort_fuse(self) -> None:
        abort_fuse_of(processes_under(self.box.root), self.box.root)

    def info(self) -> dict:
        return json.loads(self("info", "--format", "json").stdout)

    def fsd_processes(self) -> list[int]:
        """fsd daemons (started through the wrapper) still running."""
        out = []
        for pid in processes_under(self.box.root):
            try:
                argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            # python, the argument of fsd's #! line (-S), the script
            if any(a.endswith(b"/fsd") for a in argv[:3]):
                out.append(pid)
        return out

    def collect_logs(self, fsd_log) -> None:
        """Move the daemons' logs into the test's fsd_log directory."""
        for p in sorted(self.logdir.glob("*.log")):
            shutil.copyfile(p, fsd_log.new_path("podman-fsd"))
            p.unlink()

    def close(self) -> list[str]:
        """Remove every container (podman unmounts their storage), stop the rootless
        pause process, end the agent and anything left running in the sandbox."""
        problems = []
        try:
            r = self("rm", "--all", "--force", "--time", "0", check=False, timeout=120)
            if r.returncode:
                problems.append(f"podman rm -af: {r.stderr.strip()[-300:]}")
            if self.rootless:
                pause = self._pause_pid()
                r = self("system", "migrate", check=False, timeout=120)
                if r.returncode:
                    problems.append(f"podman system migrate: {r.stderr.strip()[-300:]}")
                if pause is not None and mounts.wait_exited([pause], 10):
                    problems.append(f"rootless pause process {pause} still running; killed")
                    mounts.kill_all([pause])
        except (OSError, RuntimeError, TimeoutError, AssertionError) as exc:
            problems.append(f"podman clean-up: {exc}")
        left = self.fsd_processes()
        if left and mounts.wait_exited(left, 10):
            problems.append(f"fsd daemons {left} still running after podman removed every container")
        problems += self.agent.close()
        return problems

    def _pause_pid(self) -> int | None:
        try:
            return int(self.pause_pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
