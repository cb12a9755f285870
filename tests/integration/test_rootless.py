"""fsd without root: as an ordinary user through fusermount3, and as root of a
user namespace (the way rootless podman runs it).

Every scenario runs in an agent process (tests/support/rootless.py) that works
as the unprivileged test user inside a private mount namespace where a 0666
fuse node is bind-mounted over /dev/fuse; the machine's /dev/fuse is left as
it is. The layers live in a sandbox under /tmp; what fsd wrote into the upper
is checked from outside, as root, on the real files.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import lazyfetcher as lazy_sample
from support import rootless
from support.lazyfetcher import lazy_layer
from support.rootless import Agent, Sandbox, User, UserMount

OVERFLOW = 65534
OVERRIDE_XATTR = "user.containers.override_stat"

pytestmark = pytest.mark.fuse_deadline(120)


@pytest.fixture(scope="module")
def user() -> User:
    u, reason = rootless.fsd_user()
    if reason:
        pytest.skip(reason)
    return u


@dataclass
class Env:
    """A two-layer stack in a sandbox and an agent to mount it."""

    user: User
    box: Sandbox
    agent: Agent
    top: Path
    bottom: Path
    upper: Path
    work: Path
    mnt: Path

    def mount(self, *opts: str) -> UserMount:
        return self.agent.mount_fsd([self.top, self.bottom], self.upper, self.work, opts, self.mnt)

    def remount(self, m: UserMount, *opts: str) -> UserMount:
        self.agent.unmount(m)
        return self.mount(*opts)

    def expected_whiteout(self) -> str:
        """'chardev' if the agent may mknod a 0/0 char device next to the upper
        (the kernel allows whiteouts to unprivileged users since 5.8), else 'file'."""
        probe = self.box.dir("probe")
        try:
            self.agent.call("mknod", str(probe / "wh"), stat.S_IFCHR | 0o600, 0)
        except OSError:
            return "file"
        return "chardev"


def _make_stack(box: Sandbox, user: User) -> tuple[Path, Path]:
    """top: the user's own files; bottom: one of the user's, the rest root's."""
    top = box.dir("layers/top")
    box.file("layers/top/own.txt", "own\n")
    box.dir("layers/top/owndir")
    for rel in ("link", "link2", "link3", "link4", "owndir/link"):  # the user's symlinks
        os.symlink("own.txt" if "/" not in rel else "a.txt", box.root / "layers/top" / rel)
        os.lchown(box.root / "layers/top" / rel, user.uid, user.gid)
    box.file("layers/top/owndir/a.txt", "a\n")
    box.file("layers/top/owndir/b.txt", "b\n")
    bottom = box.dir("layers/bottom")
    box.file("layers/bottom/bottom.txt", "bottom\n")
    box.file("layers/bottom/rootfile", "root\n", owned=False)
    box.dir("layers/bottom/rootdir", owned=False)
    box.file("layers/bottom/rootdir/r.txt", "r\n", owned=False)
    sub = box.file("layers/bottom/sub.txt", "sub\n", owned=False)
    os.chown(sub, user.subuid[0] + 4, user.subgid[0] + 4)  # container id 5 of the user's range
    return top, bottom


