"""Run test code as an unprivileged user who can mount FUSE, without changing
the machine for anyone else.

/dev/fuse is mode 0600 here. Instead of changing it, a `Sandbox` holds a 0666
fuse node of its own (in a root-only directory) and an `Agent` is a small
Python process that runs inside a private mount namespace in which that node
is bind-mounted over /dev/fuse, then drops to the test user - and, if asked,
enters a user namespace of its own (root there, ids 1..N mapped to the user's
subordinate range), the way rootless podman runs its mount program.

    user = ensure_user()                     the test user, made once, idempotent
    box = Sandbox(user)                      /tmp/strata-rootless-*: dirs the user can reach
    agent = Agent(box, userns=False)         the process doing the work
    agent.call("chown", path, 0, -1)         os.chown as the user; OSError as raised there
    agent.stat(path)                         os.lstat as the user
    agent.run(["fusermount3", "-u", mnt])    a command, to completion (Result)
    m = agent.mount_fsd(lowers, upper, work, opts)   fsd started by the user
    agent.unmount(m)                         fusermount3 -u; waits for the daemon to exit
    agent.close()                            unmounts what is left, ends every process

Mounts made by the agent exist only in its namespace: from outside, whether
something is mounted is read from /proc/<agent>/mountinfo, never by touching
the mountpoint (a hung daemon would hang the test).

The agent's program is `_agent_program` below, written into the sandbox as a
script so that the user need not be able to read the repository.
"""

from __future__ import annotations

import base64
import fcntl
import inspect
import json
import os
import pwd
import re
import select
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from . import mounts

USER = "strata-rootless"
SUBID_COUNT = 65536
FUSE_DEV = (10, 229)
PYTHON = "/usr/bin/python3"  # the agent's interpreter: any user may run it
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = ("unshare", "setpriv", "mount", "umount", "fusermount3", "useradd", "usermod", "mknod")


def why_no_rootless() -> str | None:
    """None if rootless mounts can be tested here, else why not."""
    reason = mounts.why_no_fuse()
    if reason:
        return reason
    missing = [t for t in TOOLS if shutil.which(t, path=SAFE_PATH) is None]
    if missing:
        return f"needs {', '.join(missing)}"
    if not os.access(PYTHON, os.X_OK):
        return f"needs {PYTHON}"
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            if int(f.read()) == 0:
                return "user namespaces are disabled (user.max_user_namespaces = 0)"
    except OSError:
        pass
    return None


# -- the test user -------------------------------------------------------------------

@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str
    subuid: tuple[int, int]  # (first, count) in /etc/subuid
    subgid: tuple[int, int]


def _subid_ranges(path: str) -> list[tuple[str, int, int]]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def _own_range(name: str, uid: int, path: str) -> tuple[int, int] | None:
    for owner, first, count in _subid_ranges(path):
        if owner in (name, str(uid)) and count >= SUBID_COUNT:
            return first, count
    return None


