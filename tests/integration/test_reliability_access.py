"""What an unprivileged user may do on a mount made by root with allow_other:
exactly what the permission bits and ACLs allow - the kernel overlay on the
same layers decides. Reading others' 0600 files, writing read-only files,
chmod/chown/utimes of others' files, changes in others' directories and in a
sticky directory; set-id bits cleared when a non-owner writes or truncates (in
the view and in the upper on disk), setgid without group-exec only when the
user is not in the file's group (the 6.x rule, which FUSE's own lacks); POSIX
ACLs that grant or deny more than the mode bits. Every check runs on the lower
files, then again after root copied them all up. And a rootless mount without
allow_other is closed to other users.

The user is the test user of tests/support/rootless.py (made by its set-up);
OTHER is a uid with no account, owner of "others'" files.
"""

from __future__ import annotations

import os
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from support import mounts, rootless
from support.convert import convert_layers
from support.faults import posix_acl, run_as
from support.layergen import make_layers, write

OTHER = 4242
SUPP = 4343  # a group with no account, the user's one supplementary group here
KERNEL_OPTS = ("redirect_dir=off", "index=off", "metacopy=off")
ACL = "system.posix_acl_access"


def _file(layer: Path, rel: str, mode: int, uid: int = 0, gid: int = 0, text: str = "data") -> Path:
    p = write(layer, rel, text)
    os.chown(p, uid, gid)
    os.chmod(p, mode)
    return p


def _dir(layer: Path, rel: str, mode: int, uid: int = 0, gid: int = 0) -> Path:
    p = layer / rel
    p.mkdir(parents=True, exist_ok=True)
    os.chown(p, uid, gid)
    os.chmod(p, mode)
    return p


def _stack(root: Path, user: rootless.User) -> list[Path]:
    top, bottom = make_layers(root, 2)
    for layer in (top, bottom):
        os.chmod(layer, 0o755)
    _file(bottom, "secret", 0o600, text="root's secret")
    _file(bottom, "others-secret", 0o600, OTHER, OTHER, "other's secret")
    _file(bottom, "readonly", 0o644)
    _file(top, "others-file", 0o644, OTHER, OTHER)
    _file(bottom, "world-writable", 0o666)
    _file(bottom, "group-writable", 0o664, OTHER, user.gid)
    _file(bottom, "suid", 0o4777, OTHER, OTHER)
    _file(top, "sgid", 0o2777, OTHER, OTHER)
    _file(bottom, "sgid-no-gx", 0o2767, OTHER, OTHER)  # no group exec: dropped for a non-member
    _file(bottom, "sgid-no-gx-own-group", 0o2767, OTHER, user.gid)  # kept for a member
    _file(bottom, "sgid-no-gx-supp-group", 0o2767, OTHER, SUPP)  # kept for a member
    _file(bottom, "sgid-no-gx-truncated", 0o2767, OTHER, OTHER)
    _file(bottom, "sgid-no-gx-otrunc", 0o2767, OTHER, OTHER)
    _file(bottom, "suid-otrunc", 0o4777, OTHER, OTHER)
    _file(top, "sgid-otrunc", 0o2777, OTHER, OTHER)
    _file(bottom, "suid-own-group", 0o4775, OTHER, user.gid)
    _dir(bottom, "root-dir", 0o755)
    _file(bottom, "root-dir/inside", 0o666)
    _dir(bottom, "open-dir", 0o777)
    _file(bottom, "open-dir/others", 0o644, OTHER, OTHER)
    _dir(top, "sticky", 0o1777)
    _file(top, "sticky/others", 0o666, OTHER, OTHER)
    _dir(bottom, "sticky", 0o1777)
    _file(bottom, "sticky/others-below", 0o666, OTHER, OTHER)
    _dir(bottom, "closed-dir", 0o700, OTHER, OTHER)
    _file(bottom, "closed-dir/file", 0o666, OTHER, OTHER)
    # ACLs: a named entry denying what "other" allows, one granting what the bits do not
    p = _file(bottom, "acl-deny", 0o644)
    os.setxattr(p, ACL, posix_acl(6, 4, 4, users=[(user.uid, 0)], mask=4))
    p = _file(bottom, "acl-allow", 0o640)
    os.setxattr(p, ACL, posix_acl(6, 0, 0, users=[(user.uid, 6)], mask=6))
    os.chmod(p, 0o660)
    d = _dir(bottom, "acl-dir", 0o750)
    os.setxattr(d, ACL, posix_acl(7, 0, 0, users=[(user.uid, 5)], mask=5))
    _file(bottom, "acl-dir/file", 0o644)
    return [top, bottom]


