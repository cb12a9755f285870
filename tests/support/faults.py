"""Faults and observations for the reliability tests (tests/integration/test_reliability_*.py).

small_tmpfs(path, size)      a size- (and inode-) limited tmpfs mounted by the test, unmounted after
probe(path, op, timeout)     one syscall on a path in a child process: its errno name,
                             "ok", or "HUNG" when it did not return in time
detach_dead(m)               after the daemon of an FsdMount died: wait for it, detach
                             the dead mount (fusermount3 -uz, else umount -l)
Strace                       strace -f attached to a running daemon: which syscalls, on
                             which real files (-y), their string arguments (calls())
kill_points / kill_before    from a clean run's trace, the calls by which an operation
                             changes the upper; SIGKILL of the daemon right before one
                             of them (strace -P PATH -e inject=CALL:signal=SIGKILL)
fd_count / rss_kib           a process's open descriptors and resident memory
run_as(uid, gid, root, calls) syscalls made by an unprivileged user in a forked child
posix_acl(...)               a system.posix_acl_access value, without setfacl
fchmodat2                    the raw syscall (AT_SYMLINK_NOFOLLOW reaches the filesystem)
remove_tree(path)            rm -rf of a tree too deep for shutil.rmtree

The crash workload (CrashModel, the `crash-worker` entry point): a seeded plan of
mutating operations that a worker process runs on a mount while it kills the
daemon at a seeded point; the model says which states every touched path may
be in afterwards (its old state, its new state, or the few intermediate states
a process can see between the syscalls of one operation, a write torn at a page
boundary included).

    python -m support.faults crash-worker SPEC.json
    python -m support.faults run-op ROOT '["rename", "a", "b"]'
    python -m support.faults load mmap|unlinked|walk ROOT SEED SECONDS DIRS FILES
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import hashlib
import json
import os
import random
import re
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .upper_ops import errname

MiB = 1 << 20


# -- small filesystems ----------------------------------------------------------------------------

@contextlib.contextmanager
def small_tmpfs(path, size: str = "8m", nr_inodes: int | None = None):
    """Mount a tmpfs of `size` (and at most nr_inodes inodes) at path; unmount at the end."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size},mode=0755" + (f",nr_inodes={nr_inodes}" if nr_inodes else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "strata-small", str(path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"mount -t tmpfs -o {opts}: {r.stderr}"
    try:
        yield path
    finally:
        r = subprocess.run(["umount", str(path)], capture_output=True, text=True)
        if r.returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def free_bytes(path) -> int:
    sv = os.statvfs(path)
    return sv.f_bavail * sv.f_frsize


def used_bytes(path) -> int:
    sv = os.statvfs(path)
    return (sv.f_blocks - sv.f_bfree) * sv.f_frsize


def remove_tree(path) -> None:
    """rm -rf path, however deep (shutil.rmtree recurses, and a 1000-level tree
    is too deep for it); mounts below are not crossed (umount them first)."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        os.unlink(path)
        return
    stack = [(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW), None)]
    while stack:
        fd, name = stack[-1]
        sub = None
        with os.scandir(fd) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    sub = e.name
                    break
                os.unlink(e.name, dir_fd=fd)
        if sub is not None:
            stack.append((os.open(sub, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd), sub))
            continue
        os.close(fd)
        stack.pop()
        if stack:
            os.rmdir(name, dir_fd=stack[-1][0])
    os.rmdir(path)


def entries_below(path) -> list[str]:
    """Every name below a real directory (relative), for 'nothing left behind' checks."""
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, n), path))
    return sorted(out)


# -- probing a mount from a child process ----------------------------------------------------------

_PROBE = r"""
import errno, os, sys
op, path = sys.argv[1], sys.argv[2]
def run():
    if op == "stat": os.stat(path)
    elif op == "lstat": os.lstat(path)
    elif op == "listdir": os.listdir(path)
    elif op == "listdir_cwd": os.chdir(path); os.listdir(".")
    elif op == "read": open(path, "rb").read()
    elif op == "write":
        with open(path, "ab") as f: f.write(b"x")
    elif op == "create": os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    elif op == "mkdir": os.mkdir(path)
    elif op == "statvfs": os.statvfs(path)
    elif op == "readlink": os.readlink(path)
    else: raise SystemExit("unknown probe " + op)
try:
    run()
    print("ok")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
"""


def probe(path, op: str = "stat", timeout: float = 5.0) -> str:
    """Run one call on path in a child; its errno name, "ok", or "HUNG"."""
    p = subprocess.Popen([sys.executable, "-c", _PROBE, op, os.fspath(path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()  # a FUSE request already taken by the daemon is not killable: do not wait on it
        try:
            p.wait(1)
        except subprocess.TimeoutExpired:
            pass
        return "HUNG"
    return out.strip() or f"crashed: {err.strip()[-200:]}"


# -- daemons ---------------------------------------------------------------------------------------

def daemon_pids(m) -> list[int]:
    """The fsd processes serving an FsdMount (not a fusermount3 helper)."""
    out = []
    for pid in m.pids:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if not comm.startswith("fusermount"):
            out.append(pid)
    return out


def detach_dead(m, timeout: float = 10.0) -> None:
    """The daemon of FsdMount m was killed: wait for it to be gone and detach the dead mount."""
    from . import mounts
    left = mounts.wait_exited(m.pids, timeout)
    assert not left, f"daemon {left} still alive: " + " | ".join(mounts.describe_process(p) for p in left)
    r = subprocess.run(["fusermount3", "-uz", str(m.mnt)], capture_output=True, text=True)
    if mounts.is_mounted(m.mnt):
        subprocess.run(["umount", "-l", str(m.mnt)], capture_output=True, text=True)
    assert not mounts.is_mounted(m.mnt), f"dead mount {m.mnt} not detached: {r.stderr}"
    m.wait_gone(timeout)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid: int) -> list[str]:
    out = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            out.append(f"{fd} -> {os.readlink(f'/proc/{pid}/fd/{fd}')}")
        except OSError:
            pass
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def drop_caches() -> None:
    """Make the kernel forget dentries and inodes (FUSE FORGETs follow)."""
    Path("/proc/sys/vm/drop_caches").write_text("2")


# -- strace ----------------------------------------------------------------------------------------

class Strace:
    """strace -f -e trace=SYSCALLS attached to pid (all its threads, and new ones);
    options: extra strace arguments (-y, -P PATH, -e inject=...)."""

    def __init__(self, pid: int, syscalls: str, out: Path, options=("-y",), cwd=None):
        self.out = Path(out)
        self.err = self.out.with_suffix(".stderr")
        self._errf = open(self.err, "w+")
        self.proc = subprocess.Popen(["strace", "-f", "-q", "-s", "4096", *options, "-e", f"trace={syscalls}",
                                      "-o", str(self.out), "-p", str(pid)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._errf,
                                     cwd=cwd)
        # strace says nothing when attached with -q; wait until it is tracing every thread
        tids = set(os.listdir(f"/proc/{pid}/task"))
        end = time.monotonic() + 10
        while time.monotonic() < end:
            traced = set()
            for t in tids:
                try:
                    status = Path(f"/proc/{pid}/task/{t}/status").read_text()
                except OSError:
                    traced.add(t)
                    continue
                tracer = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("TracerPid:")), "0")
                if tracer == str(self.proc.pid):
                    traced.add(t)
            if traced >= tids:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        self.stop()
        raise AssertionError(f"strace did not attach to {pid}: {self.err.read_text()}")

    def stop(self) -> list[str]:
        """Detach; the trace's lines."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._errf.close()
        return self.lines()

    def lines(self) -> list[str]:
        try:
            return self.out.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def calls(self) -> list[tuple[str, tuple[str, ...]]]:
        """(syscall, its string arguments) of every call traced, in order."""
        out = []
        for line in self.lines():
            m = _CALL.match(line)
            if m:
                out.append((m.group(1), tuple(_STRING.findall(m.group(2)))))
        return out

    def killed(self) -> bool:
        return any("+++ killed by SIGKILL +++" in line for line in self.lines())


_CALL = re.compile(r"^\d+\s+(\w+)\((.*)")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')

# syscalls that change a layer; a kill point is the first call of one of them on a path
MUTATING = ("mkdirat", "mknodat", "symlinkat", "linkat", "renameat", "renameat2", "unlinkat", "fchownat",
            "fchmodat", "utimensat")  # xattr calls name /proc/self/fd/N/...: no -P for them
NAMESPACE = ("mknodat", "symlinkat", "linkat", "renameat", "renameat2", "unlinkat")


def kill_points(calls, kinds=MUTATING) -> list[tuple[str, str, int]]:
    """From a clean run's calls: (syscall, path, n) for each call of kinds - the
    n-th call of that syscall naming that path - to kill the daemon right there."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for name, strings in calls:
        if name not in kinds or not strings:
            continue
        path = strings[-1]
        key = (name, path)
        seen[key] = seen.get(key, 0) + 1
        out.append((name, path, seen[key]))
    return out


def kill_before(pid: int, point: tuple[str, str, int], out: Path) -> Strace:
    """Have the daemon killed (SIGKILL, the call not made) when it reaches point."""
    name, path, n = point
    return Strace(pid, name, out, ("-P", path, "-e", f"inject={name}:error=EIO:signal=SIGKILL:when={n}"),
                  cwd="/")  # a relative -P path must not resolve against strace's cwd


# -- users -----------------------------------------------------------------------------------------

def in_child(work, ids=None, cwd=None):
    """work() in a forked child - in cwd, as ids (uid, gid, groups) if given,
    umask 022 - and its JSON result.  Tests use it to act as another user
    without touching their own process."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(rfd)
            if cwd is not None:
                os.chdir(cwd)
            if ids is not None:
                uid, gid, groups = ids
                os.setgroups(list(groups))
                os.setgid(gid)
                os.setuid(uid)
                _libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: keep /proc/self/fd/N usable after setuid
            os.umask(0o022)
            result = work()
            with os.fdopen(wfd, "w") as f:
                json.dump(result, f)
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd) as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0 and data, f"child failed (status {status})"
    return json.loads(data)


def run_as(uid: int, gid: int, root, calls, groups=()) -> list:
    """Run calls [(name, rel, *args)] as uid/gid in a forked child, on a dirfd
    of root opened before dropping privileges; one result per call: "ok", a
    value (read/stat) or the errno name. See _call for the names."""
    dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)

    def work():
        out = []
        for call in calls:
            try:
                out.append(_call(dfd, *call))
            except OSError as e:
                out.append(errname(e))
        return out
    try:
        return in_child(work, (uid, gid, groups))
    finally:
        os.close(dfd)