def _env(user, fsd_log, fuse_deadline, request, userns: bool):
    box = Sandbox(user)
    top, bottom = _make_stack(box, user)
    upper, work, mnt = box.dir("upper"), box.dir("work"), box.dir("mnt")
    try:
        agent = Agent(box, userns=userns, deadline=fuse_deadline)
    except Exception:
        box.cleanup()
        raise
    yield Env(user, box, agent, top, bottom, upper, work, mnt)
    problems = agent.close()
    agent.collect_logs(fsd_log)
    problems += box.cleanup()
    failed = getattr(request.node, "rep_call", None)
    if problems and not (failed and failed.failed):
        pytest.fail("rootless cleanup: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def plain(user, fsd_log, fuse_deadline, request):
    """The ordinary user, no user namespace."""
    yield from _env(user, fsd_log, fuse_deadline, request, userns=False)


@pytest.fixture
def userns(user, fsd_log, fuse_deadline, request):
    """Root of a user namespace: 0 is the user, 1..65536 its subordinate ids."""
    yield from _env(user, fsd_log, fuse_deadline, request, userns=True)


def _upper_xattrs(upper: Path) -> dict[str, list[str]]:
    """Every xattr name on every entry of the upper, read as root on the real files."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in [".", *dirnames, *filenames]:
            p = Path(dirpath, name)
            try:
                names = os.listxattr(p, follow_symlinks=False)
            except OSError:
                continue
            if names:
                out[str(p.relative_to(upper))] = sorted(names)
    return out


def _assert_whiteout(upper: Path, name: str, form: str):
    """upper/name is recorded as deleted in the given form."""
    if form == "chardev":
        st = os.lstat(upper / name)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, \
            f"{name}: expected a 0/0 char device whiteout in the upper, found mode {st.st_mode:o} rdev {st.st_rdev}"
    else:
        wh = upper / (os.path.dirname(name) or ".") / (".wh." + os.path.basename(name))
        assert wh.is_file() and wh.stat().st_size == 0, f"expected a .wh. whiteout file {wh}"
        assert not (upper / name).exists()


def _parse_override(value: bytes) -> tuple[int, int, int, list[str]]:
    fields = value.decode().split(":")
    assert len(fields) in (3, 4), f"override_stat {value!r} is not uid:gid:mode[:type]"
    return int(fields[0]), int(fields[1]), int(fields[2], 8), fields[3:]


# -- an ordinary user through fusermount3 ----------------------------------------------------------

def test_user_mounts_and_writes_own_files(plain):
    a, mnt = plain.agent, plain.mnt
    m = plain.mount()
    assert sorted(a.call("listdir", str(mnt))) == ["bottom.txt", "link", "link2", "link3", "link4", "own.txt", "owndir", "rootdir", "rootfile", "sub.txt"]
    assert a.read(mnt / "rootdir/r.txt") == "r\n"
    a.write(mnt / "new.txt", "fresh\n")
    a.call("mkdir", str(mnt / "newdir"), 0o755)
    a.write(mnt / "newdir/inner", "inner\n")
    st = a.stat(mnt / "new.txt")
    assert (st.st_uid, st.st_gid) == (plain.user.uid, plain.user.gid)
    assert a.read(mnt / "new.txt") == "fresh\n"
    for rel in ("new.txt", "newdir", "newdir/inner"):
        real = os.lstat(plain.upper / rel)
        assert (real.st_uid, real.st_gid) == (plain.user.uid, plain.user.gid), rel
    a.unmount(m)  # fusermount3 -u as the user; the daemon must exit
    assert (plain.upper / "new.txt").read_text() == "fresh\n"
    assert (plain.upper / "newdir/inner").read_text() == "inner\n"


def test_user_reads_and_copies_up_files_of_a_lazy_layer(plain):
    """fsd run by the user asks the store's fetcher (root's, here) for a lazy
    layer's files: it reads the layer root's xattr and each file's list of
    xattrs, which a user may."""
    a, mnt = plain.agent, plain.mnt
    with lazy_layer(plain.box.root / "lazy") as (layer, fetcher):
        os.chown(layer / "h1", plain.user.uid, plain.user.gid)  # the user's file in the image
        m = a.mount_fsd([layer], plain.upper, plain.work, (), mnt)
        assert a.read(mnt / "a") == lazy_sample.A.decode()
        a.write(mnt / "h1", "more\n", append=True)
        assert a.read(mnt / "d/h2") == lazy_sample.H.decode() + "more\n"
        assert (plain.upper / "h1").read_bytes() == lazy_sample.H + b"more\n"
        assert len(fetcher.requests) == 2
        a.unmount(m)


def test_user_copy_up_of_own_lower_file(plain):
    a, mnt = plain.agent, plain.mnt
    plain.mount()
    before = os.lstat(plain.top / "own.txt")
    a.write(mnt / "own.txt", "more\n", append=True)
    a.write(mnt / "bottom.txt", "changed\n")
    assert a.read(mnt / "own.txt") == "own\nmore\n"
    assert a.read(mnt / "bottom.txt") == "changed\n"
    assert (plain.upper / "own.txt").read_text() == "own\nmore\n"
    assert (plain.top / "own.txt").read_text() == "own\n", "the lower changed"
    assert (plain.bottom / "bottom.txt").read_text() == "bottom\n", "the lower changed"
    real = os.lstat(plain.upper / "own.txt")
    assert (real.st_uid, stat.S_IMODE(real.st_mode)) == (plain.user.uid, stat.S_IMODE(before.st_mode))


def test_user_unlink_leaves_a_whiteout(plain):
    a, mnt = plain.agent, plain.mnt
    form = plain.expected_whiteout()
    plain.mount()
    a.call("unlink", str(mnt / "own.txt"))
    a.call("unlink", str(mnt / "bottom.txt"))
    a.call("unlink", str(mnt / "owndir/a.txt"))
    assert a.errno_of("lstat", str(mnt / "own.txt")) == errno.ENOENT
    assert sorted(a.call("listdir", str(mnt))) == ["link", "link2", "link3", "link4", "owndir", "rootdir",
                                                   "rootfile", "sub.txt"]
    assert sorted(a.call("listdir", str(mnt / "owndir"))) == ["b.txt", "link"]
    for name in ("own.txt", "bottom.txt", "owndir/a.txt"):
        _assert_whiteout(plain.upper, name, form)
    assert (plain.top / "own.txt").exists() and (plain.bottom / "bottom.txt").exists()
    # a root-owned directory of the lower is not the user's to change
    assert a.errno_of("unlink", str(mnt / "rootdir/r.txt")) == errno.EACCES


def test_user_mkdir_over_whiteout_is_opaque_by_user_xattr(plain):
    a, mnt = plain.agent, plain.mnt
    plain.mount()
    for name in ("a.txt", "b.txt", "link"):
        a.call("unlink", str(mnt / "owndir" / name))
    a.call("rmdir", str(mnt / "owndir"))
    a.call("mkdir", str(mnt / "owndir"), 0o755)
    a.write(mnt / "owndir/c.txt", "c\n")
    assert a.call("listdir", str(mnt / "owndir")) == ["c.txt"]
    real = plain.upper / "owndir"
    assert os.getxattr(real, "user.overlay.opaque") == b"y", \
        f"upper/owndir is not marked opaque by user.overlay.opaque: {os.listxattr(real)}"
    trusted = {k: v for k, v in _upper_xattrs(plain.upper).items() if any(n.startswith("trusted.") for n in v)}
    assert not trusted, f"trusted.* xattrs written by an unprivileged daemon: {trusted}"
    # the marker is private: not visible through the mount
    assert "user.overlay.opaque" not in a.call("listxattr", str(mnt / "owndir"))


def _copy_up_symlinks(env: Env, me: int):
    """Changes that copy up a lower symlink: the upper gets a symlink, with no
    xattr of the daemon's own where the filesystem refuses user.* on symlinks."""
    a, mnt = env.agent, env.mnt
    env.mount()
    assert a.errno_of("lchown", str(mnt / "link"), me, -1) == 0, "lchown of the user's own lower symlink"
    assert a.errno_of("rename", str(mnt / "link2"), str(mnt / "link2-moved")) == 0, "rename of a lower symlink"
    assert a.errno_of("link", str(mnt / "link3"), str(mnt / "link3-hard")) == 0, "hard link to a lower symlink"
    r = a.run(["touch", "-h", "-d", "@1000000000", str(mnt / "link4")])
    assert r.returncode == 0, f"touch -h of a lower symlink: {r.stderr}"
    assert a.stat(mnt / "link4").st_mtime == 1000000000
    got = a.errno_of("rename", str(mnt / "owndir"), str(mnt / "owndir-moved"))
    assert got in (0, errno.EXDEV), f"rename of a lower dir holding a symlink: {errno.errorcode.get(got)}"
    moved = "owndir-moved" if got == 0 else "owndir"
    assert a.call("readlink", str(mnt / moved / "link")) == "a.txt"
    for rel, target in (("link", "own.txt"), ("link2-moved", "own.txt"), ("link3-hard", "own.txt"),
                        ("link4", "own.txt")):
        assert a.call("readlink", str(mnt / rel)) == target, rel
        assert os.readlink(env.upper / rel) == target, f"{rel} not in the upper"
    assert a.errno_of("lstat", str(mnt / "link2")) == errno.ENOENT