def _calls(user: rootless.User) -> list[tuple]:
    return [
        ("read", "secret"), ("read", "others-secret"), ("read", "readonly"), ("read", "closed-dir/file"),
        ("write", "readonly"), ("append", "readonly"), ("trunc", "readonly"), ("truncate_path", "readonly", 1),
        ("write", "others-file"), ("trunc", "secret"),
        ("chmod", "others-file", 0o666), ("chmod", "readonly", 0o777), ("chown", "others-file", user.uid, user.gid),
        ("chown", "world-writable", user.uid, -1), ("utime", "others-file", 10**18), ("utime_now", "readonly"),
        ("utime_now", "world-writable"), ("setxattr", "others-file", "user.x", "1"),
        ("setxattr", "world-writable", "user.x", "1"), ("getxattr", "world-writable", "user.x"),
        ("write", "world-writable", "user wrote"), ("write", "group-writable", "group wrote"),
        ("write", "suid", "user wrote"), ("stat", "suid"), ("write", "sgid", "user wrote"), ("stat", "sgid"),
        ("write", "sgid-no-gx", "user wrote"), ("stat", "sgid-no-gx"),
        ("write", "sgid-no-gx-own-group", "user wrote"), ("stat", "sgid-no-gx-own-group"),
        ("truncate_path", "sgid-no-gx-supp-group", 1), ("write", "sgid-no-gx-supp-group", "user wrote"),
        ("stat", "sgid-no-gx-supp-group"),
        ("truncate_path", "sgid-no-gx-truncated", 1), ("stat", "sgid-no-gx-truncated"),
        # O_TRUNC with nothing written: the truncate alone removes set-id bits
        ("trunc", "sgid-no-gx-otrunc", ""), ("stat", "sgid-no-gx-otrunc"),
        ("trunc", "suid-otrunc", ""), ("stat", "suid-otrunc"), ("trunc", "sgid-otrunc", ""), ("stat", "sgid-otrunc"),
        ("write", "suid-own-group", "user wrote"), ("stat", "suid-own-group"),
        ("truncate_path", "world-writable", 3), ("stat", "world-writable"),
        ("unlink", "root-dir/inside"), ("rename", "root-dir/inside", "root-dir/moved"), ("create", "root-dir/new"),
        ("mkdir", "root-dir/sub"), ("write", "root-dir/inside", "ok, the file is 0666"),
        ("create", "open-dir/mine"), ("chmod", "open-dir/mine", 0o600), ("chown", "open-dir/mine", OTHER, -1),
        ("chown", "open-dir/mine", -1, OTHER), ("chown", "open-dir/mine", -1, user.gid),
        ("unlink", "open-dir/others"), ("mkdir", "open-dir/d"),
        ("unlink", "sticky/others"), ("unlink", "sticky/others-below"), ("rename", "sticky/others", "sticky/x"),
        ("write", "sticky/others", "writable"), ("create", "sticky/mine"), ("unlink", "sticky/mine"),
        ("listdir", "closed-dir"), ("create", "closed-dir/new"),
        ("read", "acl-deny"), ("read", "acl-allow"), ("write", "acl-allow", "acl"), ("listdir", "acl-dir"),
        ("read", "acl-dir/file"),
        ("access", "secret", os.R_OK), ("access", "readonly", os.W_OK), ("access", "acl-deny", os.R_OK),
        ("access", "acl-allow", os.W_OK),
    ]