def _call(dfd: int, name: str, rel: str, *args):
    if name == "read":
        fd = os.open(rel, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
        try:
            return "ok:" + hashlib.sha256(os.read(fd, 1 << 20)).hexdigest()[:12]
        finally:
            os.close(fd)
    if name in ("write", "append", "trunc"):
        flags = {"write": os.O_WRONLY, "append": os.O_WRONLY | os.O_APPEND,
                 "trunc": os.O_WRONLY | os.O_TRUNC}[name]
        fd = os.open(rel, flags | os.O_NOFOLLOW, dir_fd=dfd)
        try:
            os.write(fd, args[0].encode() if args else b"w")
        finally:
            os.close(fd)
        return "ok"
    if name == "create":
        os.close(os.open(rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dfd))
        st = os.stat(rel, dir_fd=dfd, follow_symlinks=False)
        return f"ok:{st.st_uid}:{st.st_gid}:{stat.S_IMODE(st.st_mode):o}"
    if name == "truncate":
        fd = os.open(rel, os.O_WRONLY | os.O_NOFOLLOW, dir_fd=dfd)
        os.close(fd)
        os.truncate(f"/proc/self/fd/{dfd}/{rel}", args[0])  # truncate(2) by path
        return "ok"
    if name == "truncate_path":
        os.truncate(f"/proc/self/fd/{dfd}/{rel}", args[0])
        return "ok"
    if name == "fallocate":  # args: mode (FALLOC_FL_*), offset, length
        fd = os.open(rel, os.O_WRONLY | os.O_NOFOLLOW, dir_fd=dfd)
        try:
            if _libc.fallocate64(fd, args[0], args[1], args[2]) != 0:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e), rel)
        finally:
            os.close(fd)
        return "ok"
    if name == "mkdir":
        os.mkdir(rel, 0o755, dir_fd=dfd)
        st = os.stat(rel, dir_fd=dfd, follow_symlinks=False)
        return f"ok:{st.st_uid}:{st.st_gid}"
    if name == "unlink":
        os.unlink(rel, dir_fd=dfd)
        return "ok"
    if name == "rmdir":
        os.rmdir(rel, dir_fd=dfd)
        return "ok"
    if name == "rename":
        os.rename(rel, args[0], src_dir_fd=dfd, dst_dir_fd=dfd)
        return "ok"
    if name == "link":
        os.link(rel, args[0], src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
        return "ok"
    if name == "chmod":
        os.chmod(rel, args[0], dir_fd=dfd)
        return "ok"
    if name == "chown":
        os.chown(rel, args[0], args[1], dir_fd=dfd, follow_symlinks=False)
        return "ok"
    if name == "utime_now":
        os.utime(rel, None, dir_fd=dfd, follow_symlinks=False)
        return "ok"
    if name == "utime":
        os.utime(rel, ns=(args[0], args[0]), dir_fd=dfd, follow_symlinks=False)
        return "ok"
    if name == "setxattr":
        os.setxattr(f"/proc/self/fd/{dfd}/{rel}", args[0], args[1].encode(), follow_symlinks=False)
        return "ok"
    if name == "getxattr":
        return "ok:" + os.getxattr(f"/proc/self/fd/{dfd}/{rel}", args[0], follow_symlinks=False).decode()
    if name == "setxattr_bytes":  # args: name, value as hex
        os.setxattr(f"/proc/self/fd/{dfd}/{rel}", args[0], bytes.fromhex(args[1]), follow_symlinks=False)
        return "ok"
    if name == "getxattr_bytes":
        return "ok:" + os.getxattr(f"/proc/self/fd/{dfd}/{rel}", args[0], follow_symlinks=False).hex()
    if name == "listdir":
        fd = os.open(rel or ".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=dfd)
        try:
            return "ok:" + ",".join(sorted(os.listdir(fd)))
        finally:
            os.close(fd)
    if name == "stat":
        st = os.stat(rel, dir_fd=dfd, follow_symlinks=False)
        return f"ok:{st.st_uid}:{st.st_gid}:{st.st_mode:o}:{st.st_size}"
    if name == "access":
        return "ok" if os.access(rel, args[0], dir_fd=dfd, effective_ids=False) else "denied"
    raise ValueError(f"unknown call {name}")


ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20
_ACL_UNDEFINED_ID = 0xFFFFFFFF


def posix_acl(user: int, group: int, other: int, users=(), groups=(), mask: int | None = None) -> bytes:
    """The value of system.posix_acl_access: base perms (rwx as 0..7) and named entries
    [(id, perm)], in the kernel's xattr format (version 2, sorted by tag then id)."""
    entries = [(ACL_USER_OBJ, user, _ACL_UNDEFINED_ID)]
    entries += [(ACL_USER, p, i) for i, p in sorted(users)]
    entries.append((ACL_GROUP_OBJ, group, _ACL_UNDEFINED_ID))
    entries += [(ACL_GROUP, p, i) for i, p in sorted(groups)]
    if users or groups or mask is not None:
        entries.append((ACL_MASK, 7 if mask is None else mask, _ACL_UNDEFINED_ID))
    entries.append((ACL_OTHER, other, _ACL_UNDEFINED_ID))
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate64.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
SYS_fchmodat2 = {"x86_64": 452, "aarch64": 452}.get(os.uname().machine, 452)
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100


def fchmodat2(path, mode: int, flags: int = AT_SYMLINK_NOFOLLOW) -> None:
    ret = _libc.syscall(ctypes.c_long(SYS_fchmodat2), ctypes.c_int(AT_FDCWD), os.fsencode(path),
                        ctypes.c_uint(mode), ctypes.c_uint(flags))
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), os.fspath(path))


