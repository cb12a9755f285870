"""Copy-up (fsd/copy_up.py), in-process: what a lower object keeps when it
moves to the upper, that its hard links stay one file, metacopy, and what a
crash in the middle leaves for the next mount."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import trio
import trio.testing
from fsd.copy_up import CopyUp
from harness import HeldWorkerJobs, fails, holds_no_data

from support.layergen import write

OLD = (1_000_000_000 * 10**9, 1_100_000_000 * 10**9)  # atime, mtime of lower objects


def old_times(path) -> None:
    os.utime(path, ns=OLD, follow_symlinks=False)


async def test_a_copy_keeps_data_mode_times_and_xattrs(overlay):
    (bottom,) = overlay.lowers(1)
    f = write(bottom, "d/f", "lower data", mode=0o640)
    os.setxattr(f, "user.kept", b"1")
    os.setxattr(f, "user.overlay.private", b"never copied")
    old_times(f)
    old_times(bottom / "d")
    fs = await overlay.mount()
    await fs.setxattr("d/f", "user.added", b"2")  # copies up, changes no data or times
    up = overlay.upper / "d" / "f"
    st = os.lstat(up)
    assert up.read_bytes() == b"lower data"
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_atime_ns, st.st_mtime_ns) == OLD
    assert os.getxattr(up, "user.kept") == b"1"
    assert "user.overlay.private" not in os.listxattr(up)
    assert sorted(await fs.listxattr("d/f")) == [b"user.added", b"user.kept"]
    assert os.lstat(overlay.upper / "d").st_mtime_ns == OLD[1], "the parent's times are the lower's"


async def test_a_copy_keeps_every_mode_bit(overlay):
    """The copy is made with the lower file's permission bits where the work
    area says what it gets (so that no chmod is needed): set-id and sticky bits,
    bits the daemon's umask would drop, and none at all are still kept."""
    (bottom,) = overlay.lowers(1)
    modes = {"suid": 0o4755, "sgid": 0o2750, "sticky": 0o1777, "open": 0o666, "none": 0o000}
    for name, mode in modes.items():
        f = write(bottom, name, "x" * 5000, mode=mode)
        old_times(f)
    fs = await overlay.mount()
    for name in modes:
        await fs.setxattr(name, "user.x", b"")
    for name, mode in modes.items():
        st = os.lstat(overlay.upper / name)
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (mode, OLD[1]), name
        assert (overlay.upper / name).read_bytes() == b"x" * 5000