def ensure_user(name: str = USER) -> User:
    """The unprivileged test user with a subordinate id range of 65536 in
    /etc/subuid and /etc/subgid; created (useradd -m, usermod --add-sub*) if
    missing, else left as it is. Safe to call from concurrent test runs."""
    with open("/run/lock/strata-test-user.lock" if os.path.isdir("/run/lock")
              else "/tmp/strata-test-user.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            _check(["useradd", "--create-home", "--user-group", "--shell", "/bin/sh", name])
            pw = pwd.getpwnam(name)
        need = [(flag, path) for flag, path in (("--add-subuids", "/etc/subuid"),
                                                ("--add-subgids", "/etc/subgid"))
                if _own_range(name, pw.pw_uid, path) is None]
        if need:
            taken = [first + count for path in ("/etc/subuid", "/etc/subgid")
                     for _, first, count in _subid_ranges(path)]
            first = max([100000, *taken])
            first = -(-first // SUBID_COUNT) * SUBID_COUNT  # a fresh, aligned block
            span = f"{first}-{first + SUBID_COUNT - 1}"
            args = [a for flag, _ in need for a in (flag, span)]
            _check(["usermod", *args, name])
        return User(name, pw.pw_uid, pw.pw_gid, pw.pw_dir,
                    _own_range(name, pw.pw_uid, "/etc/subuid"),
                    _own_range(name, pw.pw_uid, "/etc/subgid"))


def _check(argv):
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def fsd_user() -> tuple[User | None, str | None]:
    """(the test user, None) when rootless FUSE works here and the user can run
    fsd; else (None, why not) - for a test to skip with."""
    reason = why_no_rootless()
    if reason:
        return None, reason
    user = ensure_user()
    reason = why_user_cannot_run_fsd(user)
    return (None, reason) if reason else (user, None)


def why_user_cannot_run_fsd(user: User) -> str | None:
    """None if the user can run fsd in a namespace made like an agent's."""
    fsd = mounts.fsd_executable()
    hold = Path(tempfile.mkdtemp(prefix="strata-reach-"))
    env = ["env", "-i", f"HOME={user.home}", f"PATH={SAFE_PATH}"]
    script = "\n".join(["set -e", *reach_steps(hold), "exec " + shlex.join(
        ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", *env, fsd, "--version"])])
    try:
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"{fsd} --version hung as user {user.name}"
    finally:
        shutil.rmtree(hold, ignore_errors=True)
    if r.returncode:
        return (f"user {user.name} cannot run {fsd} (the repository and its venv must be "
                f"readable by everyone, as scripts/install makes them): {r.stderr.strip()[-300:]}")
    return None


def _closed_ancestor(path: str) -> str | None:
    """The topmost proper ancestor of path that others may not traverse."""
    parts = Path(path).parts
    for i in range(1, len(parts) - 1):
        anc = os.path.join(*parts[:i + 1])
        if not os.stat(anc).st_mode & stat.S_IXOTH:
            return anc
    return None


def reach_steps(hold: Path) -> list[str]:
    """Shell lines, run as root in a private mount namespace, that let any user
    reach the repository and fsd when an ancestor directory is closed to others
    (a clone under /root, say): the repository is held by a bind mount, a 0755
    tmpfs covers the topmost closed ancestor, the path is made again in it and
    the repository bind-mounted back at the same place (the venv's scripts name
    absolute paths). Nothing when every ancestor is open."""
    paths = [str(mounts.REPO)]
    fsd_dir = os.path.dirname(os.path.realpath(mounts.fsd_executable()))
    if not fsd_dir.startswith(str(mounts.REPO) + "/"):
        paths.append(fsd_dir)
    todo = [(p, _closed_ancestor(p)) for p in paths]
    todo = [(p, anc) for p, anc in todo if anc is not None]
    q = shlex.quote
    holds = [f"{hold}/reach-{i}" for i in range(len(todo))]
    steps = [f"mkdir -p {h} && mount --bind {q(p)} {h}" for h, (p, _) in zip(holds, todo)]
    for anc in dict.fromkeys(anc for _, anc in todo):
        steps.append(f"mount -t tmpfs -o mode=0755 strata-reach {q(anc)}")
    steps += [f"mkdir -p {q(p)} && mount --bind {h} {q(p)}" for h, (p, _) in zip(holds, todo)]
    return steps


# -- the sandbox -------------------------------------------------------------------------

class Sandbox:
    """A directory under /tmp that the user can reach (0755, root's), with a
    private 0666 fuse node in a root-only subdirectory."""

    def __init__(self, user: User | None, prefix: str = "strata-rootless-"):
        self.user = user
        self.root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.root.chmod(0o755)
        private = self.root / "private"
        private.mkdir(mode=0o700)
        self.fuse_node = private / "fuse"
        os.mknod(self.fuse_node, stat.S_IFCHR | 0o666, os.makedev(*FUSE_DEV))
        os.chmod(self.fuse_node, 0o666)

    def dir(self, rel: str, owned: bool = True, mode: int = 0o755) -> Path:
        """sandbox/rel, created with root-owned 0755 parents; owned by the user if owned."""
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.mkdir(mode=mode, exist_ok=True)
        p.chmod(mode)
        if owned and self.user is not None:
            os.chown(p, self.user.uid, self.user.gid)
        return p

    def file(self, rel: str, text: str = "", owned: bool = True, mode: int = 0o644) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)
        if owned and self.user is not None:
            os.chown(p, self.user.uid, self.user.gid)
        return p

    def cleanup(self) -> list[str]:
        """Remove the sandbox; processes still using it are ended first (by pid)."""
        problems = []
        left = processes_under(self.root)
        if left:
            problems.append(f"processes still using {self.root}: {left}; killed")
            abort_fuse_of(left, self.root)
            mounts.kill_all(left)
        shutil.rmtree(self.root, ignore_errors=True)
        if self.root.exists():
            subprocess.run(["rm", "-rf", str(self.root)], capture_output=True)
        return problems


# -- processes and mounts seen from outside ------------------------------------------------

def processes_under(root: Path) -> list[int]:
    """Live processes (not us) whose argv mentions a path under root."""
    needle = os.fsencode(str(root)) + b"/"
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read()
        except OSError:
            continue
        if needle in argv and mounts.alive(int(d)):
            out.append(int(d))
    return sorted(out)


def mount_table_of(pid: int) -> list[mounts.MountEntry]:
    """The mount table of another process's namespace; [] if it is gone."""
    out = []
    try:
        with open(f"/proc/{pid}/mountinfo", "rb") as f:
            data = f.read()
    except OSError:
        return []
    for raw in data.splitlines():
        line = raw.decode("utf-8", "surrogateescape")
        pre, _, post = line.partition(" - ")
        a, b = pre.split(), post.split()
        out.append(mounts.MountEntry(_unescape(a[4]), b[0], _unescape(b[1]), a[2], a[5],
                                     b[2] if len(b) > 2 else ""))
    return out


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def abort_fuse_of(pids, under: Path) -> None:
    """Abort the FUSE connections of mounts under `under` in the namespaces of pids."""
    prefix = str(under) + "/"
    minors = {m.minor for p in pids for m in mount_table_of(p)
              if m.fstype.startswith("fuse") and (m.mountpoint + "/").startswith(prefix)}
    for minor in minors:
        mounts.fuse_abort(minor)


# -- the agent -------------------------------------------------------------------------------

def _agent_program():  # runs as the test user, in its own namespaces; stdlib only
    import base64
    import json
    import os
    import subprocess
    import sys
    import tempfile
    import traceback

    ALLOWED = {"stat", "lstat", "chown", "lchown", "chmod", "mkdir", "rmdir", "unlink", "rename",
               "link", "symlink", "readlink", "listdir", "getxattr", "setxattr", "listxattr",
               "removexattr", "mknod", "makedev", "getuid", "getgid", "getpid", "truncate",
               "access", "utime"}

    def encode(value):
        if isinstance(value, os.stat_result):
            return {"__stat__": {k: getattr(value, k) for k in dir(value) if k.startswith("st_")
                                 and isinstance(getattr(value, k), (int, float))}}
        if isinstance(value, bytes):
            return {"__bytes__": base64.b64encode(value).decode()}
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        return value

    def decode(value):
        if isinstance(value, dict) and "__bytes__" in value:
            return base64.b64decode(value["__bytes__"])
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    def run(argv, timeout=60, env=None, cwd=None):
        full_env = dict(os.environ, **(env or {}))
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                 env=full_env, cwd=cwd)
            try:
                rc = p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                rc = None
            out.seek(0)
            err.seek(0)
            return {"rc": rc, "stdout": out.read().decode(errors="replace"),
                    "stderr": err.read().decode(errors="replace")}

    def dispatch(op, args, kw):
        if op == "os":
            name, *rest = args
            if name not in ALLOWED:
                raise ValueError(f"os.{name} is not offered")
            return encode(getattr(os, name)(*decode(rest), **kw))
        if op == "read":
            with open(args[0], "rb") as f:
                return encode(f.read())
        if op == "write":
            path, data, append = args
            with open(path, "ab" if append else "wb") as f:
                f.write(decode(data))
            return None
        if op == "run":
            return run(*args, **kw)
        raise ValueError(f"unknown op {op}")

    reply = sys.stdout
    sys.stdout = sys.stderr
    reply.write(json.dumps({"ready": os.getpid()}) + "\n")
    reply.flush()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            res = {"ok": dispatch(req["op"], req.get("args", []), req.get("kw", {}))}
        except OSError as exc:
            res = {"errno": exc.errno, "strerror": exc.strerror, "filename": exc.filename}
        except Exception:
            res = {"error": traceback.format_exc()}
        reply.write(json.dumps(res) + "\n")
        reply.flush()


@dataclass
class UserMount:
    mnt: Path
    pids: list[int]
    minors: set[int]
    log: Path | None
    unmounted: bool = False


@dataclass
class Agent:
    """A process working as the user in a private mount namespace where /dev/fuse
    is usable; `userns`: as root of a user namespace of its own (0 = the user,
    1..N = the user's subordinate ids). `user=None`: stays root (for rootful
    podman in the same kind of namespace). `cgroup_v1_only`: /sys/fs/cgroup/unified
    is unmounted in the namespace (crun refuses the hybrid layout); `shared_root`:
    / is made rshared in the namespace (rootless podman wants it)."""

    box: Sandbox
    userns: bool = False
    root_agent: bool = False
    cgroup_v1_only: bool = False
    shared_root: bool = False
    env: dict = field(default_factory=dict)
    deadline: object = None  # a support.fixtures.Deadline to register mounts with
    timeout: float = 120.0

    def __post_init__(self):
        self.mounts: list[UserMount] = []
        self.logdir = self.box.dir("agent-logs", owned=not self.root_agent, mode=0o755)
        self._nlog = 0
        prog = self.box.root / "agent.py"
        if not prog.exists():
            prog.write_text(inspect.getsource(_agent_program) + "\n\n_agent_program()\n")
            prog.chmod(0o644)
        user = None if self.root_agent else self.box.user
        home = "/root" if user is None else user.home
        env = {"HOME": home, "PATH": SAFE_PATH, "LANG": "C.UTF-8", **self.env}
        steps = ["set -e", f"mount --bind {self.box.fuse_node} /dev/fuse",
                 *reach_steps(self.box.fuse_node.parent)]
        if self.cgroup_v1_only:
            steps.append("if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi")
        if self.shared_root:
            steps.append("mount --make-rshared /")
        cmd = []
        if user is not None:
            cmd += ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups"]
        if self.userns:
            assert user is not None, "a user namespace is made by the unprivileged user"
            (su, sn), (sg, gn) = user.subuid, user.subgid
            cmd += ["unshare", "--map-root-user", "--mount", f"--map-users={su},1,{sn}",
                    f"--map-groups={sg},1,{gn}"]
        cmd += ["env", "-i", *(f"{k}={v}" for k, v in env.items()), PYTHON, "-u", str(prog)]
        steps.append("exec " + shlex.join(cmd))
        self._stderr = open(self.box.root / f"agent-{id(self)}.stderr", "w+b")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", "\n".join(steps)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, cwd=str(self.box.root))
        hello = self._read(30.0)
        if hello is None or "ready" not in hello:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"the agent did not start: {self.stderr()}")
        self.pid = hello["ready"]

    # -- requests --------------------------------------------------------------------------

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def _read(self, timeout: float):
        line = b""
        end = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while not line.endswith(b"\n"):
            left = end - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"no answer from the agent within {timeout:.0f}s")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            line += chunk
        return json.loads(line)

    def request(self, op: str, *args, kw: dict | None = None, wait: float | None = None):
        """One request; `wait`: how long to wait for the answer (default self.timeout)."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"the agent exited ({self.proc.returncode}): {self.stderr()}")
        self.proc.stdin.write((json.dumps({"op": op, "args": _enc(args), "kw": kw or {}}) + "\n").encode())
        self.proc.stdin.flush()
        res = self._read(self.timeout if wait is None else wait)
        if res is None:
            raise RuntimeError(f"the agent died: {self.stderr()}")
        if "errno" in res:
            raise OSError(res["errno"], res["strerror"], res["filename"])
        if "error" in res:
            raise RuntimeError("agent: " + res["error"])
        return _dec(res["ok"])

    def call(self, name: str, *args, **kw):
        """os.NAME(*args, **kw) as the agent; OSError as it raised it."""
        return self.request("os", name, *args, kw=kw)

    def stat(self, path) -> SimpleNamespace:
        return self.call("lstat", str(path))

    def errno_of(self, name: str, *args) -> int:
        """0 if os.NAME(*args) succeeds, else its errno."""
        try:
            self.call(name, *args)
        except OSError as exc:
            return exc.errno
        return 0

    def read(self, path) -> str:
        return self.request("read", str(path)).decode()

    def write(self, path, text: str, append: bool = False) -> None:
        self.request("write", str(path), text.encode(), append)

    def run(self, argv, timeout: float = 60.0, env: dict | None = None, cwd=None) -> mounts.Result:
        argv = [os.fspath(a) for a in argv]
        kw = {"timeout": timeout, "env": env, "cwd": None if cwd is None else str(cwd)}
        r = self.request("run", argv, kw=kw, wait=timeout + 10)
        return mounts.Result(argv, r["rc"], r["stdout"], r["stderr"])

    # -- mounts ----------------------------------------------------------------------------

    def mount_table(self) -> list[mounts.MountEntry]:
        return mount_table_of(self.pid)

    def mounted(self, mnt, fstype: str | None = None) -> bool:
        p = os.path.abspath(os.fspath(mnt))
        return any(m.mountpoint == p and (fstype is None or m.fstype == fstype)
                   for m in self.mount_table())

    def new_logfile(self) -> Path:
        self._nlog += 1
        return self.logdir / f"fsd-{self._nlog}.log"

    def start_fsd(self, lowers, upper=None, work=None, opts=(), mnt=None) -> tuple[mounts.Result, Path]:
        """Run fsd as the agent; the mountpoint is tracked for cleanup whatever happens."""
        log = self.new_logfile()
        optstr = ",".join([*mounts.overlay_opts(lowers, upper, work, opts), f"logfile={log}"])
        m = UserMount(Path(mnt), [], set(), log)
        self.mounts.append(m)
        r = self.run([mounts.fsd_executable(), "-o", optstr, str(mnt)], timeout=30)
        m.pids = mounts.pids_with_arg(str(mnt))
        m.minors = {e.minor for e in self.mount_table()
                    if e.mountpoint == str(mnt) and e.fstype.startswith("fuse")}
        if self.deadline is not None:
            self.deadline.minors.update(m.minors)
        return r, m

    def mount_fsd(self, lowers, upper=None, work=None, opts=(), mnt=None) -> UserMount:
        r, m = self.start_fsd(lowers, upper, work, opts, mnt)
        assert r.returncode == 0, "fsd failed to mount as the user:\n" + r.describe() + self._log_tail(m)
        assert self.mounted(m.mnt, mounts.FSD_FSTYPE), \
            f"fsd exited 0 but {m.mnt} is not mounted as {mounts.FSD_FSTYPE} in the agent's namespace"
        assert m.pids, f"no fsd process serves {m.mnt}"
        return m

    def _log_tail(self, m: UserMount) -> str:
        try:
            return "\n--- fsd log\n" + m.log.read_text()[-3000:]
        except (OSError, AttributeError):
            return ""

    def unmount(self, m: UserMount, timeout: float = 10.0) -> None:
        """fusermount3 -u as the agent; the mount must go and its daemon exit."""
        r = self.run(["fusermount3", "-u", str(m.mnt)], timeout=timeout)
        assert r.returncode == 0, r.describe()
        assert mounts.wait_for(lambda: not self.mounted(m.mnt), timeout), f"{m.mnt} still mounted"
        left = mounts.wait_exited(m.pids, timeout)
        assert not left, f"fsd {left} still running {timeout:.0f}s after fusermount3 -u"
        m.unmounted = True

    def close(self) -> list[str]:
        """Unmount what is left, end the agent and every process it left behind."""
        problems = []
        for m in reversed(self.mounts):
            if m.unmounted or not self.mounted(m.mnt):
                continue
            try:
                r = self.run(["fusermount3", "-u", str(m.mnt)], timeout=10)
                ok = r.returncode == 0 and mounts.wait_for(lambda: not self.mounted(m.mnt), 10)
            except (OSError, RuntimeError, TimeoutError):
                ok = False
            if not ok:
                problems.append(f"{m.mnt}: fusermount3 -u failed; connection aborted")
                for minor in m.minors:
                    mounts.fuse_abort(minor)
            left = mounts.wait_exited(m.pids, 10)
            if left:
                problems.append(f"fsd {left} still running after the unmount of {m.mnt}; killed")
                mounts.kill_all(left)
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()
        return problems

    def collect_logs(self, fsd_log) -> None:
        """Move the fsd logs into the test's fsd_log directory, where its check reads them."""
        for p in sorted(self.logdir.glob("*.log")):
            shutil.copyfile(p, fsd_log.new_path("user-fsd"))
            p.unlink()


def _enc(value):
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode()}
    if isinstance(value, (list, tuple)):
        return [_enc(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _dec(value):
    if isinstance(value, dict) and "__bytes__" in value:
        return base64.b64decode(value["__bytes__"])
    if isinstance(value, dict) and "__stat__" in value:
        return SimpleNamespace(**value["__stat__"])
    if isinstance(value, list):
        return [_dec(v) for v in value]
    return value