def test_user_copy_up_of_lower_symlinks(plain):
    _copy_up_symlinks(plain, plain.user.uid)


def test_userns_copy_up_of_lower_symlinks(userns):
    _copy_up_symlinks(userns, 0)


def test_user_chown_to_another_user_is_eperm(plain):
    a, mnt = plain.agent, plain.mnt
    u = plain.user
    plain.mount()
    a.write(mnt / "new.txt", "x\n")
    for rel in ("own.txt", "new.txt", "owndir"):
        p = str(mnt / rel)
        assert a.errno_of("chown", p, 0, -1) == errno.EPERM, rel
        assert a.errno_of("chown", p, 12345, 12345) == errno.EPERM, rel
        assert a.errno_of("chown", p, -1, 0) == errno.EPERM, rel
        assert a.errno_of("chown", p, u.uid, u.gid) == 0, rel  # to oneself: allowed
        st = a.stat(p)
        assert (st.st_uid, st.st_gid) == (u.uid, u.gid), rel
    assert a.errno_of("chown", str(mnt / "rootfile"), u.uid, u.gid) == errno.EPERM
    assert os.lstat(plain.bottom / "rootfile").st_uid == 0


@pytest.mark.parametrize("opts, shown", [(("squash_to_root",), (0, 0)),
                                          (("squash_to_uid=1234", "squash_to_gid=4321"), (1234, 4321))],
                         ids=["squash_to_root", "squash_to_uid-gid"])