def _copy_everything_up(root: Path):
    """As root: copy every lower object up (a user xattr changes nothing users check)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames + dirnames:
            os.setxattr(os.path.join(dirpath, n), "user.copied-up", b"1", follow_symlinks=False)


def _modes(upper: Path, names) -> dict:
    out = {}
    for n in names:
        try:
            out[n] = f"{os.lstat(upper / n).st_mode & 0o7777:o}"
        except FileNotFoundError:
            out[n] = "absent"
    return out


@pytest.mark.parametrize("phase", ["lower", "copied up"])
def test_an_unprivileged_user_can_do_what_the_bits_allow(tmp_path, mount_fsd, mount_kernel_overlay, user, phase):
    layers = _stack(tmp_path / "layers", user)
    roots = {}
    uppers = {}
    for name in ("kernel", "fsd"):
        upper, work = tmp_path / f"{name}-upper", tmp_path / f"{name}-work"
        upper.mkdir()
        work.mkdir()
        uppers[name] = upper
    roots["kernel"] = mount_kernel_overlay(convert_layers(layers, tmp_path / "k"), uppers["kernel"],
                                           tmp_path / "kernel-work", KERNEL_OPTS)
    roots["fsd"] = mount_fsd(layers, uppers["fsd"], tmp_path / "fsd-work", ["allow_other"]).mnt
    if phase == "copied up":
        for r in roots.values():
            _copy_everything_up(r)
    calls = _calls(user)
    got = {name: run_as(user.uid, user.gid, root, calls, groups=[SUPP]) for name, root in roots.items()}
    bad = [f"{c}: kernel {k!r}, fsd {f!r}" for c, k, f in zip(calls, got["kernel"], got["fsd"]) if k != f]
    assert not bad, f"user {user.name} ({user.uid}) on files {phase} - results differ:\n" + "\n".join(bad)
    # set-id bits as the upper stores them
    idfiles = ("suid", "sgid", "sgid-no-gx", "sgid-no-gx-own-group", "sgid-no-gx-supp-group", "sgid-no-gx-truncated",
               "sgid-no-gx-otrunc", "suid-otrunc", "sgid-otrunc", "suid-own-group")
    kmodes, fmodes = _modes(uppers["kernel"], idfiles), _modes(uppers["fsd"], idfiles)
    assert kmodes == fmodes, f"set-id bits in the upper after a non-owner's write: kernel {kmodes}, fsd {fmodes}"
    assert not int(fmodes["suid"], 8) & stat.S_ISUID, fmodes
    assert not int(fmodes["sgid-no-gx"], 8) & stat.S_ISGID, fmodes
    assert int(fmodes["sgid-no-gx-own-group"], 8) & int(fmodes["sgid-no-gx-supp-group"], 8) & stat.S_ISGID, fmodes


# -- a rootless mount without allow_other -------------------------------------------------------------

def test_a_rootless_mount_is_closed_to_other_users(tmp_path, fuse_deadline, fsd_log):
    u, reason = rootless.fsd_user()
    if reason:
        pytest.skip(reason)
    box = rootless.Sandbox(u)
    agent = None
    try:
        lower = box.dir("lower")
        box.file("lower/f", "the user's file", mode=0o644)
        upper, work, mnt = box.dir("upper"), box.dir("work"), box.dir("mnt")
        agent = rootless.Agent(box, deadline=fuse_deadline)
        m = agent.mount_fsd([lower], upper, work, (), mnt)
        assert agent.read(mnt / "f") == "the user's file"

        def as_other(argv, uid=None):
            cmd = ["nsenter", "-t", str(agent.pid), "-m", "--"]
            if uid is not None:
                cmd += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
            return subprocess.run(cmd + argv, capture_output=True, text=True, timeout=20)
        for uid in (OTHER, None):  # another user, and root: FUSE lets only the mounting user in
            r = as_other(["stat", "-c", "%n", str(mnt / "f")], uid)
            assert r.returncode != 0 and "Permission denied" in r.stderr, \
                f"{'root' if uid is None else f'uid {uid}'} reached a mount made without allow_other: " \
                f"{r.stdout}{r.stderr}"
            r = as_other(["ls", str(mnt)], uid)
            assert r.returncode != 0 and "Permission denied" in r.stderr, r.stdout + r.stderr
        agent.unmount(m)
    finally:
        problems = agent.close() if agent is not None else []
        if agent is not None:
            agent.collect_logs(fsd_log)
        problems += box.cleanup()
    assert not problems, problems
    assert not mounts.mounts_at(mnt)


# -- set-id bits and capabilities after ACL changes and fallocate ------------------------------------

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10
CAPS = "security.capability"
# vfs_cap_data revision 2: CAP_NET_BIND_SERVICE permitted and effective
CAP_VALUE = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


def _privs_stack(root: Path, user: rootless.User) -> list[Path]:
    (layer,) = make_layers(root, 1)
    os.chmod(layer, 0o755)
    # the owner sets an ACL: set-group-ID goes unless the owner is in the file's group
    _file(layer, "acl-sgid-non-member", 0o2764, user.uid, OTHER)
    _file(layer, "acl-sgid-member", 0o2764, user.uid, user.gid)
    # fallocate by a non-member writer removes set-id bits as a write does
    for name in ("falloc-sgid", "punch-sgid", "zero-sgid", "falloc-sgid-member", "falloc-suid"):
        mode = 0o4766 if name.endswith("suid") else 0o2766
        _file(layer, name, mode, OTHER, user.gid if name.endswith("member") else OTHER, "x" * 8192)
    # a write removes a file capability, whoever writes
    for name in ("cap-user-write", "cap-root-write", "cap-user-truncate"):
        p = _file(layer, name, 0o666, OTHER, OTHER)
        os.setxattr(p, CAPS, CAP_VALUE)
    return [layer]


ACL_CALLS = [
    ("setxattr_bytes", "acl-sgid-non-member", ACL, posix_acl(6, 6, 4).hex()), ("stat", "acl-sgid-non-member"),
    ("setxattr_bytes", "acl-sgid-member", ACL, posix_acl(6, 6, 4).hex()), ("stat", "acl-sgid-member"),
    ("fallocate", "falloc-sgid", 0, 0, 16384), ("stat", "falloc-sgid"),
    ("fallocate", "punch-sgid", FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096), ("stat", "punch-sgid"),
    ("fallocate", "zero-sgid", FALLOC_FL_ZERO_RANGE, 0, 4096), ("stat", "zero-sgid"),
    ("fallocate", "falloc-sgid-member", 0, 0, 16384), ("stat", "falloc-sgid-member"),
    ("fallocate", "falloc-suid", 0, 0, 16384), ("stat", "falloc-suid"),
]
CAPS_CALLS = [
    ("write", "cap-user-write", "user wrote"), ("getxattr_bytes", "cap-user-write", CAPS),
    ("truncate_path", "cap-user-truncate", 1), ("getxattr_bytes", "cap-user-truncate", CAPS),
    ("getxattr_bytes", "cap-root-write", CAPS),
]


def _compare_privs(tmp_path, mount_fsd, mount_kernel_overlay, user, phase, calls):
    """calls run by the user on the kernel overlay and on fsd (the same layers,
    copied up first in phase "copied up", cap-root-write written by root):
    the results, and the modes in each upper of the files stat'ed."""
    layers = _privs_stack(tmp_path / "layers", user)
    roots, uppers = {}, {}
    for name in ("kernel", "fsd"):
        uppers[name] = tmp_path / f"{name}-upper"
        uppers[name].mkdir()
        (tmp_path / f"{name}-work").mkdir()
    roots["kernel"] = mount_kernel_overlay(convert_layers(layers, tmp_path / "k"), uppers["kernel"],
                                           tmp_path / "kernel-work", KERNEL_OPTS)
    roots["fsd"] = mount_fsd(layers, uppers["fsd"], tmp_path / "fsd-work", ["allow_other"]).mnt
    for r in roots.values():
        if phase == "copied up":
            _copy_everything_up(r)
        with open(r / "cap-root-write", "a") as f:
            f.write("root wrote")
    got = {name: run_as(user.uid, user.gid, root, calls) for name, root in roots.items()}
    bad = [f"{c[:2]}: kernel {k!r}, fsd {f!r}" for c, k, f in zip(calls, got["kernel"], got["fsd"]) if k != f]
    assert not bad, f"user {user.name} ({user.uid}) on files {phase} - results differ:\n" + "\n".join(bad)
    names = [c[1] for c in calls if c[0] == "stat"]
    kmodes, fmodes = _modes(uppers["kernel"], names), _modes(uppers["fsd"], names)
    assert kmodes == fmodes, f"set-id bits in the upper: kernel {kmodes}, fsd {fmodes}"
    return got["fsd"], fmodes