async def test_a_copy_keeps_owner_and_trusted_xattrs(overlay, needs_root):
    (bottom,) = overlay.lowers(1)
    f = write(bottom, "d/f", "x", mode=0o4755)
    os.chown(bottom / "d", 1234, 5678)
    os.chown(f, 1234, 5678)
    os.chmod(f, 0o4755)  # chown cleared set-id
    os.setxattr(f, "trusted.kept", b"t")
    fs = await overlay.mount()
    await fs.setxattr("d/f", "user.x", b"")
    st = os.lstat(overlay.upper / "d" / "f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4755)
    assert os.lstat(overlay.upper / "d").st_uid == 1234
    assert os.getxattr(overlay.upper / "d" / "f", "trusted.kept") == b"t"


async def test_writing_copies_the_data_first(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "0123456789")
    fs = await overlay.mount()
    await fs.write("f", b"ab", offset=3)
    assert await fs.read("f") == b"012ab56789"
    assert (bottom / "f").read_bytes() == b"0123456789", "the lower never changes"


async def test_truncating_open_copies_no_data(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "old content")
    fs = await overlay.mount()
    await fs.write("f", b"new", flags=os.O_WRONLY | os.O_TRUNC)
    assert (overlay.upper / "f").read_bytes() == b"new"


async def test_a_big_sparse_file_keeps_its_content_and_holes(overlay):
    (bottom,) = overlay.lowers(1)
    big = bottom / "big"
    with open(big, "wb") as f:
        f.write(b"head")
        f.seek(8 << 20)
        f.write(b"tail")
    fs = await overlay.mount()
    await fs.write("big", b"H")  # more than fsd copies on the trio loop: a worker thread
    up = overlay.upper / "big"
    assert os.path.getsize(up) == (8 << 20) + 4
    assert await fs.read("big", 4) == b"Head"
    assert await fs.read("big", 4, offset=8 << 20) == b"tail"
    assert os.lstat(up).st_blocks * 512 < (1 << 20), "holes stay holes"


async def test_concurrent_writers_of_one_lower_file_share_one_copy(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "big", b"." * (3 << 20))
    fs = await overlay.mount()
    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(fs.write, "big", b"%d" % i, i << 20)
    data = await fs.read("big", 4 << 20)
    assert [data[i << 20:(i << 20) + 1] for i in range(3)] == [b"0", b"1", b"2"]
    assert data[3 << 20:] == b"3"
    assert len(data) == (3 << 20) + 1


async def test_a_copy_up_under_way_when_its_directory_is_moved_is_not_lost(overlay, monkeypatch):
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/big", b"x" * (4 << 20))  # big: fsd copies it in a worker thread
    fs = await overlay.mount()
    await fs.lookup("d/big")
    # The order of events, made certain without timing: the copy of big is done;
    # then the move starts and, if it copies the tree meanwhile, finishes that
    # copy; then the writer goes on as far as it can; then the move goes on.
    real_run_sync = trio.to_thread.run_sync
    copied, tree_copied = trio.Event(), trio.Event()
    writer_may_go, mover_may_go = trio.Event(), trio.Event()
    tasks, moving = {}, []

    async def run_sync_in_order(fn, *args, **kw):
        me = trio.lowlevel.current_task()
        if me is tasks.get("mover"):
            moving.append(fn)
        result = await real_run_sync(fn, *args, **kw)
        if me is tasks.get("writer"):
            copied.set()
            await writer_may_go.wait()
        elif me is tasks.get("mover"):
            tree_copied.set()
            await mover_may_go.wait()
        return result

    monkeypatch.setattr(trio.to_thread, "run_sync", run_sync_in_order)

    async def writer():
        tasks["writer"] = trio.lowlevel.current_task()
        await fs.write("d/big", b"W")

    async def mover():
        tasks["mover"] = trio.lowlevel.current_task()
        await fs.rename("d", "e")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await copied.wait()
        nursery.start_soon(mover)
        await trio.testing.wait_all_tasks_blocked()
        if moving:  # the move copies the tree now (else it waits for the copy-up)
            await tree_copied.wait()
        writer_may_go.set()
        await trio.testing.wait_all_tasks_blocked()
        mover_may_go.set()
    assert await fs.read("e/big", 2) == b"Wx"


async def test_symlinks_fifos_and_directories_are_copied_as_what_they_are(overlay):
    (bottom,) = overlay.lowers(1)
    os.symlink("target/elsewhere", bottom / "link")
    os.mkfifo(bottom / "fifo", 0o604)
    (bottom / "dir").mkdir(mode=0o751)
    os.chmod(bottom / "dir", 0o751)
    fs = await overlay.mount()
    for name in ("link", "fifo", "dir"):
        await fs.rename(name, name + "2")  # a rename copies the object up
    assert os.readlink(overlay.upper / "link2") == "target/elsewhere"
    assert stat.S_ISFIFO(os.lstat(overlay.upper / "fifo2").st_mode)
    assert stat.S_IMODE(os.lstat(overlay.upper / "fifo2").st_mode) == 0o604
    assert stat.S_IMODE(os.lstat(overlay.upper / "dir2").st_mode) == 0o751
    assert await fs.readlink("link2") == b"target/elsewhere"


async def test_a_copied_up_directory_still_merges_with_the_lowers(overlay):
    top, bottom = overlay.lowers(2)
    write(bottom, "d/low", "x")
    write(top, "d/top", "y")
    fs = await overlay.mount()
    await fs.chmod("d", 0o700)
    for _ in range(2):
        assert sorted(await fs.listdir("d")) == [b"low", b"top"]
        assert stat.S_IMODE((await fs.stat("d")).st_mode) == 0o700
        fs = await overlay.remount(fs)


async def test_device_nodes_are_copied(overlay, needs_root):
    (bottom,) = overlay.lowers(1)
    os.mknod(bottom / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    fs = await overlay.mount()
    await fs.rename("null", "null2")
    st = os.lstat(overlay.upper / "null2")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


async def test_hard_links_stay_one_file(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "a", "linked")
    (bottom / "sub").mkdir()
    os.link(bottom / "a", bottom / "b")
    os.link(bottom / "a", bottom / "sub" / "c")
    fs = await overlay.mount()
    await fs.write("a", b"L")
    for name in ("b", "sub/c"):
        assert await fs.read(name) == b"Linked"
        assert await fs.ino(name) == await fs.ino("a")
    inodes = {os.lstat(overlay.upper / n).st_ino for n in ("a", "b", "sub/c")}
    assert len(inodes) == 1
    fs = await overlay.remount(fs)
    await fs.write("sub/c", b"l")
    assert await fs.read("b") == b"linked"


async def mount_a_lower_file_named_a_and_b(overlay):
    """A mount on one lower layer holding one file, "linked", named a and b;
    a looked up."""
    (bottom,) = overlay.lowers(1)
    write(bottom, "a", "linked")
    os.link(bottom / "a", bottom / "b")
    fs = await overlay.mount()
    await fs.lookup("a")
    return fs


async def test_writes_through_two_names_of_a_lower_hard_link_at_once(overlay, monkeypatch):
    fs = await mount_a_lower_file_named_a_and_b(overlay)
    await fs.lookup("b")
    # The order of events, made certain without timing: the first worker job of
    # the write through a waits until the write through b can go no further.
    jobs = HeldWorkerJobs(monkeypatch)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(jobs.only_for, fs.write, "a", b"A")
        await jobs.waiting.wait()
        nursery.start_soon(fs.write, "b", b"B", 1)
        await trio.testing.wait_all_tasks_blocked()
        jobs.release()
    assert await fs.read("a") == await fs.read("b") == b"ABnked"
    assert await fs.ino("a") == await fs.ino("b")


async def test_renames_waiting_for_the_copy_up_of_a_hard_link_go_on_when_it_ends(overlay, monkeypatch):
    """Two renames wait for the copy-up that links a lower file's other names.
    The node's lock passes from one waiter to the next when released: taking
    the lock's being held for that copy-up still under way, they handed it
    round for ever (the daemon at full CPU, the renames never answered)."""
    fs = await mount_a_lower_file_named_a_and_b(overlay)
    # The order of events, made certain without timing: the search for the
    # other names (a walk of the layer in a worker thread) waits until both
    # renames wait for the copy-up.
    jobs = HeldWorkerJobs(monkeypatch)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fs.write, "a", b"L")
            await jobs.waiting.wait()
            nursery.start_soon(fs.rename, "a", "x")
            nursery.start_soon(fs.rename, "b", "y")
            await trio.testing.wait_all_tasks_blocked()
            trio.lowlevel.add_instrument(StepBudget(scope, 20_000))
            jobs.release()
    assert not scope.cancelled_caught, "the renames still waited after 20000 scheduler steps"
    assert sorted(await fs.listdir("")) == [b"x", b"y"]
    assert await fs.read("y") == b"Linked"
    assert await fs.ino("x") == await fs.ino("y")


async def test_other_names_of_a_hard_link_are_linked_to_its_copy_even_if_its_name_goes(overlay, monkeypatch):
    """The copy's name is unlinked (a whiteout takes its place) while fsd looks
    for the file's other names: they are linked to the copy, not to that
    whiteout (they showed as a character device, and were gone after a remount)."""
    fs = await mount_a_lower_file_named_a_and_b(overlay)
    # The order of events, made certain without timing: the search for the
    # other names (a walk of the layer in a worker thread) waits for the unlink.
    jobs = HeldWorkerJobs(monkeypatch)

    async def writer():
        with fails(errno.ENOENT):  # its name went before it could open the copy
            await fs.write("a", b"L")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await jobs.waiting.wait()
        await fs.unlink("a")
        jobs.release()
    for _ in range(2):
        assert stat.S_ISREG((await fs.stat("b")).st_mode)
        assert await fs.read("b") == b"linked"
        fs = await overlay.remount(fs)


@pytest.mark.parametrize("first", ["setxattr d1/a", "rename d1 e1"])
async def test_a_lower_hard_link_copied_up_while_a_directory_with_another_of_its_names_moves(
        overlay, monkeypatch, first):
    """A copy-up of a lower file with several names (or a directory move that
    copies one) is still linking the file's other names when a directory
    holding another of them is moved: the move's tree copy made a second copy
    of the lower file, so the names became two files that showed one inode
    number until a remount."""
    (bottom,) = overlay.lowers(1)
    write(bottom, "d1/a", "linked")
    write(bottom, "d2/x", "x")
    os.link(bottom / "d1" / "a", bottom / "d2" / "b")
    fs = await overlay.mount()
    for name in ("d1/a", "d2/b"):
        await fs.lookup(name)
    a = "e1/a" if first.startswith("rename") else "d1/a"
    # The order of events, made certain without timing: the first request's
    # worker job (the search for the file's other names, or the tree copy)
    # waits until the move of d2 can go no further.
    jobs = HeldWorkerJobs(monkeypatch)

    async def first_request():
        if first.startswith("rename"):
            await fs.rename("d1", "e1")
        else:
            await fs.setxattr("d1/a", "user.x", b"1")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first_request)
        await jobs.waiting.wait()
        nursery.start_soon(fs.rename, "d2", "e2")
        await trio.testing.wait_all_tasks_blocked()
        jobs.release()
    for _ in range(2):
        assert await fs.ino(a) == await fs.ino("e2/b")
        assert (await fs.stat("e2/b")).st_nlink == 2
        fs = await overlay.remount(fs)
    await fs.write(a, b"L")
    assert await fs.read("e2/b") == b"Linked"