def test_squash_shows_every_file_with_one_owner(plain, opts, shown):
    a, mnt = plain.agent, plain.mnt
    m = plain.mount()
    a.write(mnt / "new.txt", "x\n")  # an upper file of the user's
    # (with everything shown as another's, the kernel lets the user write nowhere)
    plain.remount(m, *opts)
    for rel in (".", "own.txt", "owndir", "owndir/a.txt", "bottom.txt", "rootfile", "rootdir", "sub.txt",
                "new.txt"):
        st = a.stat(mnt / rel)
        assert (st.st_uid, st.st_gid) == shown, f"{rel}: shown as {st.st_uid}:{st.st_gid}, not {shown}"
    real = os.lstat(plain.upper / "new.txt")
    assert (real.st_uid, real.st_gid) == (plain.user.uid, plain.user.gid)


@pytest.mark.parametrize("lead", ["", ":"], ids=["plain", "leading-colon"])
def test_uidmapping_as_fuse_overlayfs_defines_it(plain, lead):
    """`uidmapping=C:H:N[:C:H:N...]`: an id C+i on disk (in a layer, as an image
    stores it) is shown as the host id H+i; an id on disk outside every C range
    is shown as 65534. (fuse-overlayfs 1.10: `uidmapping=0:1000:1` shows a
    root-owned lower file as 1000 and a file of 1000 as 65534; podman passes
    `uidmapping=:0:300000:65536` for a container whose root is host 300000.)"""
    a, mnt = plain.agent, plain.mnt
    u = plain.user
    sub, subg = u.subuid[0], u.subgid[0]
    m = plain.mount()
    a.write(mnt / "new.txt", "x\n")  # an upper file of the user's
    own = ("own.txt", "owndir", "bottom.txt", "new.txt")
    roots = ("rootfile", "rootdir", "rootdir/r.txt")

    def shown(rels):
        return {rel: (a.stat(mnt / rel).st_uid, a.stat(mnt / rel).st_gid) for rel in rels}

    # the user's own ids on disk are container root; 1.. are its subordinate ids
    m = plain.remount(m, f"uidmapping={lead}{u.uid}:0:1:{sub}:1:65536",
                      f"gidmapping={lead}{u.gid}:0:1:{subg}:1:65536")
    assert shown(own) == {rel: (0, 0) for rel in own}, "disk id C must show as H"
    assert shown(roots) == {rel: (OVERFLOW, OVERFLOW) for rel in roots}, "ids outside every C range"
    assert shown(["sub.txt"]) == {"sub.txt": (5, 5)}, "the second triple"
    # disk root shows as the user: the way an image extracted by root is shown to its owner
    plain.remount(m, f"uidmapping={lead}0:{u.uid}:1", f"gidmapping={lead}0:{u.gid}:1")
    assert shown(roots) == {rel: (u.uid, u.gid) for rel in roots}, "disk id 0 must show as the user"
    assert shown(own + ("sub.txt",)) == {rel: (OVERFLOW, OVERFLOW) for rel in own + ("sub.txt",)}
    real = os.lstat(plain.upper / "new.txt")
    assert (real.st_uid, real.st_gid) == (u.uid, u.gid), "a mount option changed a file on disk"