@pytest.mark.parametrize("phase", ["lower", "copied up"])
def test_set_id_bits_go_as_on_the_kernel_overlay_after_an_acl_or_fallocate(tmp_path, mount_fsd,
                                                                          mount_kernel_overlay, user, phase):
    """Set-group-ID after a non-member owner sets an access ACL (the kernel
    passes FUSE_SETXATTR_ACL_KILL_SGID), set-id bits after fallocate,
    punch-hole and zero-range by a non-member."""
    _, fmodes = _compare_privs(tmp_path, mount_fsd, mount_kernel_overlay, user, phase, ACL_CALLS)
    # what the kernel overlay does, stated: the test must not pass on two wrong answers
    assert not int(fmodes["acl-sgid-non-member"], 8) & stat.S_ISGID, fmodes
    assert int(fmodes["acl-sgid-member"], 8) & stat.S_ISGID, fmodes
    assert not int(fmodes["punch-sgid"], 8) & stat.S_ISGID, fmodes
    assert int(fmodes["falloc-sgid-member"], 8) & stat.S_ISGID, fmodes


@pytest.mark.parametrize("phase", ["lower", "copied up"])
def test_a_file_capability_goes_with_a_write_as_on_the_kernel_overlay(tmp_path, mount_fsd, mount_kernel_overlay,
                                                                      user, phase):
    """security.capability after a write or truncate, by the user or root, of
    a lower file (copied up by that change) or of one copied up before."""
    got, _ = _compare_privs(tmp_path, mount_fsd, mount_kernel_overlay, user, phase, CAPS_CALLS)
    assert got[CAPS_CALLS.index(("getxattr_bytes", "cap-user-write", CAPS))] == "ENODATA"
    assert got[CAPS_CALLS.index(("getxattr_bytes", "cap-root-write", CAPS))] == "ENODATA"