async def test_another_name_looked_up_while_a_directory_move_links_it_is_the_same_file(overlay, monkeypatch):
    """A directory move copied a lower file with several names and is linking
    its other names: a lookup of one not yet linked got a node of its own (the
    file's was in the upper, and nothing said its names were being linked), so
    the kernel kept two inodes for one file, one of them reading the lower."""
    (bottom,) = overlay.lowers(1)
    write(bottom, "d1/a", "linked")
    write(bottom, "d2/x", "x")
    os.link(bottom / "d1" / "a", bottom / "d2" / "b")
    fs = await overlay.mount()
    await fs.lookup("d1/a")
    # The order of events, made certain without timing: the move's second
    # worker job (after the tree copy, the search for the file's other names)
    # waits for the lookup.
    real_run_sync = trio.to_thread.run_sync
    jobs, linking, may_go = [], trio.Event(), trio.Event()

    async def second_job_held(fn, *args, **kw):
        jobs.append(fn)
        if len(jobs) == 2:
            linking.set()
            await may_go.wait()
        return await real_run_sync(fn, *args, **kw)

    monkeypatch.setattr(trio.to_thread, "run_sync", second_job_held)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.rename, "d1", "e1")
        await linking.wait()
        b = await fs.ino("d2/b")
        may_go.set()
    await fs.write("e1/a", b"L")
    fh = (await fs.ops.open(b, os.O_RDONLY, fs.ctx)).fh  # what the kernel holds for d2/b
    try:
        assert await fs.read_fh(fh, 0, 100) == b"Linked"
    finally:
        await fs.ops.release(fh)
    assert b == await fs.ino("e1/a") == await fs.ino("d2/b")