def test_xattr_permissions_2_keeps_mode_and_owner_in_override_stat(plain):
    a, mnt = plain.agent, plain.mnt
    u = plain.user
    m = plain.mount("xattr_permissions=2")
    a.call("chmod", str(mnt / "own.txt"), 0o600)
    a.call("chown", str(mnt / "own.txt"), u.uid, u.gid)
    a.write(mnt / "new.txt", "x\n")
    a.call("chmod", str(mnt / "new.txt"), 0o751)
    a.call("chmod", str(mnt / "owndir"), 0o700)

    def check(rel, kind, mode):
        st = a.stat(mnt / rel)
        assert stat.S_IFMT(st.st_mode) == kind and stat.S_IMODE(st.st_mode) == mode, \
            f"{rel}: stat shows {st.st_mode:o}, expected mode {mode:o}"
        assert (st.st_uid, st.st_gid) == (u.uid, u.gid), rel
        value = os.getxattr(plain.upper / rel, OVERRIDE_XATTR, follow_symlinks=False)
        uid, gid, omode, rest = _parse_override(value)
        assert (uid, gid, stat.S_IMODE(omode)) == (u.uid, u.gid, mode), f"{rel}: override_stat {value!r}"
        if kind == stat.S_IFDIR:
            assert rest in ([], ["dir"]), f"{rel}: override_stat {value!r}"
        else:
            assert rest in ([], ["file"]), f"{rel}: override_stat {value!r}"
        # the override is the daemon's business: hidden through the mount
        assert OVERRIDE_XATTR not in a.call("listxattr", str(mnt / rel))

    check("own.txt", stat.S_IFREG, 0o600)
    check("new.txt", stat.S_IFREG, 0o751)
    check("owndir", stat.S_IFDIR, 0o700)
    assert a.read(mnt / "own.txt") == "own\n"
    plain.remount(m, "xattr_permissions=2")  # kept on disk, read again by a new daemon
    check("own.txt", stat.S_IFREG, 0o600)
    check("owndir", stat.S_IFDIR, 0o700)


@pytest.mark.parametrize("value, kind, mode, ids, rdev", [
    ("1000:1000:0640:file", stat.S_IFREG, 0o640, (1000, 1000), 0),
    ("0:0:0700:dir", stat.S_IFDIR, 0o700, (0, 0), 0),
    ("0:0:0666:char-1-3", stat.S_IFCHR, 0o666, (0, 0), os.makedev(1, 3)),
    ("0:0:0640:block-7-2", stat.S_IFBLK, 0o640, (0, 0), os.makedev(7, 2)),
    ("0:0:0644:pipe", stat.S_IFIFO, 0o644, (0, 0), 0),
    ("5:6:04755", stat.S_IFREG, 0o4755, (5, 6), 0),  # no type: the real file's
    ("0:0:100600", stat.S_IFREG, 0o600, (0, 0), 0),  # the type in the mode bits, as fuse-overlayfs 1.10 writes
], ids=["file", "dir", "char", "block", "pipe", "no-type", "mode-with-type"])
def test_xattr_permissions_2_reads_override_stat_as_containers_storage_writes_it(plain, value, kind, mode,
                                                                                 ids, rdev):
    """A layer extracted by containers/storage without the right to chown keeps
    owner, mode and type in user.containers.override_stat ("uid:gid:0mode:type");
    fsd must show what it records."""
    a, mnt = plain.agent, plain.mnt
    real = plain.top / "entry"
    if kind == stat.S_IFDIR:
        plain.box.dir("layers/top/entry")
    else:
        plain.box.file("layers/top/entry", "")
    os.setxattr(real, OVERRIDE_XATTR, value.encode())
    plain.mount("xattr_permissions=2")
    st = a.stat(mnt / "entry")
    got = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid), st.st_rdev)
    assert got == (kind, mode, ids, rdev), f"override_stat {value!r} shown as {oct(st.st_mode)} " \
                                           f"{st.st_uid}:{st.st_gid} rdev {st.st_rdev}"
    assert OVERRIDE_XATTR not in a.call("listxattr", str(mnt / "entry"))