# -- the crash workload ----------------------------------------------------------------------------

PAGE = 4096


def data_for(n: int, tag: str) -> bytes:
    """Deterministic bytes: the worker writes them, the model expects them."""
    seed = hashlib.sha256(f"{tag}/{n}".encode()).digest()
    block = hashlib.sha512(seed).digest() * 64
    return (block * (n // len(block) + 1))[:n]


_data_for = data_for


class BigContent:
    """A big file's content as (size, running sha256): appends only."""

    def __init__(self, size: int, hasher):
        self.size = size
        self.hasher = hasher

    def __copy__(self):
        return BigContent(self.size, self.hasher.copy())

    def appended(self, data: bytes) -> "BigContent":
        h = self.hasher.copy()
        h.update(data)
        return BigContent(self.size + len(data), h)

    def digest(self) -> str:
        return self.hasher.hexdigest()


def content_digest(content) -> tuple[int, str]:
    if isinstance(content, BigContent):
        return content.size, content.digest()
    return len(content), hashlib.sha256(content).hexdigest()


@dataclass
class Obj:
    """One object of the model; hard links are several paths holding the same Obj."""
    kind: str  # file dir symlink fifo chardev other
    mode: int
    content: object = None  # files: bytes or BigContent
    target: str | None = None  # symlinks
    lower_big: bool = False  # a big file still only in a lower layer: a copy-up window


@dataclass
class CrashModel:
    """The merged tree as the workload expects it (path -> Obj), and the seeded
    choice of the next operations."""

    paths: dict[str, Obj]
    rng: random.Random
    deleted: list[str] = field(default_factory=list)
    n: int = 0

    # -- building -----------------------------------------------------------------
    @classmethod
    def read(cls, root, seed: int, big: int = MiB) -> "CrashModel":
        """The model of what is mounted at root now (files read through it)."""
        root = os.fspath(root)
        paths: dict[str, Obj] = {}
        by_ino: dict[int, Obj] = {}
        for dirpath, dirnames, filenames in os.walk(root):
            for name in sorted(dirnames + filenames):
                p = os.path.join(dirpath, name)
                rel = os.path.relpath(p, root)
                st = os.lstat(p)
                if stat.S_ISDIR(st.st_mode):
                    paths[rel] = Obj("dir", stat.S_IMODE(st.st_mode))
                    continue
                if st.st_ino in by_ino:
                    paths[rel] = by_ino[st.st_ino]
                    continue
                kind = _kind(st)
                obj = Obj(kind, stat.S_IMODE(st.st_mode))
                if kind == "file":
                    if st.st_size >= big:
                        h = hashlib.sha256()
                        with open(p, "rb", buffering=0) as f:
                            while chunk := f.read(4 * MiB):
                                h.update(chunk)
                        obj.content = BigContent(st.st_size, h)
                        obj.lower_big = True
                    else:
                        obj.content = Path(p).read_bytes()
                elif kind == "symlink":
                    obj.target = os.readlink(p)
                by_ino[st.st_ino] = obj
                paths[rel] = obj
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        return cls(paths, random.Random(seed))

    def copy(self) -> "CrashModel":
        """A copy whose objects can change without changing this one's (hard links
        stay shared within the copy)."""
        clones: dict[int, Obj] = {}
        paths = {}
        for p, o in self.paths.items():
            c = clones.get(id(o))
            if c is None:
                c = clones[id(o)] = dataclasses.replace(o, content=copy.copy(o.content))
            paths[p] = c
        return CrashModel(paths, self.rng, list(self.deleted), self.n)

    # -- queries ------------------------------------------------------------------
    def below(self, rel: str) -> list[str]:
        pre = rel + "/"
        return [p for p in self.paths if p.startswith(pre)]

    def dirs(self) -> list[str]:
        return sorted(p for p, o in self.paths.items() if o.kind == "dir")

    def nondirs(self) -> list[str]:
        return sorted(p for p, o in self.paths.items() if o.kind != "dir")

    def files(self) -> list[str]:
        return sorted(p for p, o in self.paths.items() if o.kind == "file")

    def parent_exists(self, rel: str) -> bool:
        parent = rel.rpartition("/")[0]
        return parent == "" or (parent in self.paths and self.paths[parent].kind == "dir")

    def _new_name(self) -> str:
        rng = self.rng
        if self.deleted and rng.random() < 0.4:
            cands = [d for d in self.deleted[-20:] if d not in self.paths and self.parent_exists(d)]
            if cands:
                return rng.choice(cands)
        dirs = [d for d in self.dirs() if d.count("/") < 4]
        parent = rng.choice([""] + dirs) if dirs else ""
        self.n += 1
        stem = rng.choice(("n", "new file ", "ü", ".d", "x"))
        return f"{parent}/{stem}{self.n}" if parent else f"{stem}{self.n}"

    # -- choosing operations ------------------------------------------------------------
    def plan(self, count: int) -> list[list]:
        """count operations chosen on (a scratch copy of) this model, each valid in
        the state the previous ones leave; the model itself is not changed."""
        scratch = self.copy()
        scratch.rng = self.rng
        out: list[list] = []
        while len(out) < count:
            ops = scratch._choose()
            for op in ops:
                scratch.apply(op)
                out.append(op)
        self.n = scratch.n
        return out

    def _choose(self) -> list[list]:
        rng = self.rng
        files = self.files()
        kinds = ["append", "pwrite", "trunc_write", "create", "unlink", "rename", "rename_dir", "mkdir",
                 "rmtree", "link", "symlink", "chmod"]
        weights = [20, 8, 6, 12, 9, 10, 5, 8, 4, 6, 3, 4]
        what = rng.choices(kinds, weights)[0]
        tag = f"{rng.getrandbits(32):08x}"
        if what in ("append", "pwrite", "trunc_write") and not files:
            what = "create"
        if what == "append":
            big = [f for f in files if self.paths[f].lower_big]
            target = rng.choice(big) if big and rng.random() < 0.35 else rng.choice(files)
            return [["append", target, rng.choice((1, 100, 5000, 60000)), tag]]
        if what == "pwrite":
            small = [f for f in files if isinstance(self.paths[f].content, bytes)]
            if small:
                target = rng.choice(small)
                size = len(self.paths[target].content)
                return [["pwrite", target, rng.randint(0, size), rng.choice((1, 7, 4096, 30000)), tag]]
            what = "trunc_write"
        if what == "trunc_write":
            big = [f for f in files if self.paths[f].lower_big]
            target = rng.choice(big) if big and rng.random() < 0.3 else rng.choice(files)
            return [["trunc_write", target, rng.choice((0, 10, 3000, 50000)), tag]]
        if what == "create":
            return [["create", self._new_name(), rng.choice((0, 10, 3000, 60000)), tag]]
        if what == "unlink" and self.nondirs():
            return [["unlink", rng.choice(self.nondirs())]]
        if what == "rename" and self.nondirs():
            src = rng.choice(self.nondirs())
            others = [p for p in self.nondirs() if self.paths[p] is not self.paths[src]]
            dst = rng.choice(others) if others and rng.random() < 0.3 else self._new_name()
            if dst != src:
                return [["rename", src, dst]]
        if what == "rename_dir" and self.dirs():
            src = rng.choice(self.dirs())
            dst = self._new_name()
            if not (dst + "/").startswith(src + "/") and dst not in self.paths:
                return [["rename", src, dst]]
        if what == "mkdir":
            return [["mkdir", self._new_name()]]
        if what == "rmtree":
            small = [d for d in self.dirs() if len(self.below(d)) < 25]
            if small:
                d = rng.choice(small)
                ops = [["unlink", p] for p in sorted(self.below(d), key=lambda p: -p.count("/"))
                       if self.paths[p].kind != "dir"]
                ops += [["rmdir", p] for p in sorted(self.below(d) + [d], key=lambda p: -p.count("/"))
                        if self.paths[p].kind == "dir"]
                return ops
        if what == "link" and files:
            return [["link", rng.choice(files), self._new_name()]]
        if what == "symlink":
            return [["symlink", rng.choice(("target", "../up", "/abs/olute")), self._new_name()]]
        if what == "chmod":  # never a symlink: chmod would follow it out of the mount
            cands = [p for p, o in self.paths.items() if o.kind in ("file", "dir")]
            if cands:
                return [["chmod", rng.choice(sorted(cands)), rng.choice((0o600, 0o644, 0o755, 0o700))]]
        return [["create", self._new_name(), 10, tag]]

    # -- effects --------------------------------------------------------------------------
    def apply(self, op: list, cut: int | None = None) -> None:
        """The state after op succeeded; with cut, after only the first cut bytes
        of its data were written."""
        name = op[0]
        P = self.paths

        def data_for(n, tag):
            return _data_for(n, tag)[:cut]
        if name == "append":
            _, rel, n, tag = op
            o = P[rel]
            data = data_for(n, tag)
            if isinstance(o.content, BigContent):
                o.content = o.content.appended(data)
            else:
                o.content = o.content + data
            o.lower_big = False
        elif name == "pwrite":
            _, rel, off, n, tag = op
            o = P[rel]
            data = data_for(n, tag)
            buf = bytearray(o.content)
            if off > len(buf):
                buf.extend(b"\0" * (off - len(buf)))
            buf[off:off + len(data)] = data  # a torn write leaves the rest as it was
            o.content = bytes(buf)
        elif name == "trunc_write":
            _, rel, n, tag = op
            P[rel].content = data_for(n, tag)
            P[rel].lower_big = False
        elif name == "create":
            _, rel, n, tag = op
            P[rel] = Obj("file", 0o644, data_for(n, tag))
        elif name == "unlink":
            del P[op[1]]
            self.deleted.append(op[1])
        elif name == "rmdir":
            del P[op[1]]
            self.deleted.append(op[1])
        elif name == "rename":
            _, src, dst = op
            if P[src].kind == "dir":
                for p in [src, *self.below(src)]:
                    P[dst + p[len(src):]] = P.pop(p)
            else:
                P[dst] = P.pop(src)
            self.deleted.append(src)
        elif name == "mkdir":  # a setgid parent passes its setgid bit on to a new dir
            parent = P.get(op[1].rpartition("/")[0])
            P[op[1]] = Obj("dir", 0o755 | (parent.mode & stat.S_ISGID if parent is not None else 0))
        elif name == "link":
            P[op[2]] = P[op[1]]
        elif name == "symlink":
            P[op[2]] = Obj("symlink", 0o777, target=op[1])
        elif name == "chmod":
            P[op[1]].mode = op[2]
        else:
            raise ValueError(op)

    def candidates(self, op: list) -> list[tuple[str, "CrashModel"]]:
        """The states a process may leave behind when op was cut short: the old
        state, the intermediate states between its syscalls, the new state."""
        old = self.copy()
        new = self.copy()
        new.apply(op)
        out = [("old", old)]
        if op[0] == "create":  # created, nothing written yet
            mid = self.copy()
            mid.apply(["create", op[1], 0, "-"])
            out.append(("created empty", mid))
        if op[0] == "trunc_write":  # truncated, nothing written yet
            mid = self.copy()
            mid.apply(["trunc_write", op[1], 0, "-"])
            out.append(("truncated", mid))
        for cut in self._tears(op):
            torn = self.copy()
            torn.apply(op, cut)
            out.append((f"torn write ({cut} of {op[-2]} bytes)", torn))
        out.append(("new", new))
        return out

    def _tears(self, op: list) -> list[int]:
        """Where a write(2) of op's data may have stopped when the daemon died: a
        write can reach the daemon as several requests (the kernel splits it at
        page boundaries), and SIGKILL stops the daemon's own pwrite at a page
        boundary. Nothing a daemon can prevent; a torn copy-up is another thing."""
        name = op[0]
        if name not in ("append", "pwrite", "trunc_write", "create"):
            return []
        n = op[-2]
        if name == "append":
            o = self.paths[op[1]]
            start = o.content.size if isinstance(o.content, BigContent) else len(o.content)
        elif name == "pwrite":
            start = op[2]
        else:
            start = 0
        first = (start // PAGE + 1) * PAGE
        return [b - start for b in range(first, start + n, PAGE)]

    def touched(self, op: list) -> set[str]:
        """Paths whose state op may change (with everything below a renamed dir)."""
        name = op[0]
        if name == "rename":
            _, src, dst = op
            out = {src, dst} | {p for p in self.below(src)}
            out |= {dst + p[len(src):] for p in self.below(src)}
            return out | self._links_of(src)
        if name == "symlink":
            return {op[2]}
        if name == "link":
            return {op[1], op[2]} | self._links_of(op[1])
        return {op[1]} | self._links_of(op[1])

    def _links_of(self, rel: str) -> set[str]:
        o = self.paths.get(rel)
        if o is None or o.kind == "dir":
            return set()
        return {p for p, x in self.paths.items() if x is o}

    def expect(self, rel: str) -> tuple:
        o = self.paths.get(rel)
        if o is None:
            return ("absent",)
        if o.kind == "file":
            return ("file", f"{o.mode:o}", *content_digest(o.content))
        if o.kind == "symlink":
            return ("symlink", o.target)
        if o.kind == "dir":
            return ("dir", f"{o.mode:o}")
        return (o.kind, f"{o.mode:o}")

    def groups(self) -> list[list[str]]:
        """Paths that must share one inode (hard links)."""
        by: dict[int, list[str]] = {}
        for p, o in self.paths.items():
            if o.kind != "dir":
                by.setdefault(id(o), []).append(p)
        return [sorted(g) for g in by.values() if len(g) > 1]


def _kind(st) -> str:
    return {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo",
            stat.S_IFCHR: "chardev"}.get(stat.S_IFMT(st.st_mode), "other")


def observe(root, rel: str) -> tuple:
    """What rel is through the mount, in CrashModel.expect's form.  The model
    knows names, not symlink targets: under an ancestor that is no directory
    (a symlink renamed over a directory, say), rel is absent."""
    parts = rel.split("/")
    for i in range(1, len(parts)):
        try:
            if not stat.S_ISDIR(os.lstat(os.path.join(os.fspath(root), *parts[:i])).st_mode):
                return ("absent",)
        except (FileNotFoundError, NotADirectoryError):
            return ("absent",)
        except OSError as e:
            return ("error", errname(e))
    p = os.path.join(os.fspath(root), rel)
    try:
        st = os.lstat(p)
    except (FileNotFoundError, NotADirectoryError):
        return ("absent",)
    except OSError as e:
        return ("error", errname(e))
    kind = _kind(st)
    if kind == "file":
        h = hashlib.sha256()
        try:
            with open(p, "rb", buffering=0) as f:
                while chunk := f.read(4 * MiB):
                    h.update(chunk)
        except OSError as e:
            return ("file", f"{stat.S_IMODE(st.st_mode):o}", st.st_size, "read error " + errname(e))
        return ("file", f"{stat.S_IMODE(st.st_mode):o}", st.st_size, h.hexdigest())
    if kind == "symlink":
        return ("symlink", os.readlink(p))
    return (kind, f"{stat.S_IMODE(st.st_mode):o}")


def names_of(root) -> dict[str, str]:
    """rel -> kind of everything below root, without following symlinks."""
    root = os.fspath(root)
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            try:
                out[os.path.relpath(p, root)] = _kind(os.lstat(p))
            except OSError as e:
                out[os.path.relpath(p, root)] = "error " + errname(e)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return out


# -- the crash worker --------------------------------------------------------------------------------

def _write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    """write(2) until all of data is written: a write the kernel split into
    several requests comes back short when the daemon dies between them, and
    the next call then gives the error that shows the operation was cut."""
    done = 0
    while done < len(data):
        chunk = data[done:]
        done += os.write(fd, chunk) if offset is None else os.pwrite(fd, chunk, offset + done)


def run_op(root: str, op: list) -> None:
    """One planned operation on the mount at root (raises OSError)."""
    name = op[0]
    j = lambda rel: os.path.join(root, rel)  # noqa: E731
    nf = os.O_NOFOLLOW
    if name == "append":
        fd = os.open(j(op[1]), os.O_WRONLY | os.O_APPEND | nf)
        try:
            _write_all(fd, data_for(op[2], op[3]))
        finally:
            os.close(fd)
    elif name == "pwrite":
        fd = os.open(j(op[1]), os.O_WRONLY | nf)
        try:
            _write_all(fd, data_for(op[3], op[4]), op[2])
        finally:
            os.close(fd)
    elif name in ("trunc_write", "create"):
        flags = os.O_WRONLY | (os.O_TRUNC if name == "trunc_write" else os.O_CREAT | os.O_EXCL)
        fd = os.open(j(op[1]), flags | nf, 0o644)
        try:
            if op[2]:
                _write_all(fd, data_for(op[2], op[3]))
        finally:
            os.close(fd)
    elif name == "unlink":
        os.unlink(j(op[1]))
    elif name == "rmdir":
        os.rmdir(j(op[1]))
    elif name == "rename":
        os.rename(j(op[1]), j(op[2]))
    elif name == "mkdir":
        os.mkdir(j(op[1]), 0o755)
    elif name == "link":
        os.link(j(op[1]), j(op[2]), follow_symlinks=False)
    elif name == "symlink":
        os.symlink(op[1], j(op[2]))
    elif name == "chmod":
        os.chmod(j(op[1]), op[2], follow_symlinks=True)
    else:
        raise ValueError(op)


# EIO: what a write gets from the kernel when the daemon dies under it (its
# last request reached the daemon, nothing after) - counted only when the kill
# was already sent while the operation ran.
KILLED_EIO = "EIO under SIGKILL"
DEAD = ("ENOTCONN", "ECONNABORTED", KILLED_EIO)


def crash_worker(spec_path: str) -> None:
    """Run spec["plan"] on spec["root"], SIGKILL the daemon at spec["kill"]; print
    one JSON line [index, result] per operation tried (result "ok" or errno name)
    and a final {"kill": ...} line saying when the kill was sent."""
    spec = json.loads(Path(spec_path).read_text())
    root, plan, kill, pids = spec["root"], spec["plan"], spec["kill"], spec["pids"]
    os.umask(0o022)
    sent = threading.Event()
    note: dict = {}

    def send(why: str):
        if not sent.is_set():
            note["why"] = why
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            sent.set()

    def killer():
        if kill["how"] == "delay":
            time.sleep(kill["delay"])
            send("after delay")
        elif kill["how"] == "copy-up":
            tmp = kill["tmpdir"]
            end = time.monotonic() + 5
            while time.monotonic() < end:
                try:
                    if [n for n in os.listdir(tmp) if n != "probe"]:
                        time.sleep(kill["delay"])
                        send("copy-up in progress")
                        return
                except OSError:
                    pass
                time.sleep(0.0002)
            send("copy-up never seen")

    thread = None
    for i, op in enumerate(plan):
        if i == kill["at"] and kill["how"] != "between":
            thread = threading.Thread(target=killer, daemon=True)
            thread.start()
        try:
            run_op(root, op)
            res = "ok"
        except OSError as e:
            res = errname(e)
            if res == "EIO" and sent.is_set():
                res = KILLED_EIO
        print(json.dumps([i, res]), flush=True)
        if res in DEAD:
            break
        if i == kill["at"] and kill["how"] == "between":
            send("between operations")
    if thread is not None:
        thread.join()
    send("after the plan")
    print(json.dumps({"kill": note.get("why")}), flush=True)


# -- load workers ------------------------------------------------------------------------------------

RACE = {"ENOENT", "EEXIST", "ENOTEMPTY", "ENOTDIR", "EISDIR"}


def load_worker(kind: str, root: str, seed: int, seconds: float, dirs: int, files: int) -> dict:
    """Beside the stress workers of support.upper_ops: "walk" walks the whole tree
    (lstat, readlink, listxattr of everything), "mmap" maps files and works through
    the maps after closing the descriptor (files ROOT/mmSEED/m<i>, which it
    alone uses), "unlinked" keeps using files it unlinked
    while open. {"ops": n, "errors": {...}, "unexpected": [...]} like upper_ops.stress."""
    import mmap
    rng = random.Random(seed)
    errors: dict[str, int] = {}
    unexpected: list[str] = []
    n = 0

    def f():
        return os.path.join(root, f"d{rng.randrange(dirs)}", f"f{rng.randrange(files)}")

    def walk():
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                    if stat.S_ISLNK(st.st_mode):
                        os.readlink(p)
                    os.listxattr(p, follow_symlinks=False)
                except OSError as e:
                    if errname(e) not in RACE:
                        raise

    def with_mmap():  # on files of its own (a map of a file truncated by another worker gives SIGBUS)
        path = os.path.join(root, f"mm{seed}", f"m{rng.randrange(files)}")
        if rng.random() < 0.2:
            with open(path, "wb") as w:
                w.write(os.urandom(rng.randint(1, 200_000)))
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return
            m = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        with m:  # the descriptor is closed: the map alone keeps the file open
            m[0:1] = m[0:1]
            _ = m[size // 2: size // 2 + 100]
            m.flush()

    def unlinked():
        path = os.path.join(root, f"d{rng.randrange(dirs)}", f"tmp-{seed}-{n}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"x" * rng.randint(1, 70000))
            os.unlink(path)
            os.pwrite(fd, b"after unlink", 5)
            assert os.pread(fd, 12, 5) == b"after unlink"
            os.fstat(fd)
            os.ftruncate(fd, 3)
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)

    fn = {"walk": walk, "mmap": with_mmap, "unlinked": unlinked}[kind]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        n += 1
        try:
            fn()
        except OSError as e:
            key = f"{kind} {errname(e)}"
            errors[key] = errors.get(key, 0) + 1
            if errname(e) not in RACE:
                unexpected.append(f"{key}: {e}")
        except Exception as e:  # noqa: BLE001 - report, don't die
            unexpected.append(f"{kind}: {type(e).__name__}: {e}")
    return {"ops": n, "errors": errors, "unexpected": unexpected[:50]}


if __name__ == "__main__":
    if sys.argv[1] == "crash-worker":
        crash_worker(sys.argv[2])
    elif sys.argv[1] == "load":  # KIND ROOT SEED SECONDS DIRS FILES
        kind, root, seed, seconds, dirs, files = sys.argv[2:8]
        print(json.dumps(load_worker(kind, root, int(seed), float(seconds), int(dirs), int(files))))
    elif sys.argv[1] == "run-op":  # ROOT JSON-OP: prints "ok" or the errno name
        try:
            run_op(sys.argv[2], json.loads(sys.argv[3]))
            print("ok")
        except OSError as e:
            print(errname(e))