async def test_a_copy_up_lands_at_the_name_the_file_has_once_its_directory_is_copied(overlay, monkeypatch):
    """A copy-up of a lower file with several names waited; meanwhile a lookup
    of another name, in a directory not copied yet, made that the file's path.
    While that directory was copied a lookup of a third name made that one the
    path: the copy landed there but was recorded in the listing of the second
    one's directory, and linking the third name to it failed EEXIST."""
    (bottom,) = overlay.lowers(1)
    write(bottom, "g1", "other")
    os.link(bottom / "g1", bottom / "g2")
    write(bottom, "s/r", "linked")
    (bottom / "h").mkdir()
    os.link(bottom / "s" / "r", bottom / "h" / "c")
    os.link(bottom / "s" / "r", bottom / "d")
    fs = await overlay.mount()
    await fs.lookup("s/r")
    # The order of events, made certain without timing: the copy-up through s/r
    # waits while another lower hard link's copy-up links that file's other
    # names (its search for them, a worker job, is held).  The lookup of d
    # comes while the copy-up of s/r has the directory h copied.
    jobs = HeldWorkerJobs(monkeypatch)
    real_ensure = CopyUp.ensure

    async def ensure_d_looked_up_meanwhile(self, node, data=True):
        if node.is_dir and node.path() == b"h":
            await fs.lookup("d")
        return await real_ensure(self, node, data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(jobs.only_for, fs.write, "g1", b"O")
        await jobs.waiting.wait()
        nursery.start_soon(fs.write, "s/r", b"L")
        await trio.testing.wait_all_tasks_blocked()
        await fs.lookup("h/c")
        monkeypatch.setattr(CopyUp, "ensure", ensure_d_looked_up_meanwhile)
        jobs.release()
    for _ in range(2):
        assert await fs.ino("s/r") == await fs.ino("h/c") == await fs.ino("d")
        assert await fs.read("h/c") == await fs.read("d") == b"Linked"
        fs = await overlay.remount(fs)


async def test_a_hard_link_hidden_by_a_whiteout_is_not_linked(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "a", "linked")
    os.link(bottom / "a", bottom / "b")
    fs = await overlay.mount()
    await fs.unlink("b")
    await fs.write("a", b"L")
    with fails(errno.ENOENT):
        await fs.lookup("b")
    assert os.lstat(overlay.upper / "a").st_nlink == 1


async def test_metacopy_copies_metadata_first_and_data_on_write(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", b"x" * 100_000, mode=0o644)
    fs = await overlay.mount("metacopy=on")
    await fs.chmod("f", 0o600)
    up = overlay.upper / "f"
    assert holds_no_data(up), "metadata only"
    st = await fs.stat("f")
    assert (stat.S_IMODE(st.st_mode), st.st_size) == (0o600, 100_000)
    assert await fs.read("f", 3) == b"xxx"
    fs = await overlay.remount(fs, "metacopy=on")
    assert await fs.read("f", 3) == b"xxx"
    await fs.write("f", b"y")
    assert up.read_bytes() == b"y" + b"x" * 99_999
    assert stat.S_IMODE(os.lstat(up).st_mode) == 0o600
    assert not [a for a in os.listxattr(up) if "metacopy" in a]


async def test_metacopy_keeps_hard_links_one_file(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "a", "linked")
    os.link(bottom / "a", bottom / "b")
    fs = await overlay.mount("metacopy=on")
    await fs.chmod("a", 0o600)
    await fs.write("a", b"L")
    assert await fs.read("b") == b"Linked"
    assert os.lstat(overlay.upper / "a").st_ino == os.lstat(overlay.upper / "b").st_ino


async def test_a_metadata_change_waiting_for_a_copy_up_of_a_file_unlinked_meanwhile(overlay, monkeypatch):
    """ENOENT, as for any change of a file that is gone (it was an internal
    error: the metadata-only copy looked for the parent of a node with none)."""
    (bottom,) = overlay.lowers(1)
    write(bottom, "big", b"x" * (4 << 20))  # big: fsd copies it in a worker thread
    fs = await overlay.mount("metacopy=on")
    await fs.lookup("big")
    # The order of events, made certain without timing: the copy-up for the
    # write waits to start until the setxattr waits for it and big is unlinked.
    jobs = HeldWorkerJobs(monkeypatch)

    async def writer():
        with fails(errno.ENOENT):
            await fs.write("big", b"W")

    async def setter():
        with fails(errno.ENOENT):
            await fs.setxattr("big", "user.x", b"1")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await jobs.waiting.wait()
        nursery.start_soon(setter)
        await trio.testing.wait_all_tasks_blocked()
        await fs.unlink("big")
        jobs.release()


async def test_what_a_crash_left_in_tmp_is_removed_at_mount(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "lower")
    fs = await overlay.mount()
    await fs.create("kept", b"upper")
    overlay.unmount(fs)
    tmp = overlay.work / "fsd" / "tmp"
    write(tmp, "7", "half a copy of f")
    write(tmp, "8/deep/tree", "half a moved tree")
    os.mknod(tmp / "9", stat.S_IFCHR, os.makedev(0, 0))
    fs = await overlay.mount()
    assert os.listdir(tmp) == []
    assert await fs.read("f") == b"lower"
    assert await fs.read("kept") == b"upper"


async def test_a_hard_linked_copy_published_before_a_crash_is_linked_at_mount(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "a", "linked")
    os.link(bottom / "a", bottom / "b")
    ino = os.lstat(bottom / "a").st_ino
    overlay.unmount(await overlay.mount())  # makes the work area
    # The crash came after the copy of a was published, before b was linked to it.
    index = overlay.work / "fsd" / "index"
    write(overlay.upper, "a", "Linked")
    os.link(overlay.upper / "a", index / f"0-{ino}")
    fs = await overlay.mount()
    assert os.listdir(index) == []
    assert await fs.read("b") == b"Linked"
    assert os.lstat(overlay.upper / "b").st_ino == os.lstat(overlay.upper / "a").st_ino


async def test_a_hard_linked_copy_never_published_is_dropped_at_mount(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "a", "linked")
    os.link(bottom / "a", bottom / "b")
    ino = os.lstat(bottom / "a").st_ino
    overlay.unmount(await overlay.mount())
    write(overlay.work / "fsd" / "index", f"0-{ino}", "half")
    fs = await overlay.mount()
    assert os.listdir(overlay.work / "fsd" / "index") == []
    assert await fs.read("a") == b"linked"
    assert not (overlay.upper / "a").exists()


async def test_a_copy_over_the_quota_leaves_nothing_behind(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "big", b"x" * (1 << 20))
    fs = await overlay.mount("quota_bytes=64K")
    with fails(errno.EDQUOT):
        await fs.write("big", b"y")
    assert os.listdir(overlay.upper) == []
    assert await fs.read("big", 1) == b"x"


async def test_a_copy_up_tells_the_kernel_the_parent_changed(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/f", "x")
    fs = await overlay.mount()
    d = await fs.ino("d")
    await fs.write("d/f", b"y")
    assert (d, True) in overlay.session.invalidated_inodes


class StepBudget(trio.abc.Instrument):
    """Cancels `scope` once more than `limit` task steps have run: a spin
    (tasks that run on without getting anywhere) fails a test instead of
    hanging it, and without timing."""

    def __init__(self, scope: trio.CancelScope, limit: int):
        self.scope, self.limit, self.steps = scope, limit, 0

    def before_task_step(self, task):
        self.steps += 1
        if self.steps > self.limit:
            self.scope.cancel()


async def test_requests_waiting_for_a_directory_move_all_go_on_when_it_ends(overlay, monkeypatch):
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/f", "lower data")
    (bottom / "d" / "sub").mkdir()
    fs = await overlay.mount()
    await fs.lookup("d/f")
    # The order of events, made certain without timing: the move's tree copy
    # waits until six requests wait for the move.
    jobs = HeldWorkerJobs(monkeypatch)
    done = []

    async def mover():
        jobs.task = trio.lowlevel.current_task()
        await fs.rename("d", "e")
        done.append("rename d e")

    async def mkdir(path):
        await fs.mkdir(path)
        done.append(f"mkdir {path}")

    paths = [f"n{i}" for i in range(3)] + [f"d/m{i}" for i in range(3)]  # beside the moved tree and in it
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mover)
            await jobs.waiting.wait()
            for path in paths:
                nursery.start_soon(mkdir, path)
            await trio.testing.wait_all_tasks_blocked()
            assert done == [], "they wait for the move"
            trio.lowlevel.add_instrument(StepBudget(scope, 20_000))
            jobs.release()
    assert not scope.cancelled_caught, f"still not done after 20000 scheduler steps, only: {done}"
    assert sorted(done) == sorted(["rename d e"] + [f"mkdir {p}" for p in paths])
    assert sorted(await fs.listdir("e")) == [b"f", b"m0", b"m1", b"m2", b"sub"]
    assert sorted(await fs.listdir("")) == [b"e", b"n0", b"n1", b"n2"]
    assert await fs.read("e/f") == b"lower data"