# -- root of a user namespace ----------------------------------------------------------------------

def test_userns_root_mounts_with_kernel_whiteouts_and_user_xattrs(userns):
    a, mnt = userns.agent, userns.mnt
    assert a.call("getuid") == 0
    form = userns.expected_whiteout()
    userns.mount()
    assert sorted(a.call("listdir", str(mnt))) == ["bottom.txt", "link", "link2", "link3", "link4", "own.txt", "owndir", "rootdir", "rootfile", "sub.txt"]
    st = a.stat(mnt / "own.txt")
    assert (st.st_uid, st.st_gid) == (0, 0), "the user's files are root's in its namespace"
    st = a.stat(mnt / "rootfile")
    assert (st.st_uid, st.st_gid) == (OVERFLOW, OVERFLOW), "host root is unmapped in the namespace"
    a.write(mnt / "new.txt", "new\n")
    a.write(mnt / "own.txt", "more\n", append=True)
    a.call("unlink", str(mnt / "bottom.txt"))
    for name in ("a.txt", "b.txt", "link"):
        a.call("unlink", str(mnt / "owndir" / name))
    a.call("rmdir", str(mnt / "owndir"))
    a.call("mkdir", str(mnt / "owndir"), 0o755)
    assert sorted(a.call("listdir", str(mnt))) == ["link", "link2", "link3", "link4", "new.txt", "own.txt", "owndir",
                                                   "rootdir", "rootfile", "sub.txt"]
    assert a.call("listdir", str(mnt / "owndir")) == []
    assert a.read(mnt / "own.txt") == "own\nmore\n"
    _assert_whiteout(userns.upper, "bottom.txt", form)
    assert os.getxattr(userns.upper / "owndir", "user.overlay.opaque") == b"y"
    trusted = {k: v for k, v in _upper_xattrs(userns.upper).items() if any(n.startswith("trusted.") for n in v)}
    assert not trusted, f"trusted.* is not available in a user namespace, yet written: {trusted}"
    real = os.lstat(userns.upper / "new.txt")
    assert (real.st_uid, real.st_gid) == (userns.user.uid, userns.user.gid)


def test_userns_root_chowns_to_mapped_ids(userns):
    a, mnt = userns.agent, userns.mnt
    (subuid, _), (subgid, _) = userns.user.subuid, userns.user.subgid
    userns.mount()
    a.write(mnt / "new.txt", "x\n")
    a.call("chown", str(mnt / "new.txt"), 1000, 1001)
    a.call("chown", str(mnt / "own.txt"), 1000, 1001)  # copy-up, then chown
    for rel in ("new.txt", "own.txt"):
        st = a.stat(mnt / rel)
        assert (st.st_uid, st.st_gid) == (1000, 1001), rel
        real = os.lstat(userns.upper / rel)
        assert (real.st_uid, real.st_gid) == (subuid + 999, subgid + 1000), \
            f"{rel}: namespace ids 1000:1001 stored as {real.st_uid}:{real.st_gid}"
    assert a.errno_of("chown", str(mnt / "new.txt"), 70000, -1) == errno.EINVAL  # unmapped id


