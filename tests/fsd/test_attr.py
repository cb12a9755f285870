"""Attributes and xattrs (fsd/attr.py, fsd/idmap.py), in-process: chmod,
chown, utimens, truncate, xattrs, set-id removal, access, statfs, and owners
as the id-mapping options show and store them."""

from __future__ import annotations

import errno
import os
import stat

import pyfuse3
import pytest
from harness import Fields, fails, holds_no_data

from support.layergen import write

OLD = (1_000_000_000 * 10**9, 1_100_000_000 * 10**9)


async def test_chmod_copies_up_and_leaves_the_lower_alone(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "x", mode=0o644)
    (bottom / "d").mkdir(mode=0o755)
    fs = await overlay.mount()
    attr = await fs.chmod("f", 0o600)
    assert stat.S_IMODE(attr.st_mode) == 0o600
    await fs.chmod("d", 0o700)
    assert stat.S_IMODE((await fs.stat("d")).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(overlay.upper / "f").st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(bottom / "f").st_mode) == 0o644
    assert (overlay.upper / "f").read_bytes() == b"x"


async def test_chown_changes_the_owner_on_the_upper(overlay, needs_root):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "x")
    fs = await overlay.mount()
    attr = await fs.chown("f", 1234, 5678)
    assert (attr.st_uid, attr.st_gid) == (1234, 5678)
    st = os.lstat(overlay.upper / "f")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    await fs.chown("f", -1, 42)
    assert (await fs.stat("f")).st_uid == 1234
    assert (await fs.stat("f")).st_gid == 42


async def test_utimens_sets_both_times(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "x")
    fs = await overlay.mount()
    attr = await fs.utimens("f", *OLD)
    assert (attr.st_atime_ns, attr.st_mtime_ns) == OLD
    st = os.lstat(overlay.upper / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == OLD
    assert os.lstat(bottom / "f").st_mtime_ns != OLD[1]


async def test_a_time_not_given_stays_as_it_is(overlay):
    """utimensat with UTIME_OMIT for one of the times (tar gives the mtime
    only), by name and through the descriptor of a file with no name left."""
    overlay.lowers(1)
    fs = await overlay.mount()
    await fs.create("f", b"x")
    await fs.utimens("f", *OLD)
    mtime_only = await fs.setattr("f", Fields(update_mtime=True), st_mtime_ns=5 * 10**18)
    assert (mtime_only.st_atime_ns, mtime_only.st_mtime_ns) == (OLD[0], 5 * 10**18)
    atime_only = await fs.setattr("f", Fields(update_atime=True), st_atime_ns=7 * 10**17 + 3)
    assert (atime_only.st_atime_ns, atime_only.st_mtime_ns) == (7 * 10**17 + 3, 5 * 10**18)
    ino = await fs.ino("f")
    fh = (await fs.ops.open(ino, os.O_WRONLY, fs.ctx)).fh
    await fs.unlink("f")
    attr = pyfuse3.EntryAttributes()
    attr.st_mtime_ns = OLD[1]
    nameless = await fs.ops.setattr(ino, attr, Fields(update_mtime=True), fh, fs.ctx)
    assert (nameless.st_atime_ns, nameless.st_mtime_ns) == (7 * 10**17 + 3, OLD[1])
    await fs.ops.release(fh)


async def test_truncate_keeps_what_is_below_the_new_size(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "0123456789")
    write(bottom, "g", "0123456789")
    fs = await overlay.mount()
    assert (await fs.truncate("f", 4)).st_size == 4
    assert await fs.read("f") == b"0123"
    await fs.truncate("g", 0)
    assert (overlay.upper / "g").read_bytes() == b""


async def test_a_setattr_with_no_field_changes_only_the_ctime(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "x")
    os.utime(bottom / "f", ns=OLD)
    fs = await overlay.mount()
    attr = await fs.setattr("f", Fields())
    assert (attr.st_atime_ns, attr.st_mtime_ns) == OLD


async def test_a_merged_directory_has_one_link(overlay):
    top, bottom = overlay.lowers(2)
    (top / "d" / "sub").mkdir(parents=True)
    (bottom / "d").mkdir()
    (bottom / "only" / "sub").mkdir(parents=True)
    fs = await overlay.mount()
    assert (await fs.stat("d")).st_nlink == 1
    assert (await fs.stat("only")).st_nlink == 3, "one layer: the real count"


# --- xattrs ------------------------------------------------------------------------------------

async def test_user_xattrs_are_set_read_listed_and_removed(overlay):
    (bottom,) = overlay.lowers(1)
    f = write(bottom, "f", "x")
    os.setxattr(f, "user.lower", b"1")
    fs = await overlay.mount()
    assert await fs.getxattr("f", "user.lower") == b"1"
    assert not (overlay.upper / "f").exists(), "reading copies nothing up"
    await fs.setxattr("f", "user.new", b"2")
    assert sorted(await fs.listxattr("f")) == [b"user.lower", b"user.new"]
    await fs.removexattr("f", "user.lower")
    assert await fs.listxattr("f") == [b"user.new"]
    with fails(errno.ENODATA):
        await fs.getxattr("f", "user.lower")
    assert os.listxattr(bottom / "f") == ["user.lower"]


async def test_a_lower_objects_xattrs_are_listed_once_until_it_is_copied_up(overlay, monkeypatch):
    from fsd.layer import Layer
    top, bottom = overlay.lowers(2)
    f = write(bottom, "f", "x")
    os.setxattr(f, "user.lower", b"1")
    for layer in (top, bottom):
        (layer / "d").mkdir()
    os.setxattr(top / "d", "user.top", b"t")
    os.setxattr(bottom / "d", "user.bottom", b"b")
    calls = []
    for name in ("getxattr", "listxattr"):
        real = getattr(Layer, name)
        monkeypatch.setattr(Layer, name, lambda self, *a, real=real, name=name, **kw: calls.append(name) or real(self, *a, **kw))
    fs = await overlay.mount()
    calls.clear()
    for _ in range(2):
        with fails(errno.ENODATA):
            await fs.getxattr("f", "security.capability")
        assert await fs.listxattr("f") == [b"user.lower"]
        assert await fs.getxattr("f", "user.lower") == b"1"
        assert await fs.listxattr("d") == [b"user.top"], "a merged directory's are its top layer's"
        with fails(errno.ENODATA):
            await fs.getxattr("d", "user.bottom")
    assert calls == ["listxattr", "getxattr", "listxattr", "getxattr"], "one listing per object; values read"
    await fs.chmod("f", 0o600)  # copied up: its xattrs are the upper's from now on
    os.setxattr(overlay.upper / "f", "user.upper", b"u")
    assert sorted(await fs.listxattr("f")) == [b"user.lower", b"user.upper"]
    assert await fs.getxattr("f", "user.upper") == b"u"


async def test_a_lower_that_refuses_to_list_xattrs_gives_its_own_answers(overlay, monkeypatch):
    from fsd.layer import Layer
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "x")

    def refuse(self, rel, attr=None, strict=False):
        if strict or attr is not None:
            raise OSError(errno.ENOTSUP, "no xattrs here")
        return []
    monkeypatch.setattr(Layer, "listxattr", refuse)
    monkeypatch.setattr(Layer, "getxattr", refuse)
    fs = await overlay.mount()
    with fails(errno.ENOTSUP):
        await fs.getxattr("f", "user.x")
    assert await fs.listxattr("f") == []