def test_userns_xattr_permissions_2_chown_goes_to_override_stat(userns):
    a, mnt = userns.agent, userns.mnt
    u = userns.user
    m = userns.mount("xattr_permissions=2")
    a.write(mnt / "new.txt", "x\n")
    a.call("chown", str(mnt / "new.txt"), 1000, 1001)
    a.call("chown", str(mnt / "own.txt"), 1000, 1001)
    a.call("chmod", str(mnt / "own.txt"), 0o640)
    for rel, mode in (("new.txt", None), ("own.txt", 0o640)):
        st = a.stat(mnt / rel)
        assert (st.st_uid, st.st_gid) == (1000, 1001), f"{rel}: stat shows {st.st_uid}:{st.st_gid}"
        if mode is not None:
            assert stat.S_IMODE(st.st_mode) == mode
        value = os.getxattr(userns.upper / rel, OVERRIDE_XATTR, follow_symlinks=False)
        uid, gid, omode, _ = _parse_override(value)
        assert (uid, gid) == (1000, 1001), f"{rel}: override_stat {value!r}"
        if mode is not None:
            assert stat.S_IMODE(omode) == mode, f"{rel}: override_stat {value!r}"
        real = os.lstat(userns.upper / rel)
        assert (real.st_uid, real.st_gid) == (u.uid, u.gid), \
            f"{rel}: with xattr_permissions the real file keeps the daemon's owner"
    userns.remount(m, "xattr_permissions=2")
    st = a.stat(mnt / "own.txt")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o640)


def test_userns_squash_to_root_chown_succeeds_and_still_shows_root(userns):
    """What chown does on disk under a squash is not the contract (fuse-overlayfs
    chowns the real file, fsd leaves it); that it succeeds and shows root is."""
    a, mnt = userns.agent, userns.mnt
    userns.mount("squash_to_root")
    a.write(mnt / "new.txt", "x\n")
    for rel in ("new.txt", "own.txt", "rootfile"):
        assert a.errno_of("chown", str(mnt / rel), 1000, 1000) == 0, rel
        st = a.stat(mnt / rel)
        assert (st.st_uid, st.st_gid) == (0, 0), f"{rel}: squashed, yet shown as {st.st_uid}:{st.st_gid}"
    assert os.lstat(userns.bottom / "rootfile").st_uid == 0, "the lower changed"


def test_userns_ids_outside_uidmapping_are_stored_as_overflow(userns):
    """podman creates /etc/mtab and the bind-mount targets as the host's root
    through a mount whose uidmapping does not cover it; fuse-overlayfs stores
    such an id as the overflow id instead of refusing the call."""
    a, mnt = userns.agent, userns.mnt
    userns.mount("uidmapping=0:1:5000", "gidmapping=0:1:5000")  # disk 0.. shows as 1..: 0 is outside
    assert a.call("getuid") == 0
    assert a.errno_of("symlink", "/proc/mounts", str(mnt / "mtab")) == 0, "symlink by an unmapped id"
    assert a.errno_of("mkdir", str(mnt / "dir"), 0o755) == 0, "mkdir by an unmapped id"
    a.write(mnt / "file", "x\n")
    assert a.errno_of("chown", str(mnt / "file"), 0, 0) == 0, "chown to an unmapped id"
    for rel in ("mtab", "dir", "file"):
        st = a.stat(mnt / rel)
        assert (st.st_uid, st.st_gid) == (OVERFLOW, OVERFLOW), f"{rel}: shown as {st.st_uid}:{st.st_gid}"


def _falls_back_from_passthrough(env: Env) -> None:
    """An unprivileged daemon may not register backing files (the kernel wants
    CAP_SYS_ADMIN of the initial namespace): fsd serves reads and writes itself."""
    a, mnt = env.agent, env.mnt
    m = env.mount("upper_passthrough", "debug")
    a.write(mnt / "new.txt", "fresh\n")
    assert a.read(mnt / "new.txt") == "fresh\n"
    assert a.read(mnt / "own.txt") == "own\n"
    a.unmount(m)
    assert (env.upper / "new.txt").read_text() == "fresh\n"
    log = m.log.read_text(errors="replace")
    assert "DEBUG read(" in log and "DEBUG write(" in log
    if tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2]) >= (6, 9):
        # granted at INIT, refused at the first backing file (older: never granted)
        assert "passthrough off: the kernel refused a backing file" in log


def test_user_mount_falls_back_from_passthrough(plain):
    _falls_back_from_passthrough(plain)


def test_userns_mount_falls_back_from_passthrough(userns):
    _falls_back_from_passthrough(userns)