async def test_removing_an_absent_xattr_copies_nothing_up(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "x")
    fs = await overlay.mount()
    with fails(errno.ENODATA):
        await fs.removexattr("f", "user.none")
    assert os.listdir(overlay.upper) == []


async def test_overlay_markers_are_never_shown_or_changed(overlay):
    top, bottom = overlay.lowers(2)
    (bottom / "d").mkdir()
    (top / "d").mkdir()
    os.setxattr(top / "d", "user.overlay.opaque", b"n")
    os.setxattr(top / "d", "user.fuseoverlayfs.noise", b"x")
    os.setxattr(top / "d", "user.containers.override_stat", b"0:0:0755")
    os.setxattr(top / "d", "user.shown", b"y")
    fs = await overlay.mount()
    assert await fs.listxattr("d") == [b"user.shown"]
    with fails(errno.ENODATA):
        await fs.getxattr("d", "user.overlay.opaque")
    with fails(errno.EPERM):
        await fs.setxattr("d", "user.overlay.opaque", b"y")
    with fails(errno.EPERM):
        await fs.setxattr("d", "user.fuseoverlayfs.x", b"y")
    with fails(errno.ENODATA):
        await fs.removexattr("d", "user.overlay.opaque")


async def test_a_users_trusted_overlay_xattr_is_stored_escaped(overlay, needs_root):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "x")
    fs = await overlay.mount()
    await fs.setxattr("f", "trusted.overlay.mine", b"v")
    assert os.getxattr(overlay.upper / "f", "trusted.overlay.overlay.mine") == b"v"
    assert await fs.getxattr("f", "trusted.overlay.mine") == b"v"
    assert b"trusted.overlay.mine" in await fs.listxattr("f")


async def test_xattrs_under_metacopy_copy_only_metadata(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", b"x" * 50_000)
    fs = await overlay.mount("metacopy=on")
    await fs.setxattr("f", "user.a", b"1")
    assert holds_no_data(overlay.upper / "f")
    assert (await fs.stat("f")).st_size == 50_000
    assert await fs.read("f", 2) == b"xx"


# --- set-id bits -------------------------------------------------------------------------------

async def test_a_truncate_by_another_user_removes_set_id_bits(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "x", mode=0o6755)
    fs = await overlay.mount()
    other = fs.as_user(12345, 12345)
    await other.truncate("f", 0)
    assert stat.S_IMODE((await fs.stat("f")).st_mode) == 0o755


async def test_an_open_with_o_trunc_by_another_user_removes_set_id_bits(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "x", mode=0o6755)
    fs = await overlay.mount()
    await fs.as_user(12345, 12345).write("f", b"new", flags=os.O_WRONLY | os.O_TRUNC)
    assert stat.S_IMODE((await fs.stat("f")).st_mode) == 0o755
    assert await fs.read("f") == b"new"


async def test_setgid_without_group_exec_stays_for_a_member_of_the_group(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "member", "x", mode=0o2745)
    write(bottom, "stranger", "x", mode=0o2745)
    fs = await overlay.mount()
    group = os.lstat(bottom / "member").st_gid
    await fs.as_user(12345, 12345, groups=[group]).truncate("member", 0)
    await fs.as_user(12345, 12345).truncate("stranger", 0)
    assert stat.S_IMODE((await fs.stat("member")).st_mode) == 0o2745
    assert stat.S_IMODE((await fs.stat("stranger")).st_mode) == 0o745


async def test_access_checks_owner_group_and_others(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "x", mode=0o640)
    fs = await overlay.mount()
    st = os.lstat(bottom / "f")
    ino = await fs.ino("f")
    member = fs.as_user(12345, 12345, groups=[st.st_gid])
    stranger = fs.as_user(12345, 12345)
    assert await fs.ops.access(ino, os.R_OK | os.W_OK, fs.as_user(st.st_uid, 1).ctx) is True
    assert await member.ops.access(ino, os.R_OK, member.ctx) is True
    assert await member.ops.access(ino, os.W_OK, member.ctx) is False
    assert await stranger.ops.access(ino, os.R_OK, stranger.ctx) is False


# --- owners as mapped ---------------------------------------------------------------------------

async def test_uidmapping_shows_disk_ids_shifted_and_others_as_overflow(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "x")
    me, group = os.getuid(), os.getgid()
    fs = await overlay.mount(f"uidmapping={me}:100000:1", f"gidmapping={group}:200000:1")
    attr = await fs.stat("f")
    assert (attr.st_uid, attr.st_gid) == (100000, 200000)
    fs = await overlay.remount(fs, "uidmapping=99999:100000:1", "gidmapping=99999:200000:1")
    attr = await fs.stat("f")
    assert (attr.st_uid, attr.st_gid) == (65534, 65534)


async def test_uidmapping_stores_new_objects_as_disk_ids(overlay, needs_root):
    overlay.lowers(1)
    fs = await overlay.mount("uidmapping=0:100000:65536", "gidmapping=0:100000:65536")
    await fs.as_user(100005, 100007).create("f")
    st = os.lstat(overlay.upper / "f")
    assert (st.st_uid, st.st_gid) == (5, 7)
    assert ((await fs.stat("f")).st_uid, (await fs.stat("f")).st_gid) == (100005, 100007)
    await fs.chown("f", 100009, -1)
    assert os.lstat(overlay.upper / "f").st_uid == 9


async def test_squash_to_root_shows_root_and_chown_changes_nothing(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "x")
    fs = await overlay.mount("squash_to_root")
    attr = await fs.stat("f")
    assert (attr.st_uid, attr.st_gid) == (0, 0)
    await fs.chown("f", 1234, 1234)
    assert os.lstat(overlay.upper / "f").st_uid == os.lstat(bottom / "f").st_uid


@pytest.mark.parametrize("level, xattr", [
    pytest.param(1, "security.fuseoverlayfs.override_stat",
                 marks=pytest.mark.skipif(os.geteuid() != 0, reason="security.* xattrs need root")),
    (2, "user.containers.override_stat")])
async def test_xattr_permissions_keep_owner_and_mode_in_an_xattr(overlay, level, xattr):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "x", mode=0o644)
    fs = await overlay.mount(f"xattr_permissions={level}")
    await fs.chown("f", 1234, 5678)
    await fs.chmod("f", 0o4750)
    attr = await fs.stat("f")
    assert (attr.st_uid, attr.st_gid, stat.S_IMODE(attr.st_mode)) == (1234, 5678, 0o4750)
    assert os.getxattr(overlay.upper / "f", xattr) == b"1234:5678:04750"
    assert os.lstat(overlay.upper / "f").st_uid == os.getuid(), "the real file stays the daemon's"
    assert await fs.listxattr("f") == []
    await fs.create("new", mode=0o600)
    assert stat.S_IMODE((await fs.stat("new")).st_mode) == 0o600


# --- statfs ---------------------------------------------------------------------------------------

async def test_statfs_shows_the_quota_as_the_size(overlay):
    overlay.lowers(1)
    fs = await overlay.mount("quota_bytes=1M", "quota_inodes=100")
    await fs.create("f", b"x" * 8192)
    sv = await fs.statfs()
    assert sv.f_blocks * sv.f_frsize == 1 << 20
    assert sv.f_bfree * sv.f_frsize <= (1 << 20) - 8192
    assert sv.f_files == 100
    assert sv.f_namemax == 255
