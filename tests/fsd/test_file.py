"""In-process tests of fsd/file.py: opening files, and which handles pass through."""

from __future__ import annotations

import os
import threading

import pytest
import trio
import trio.testing

from support.layergen import write


async def test_a_file_whose_name_is_gone_reopens_for_a_caller_with_o_nofollow(overlay):
    """The kernel hands the caller's O_NOFOLLOW on to the open of a file whose
    last name was removed while it is open (a race of open and unlink); fsd
    reaches it through /proc/self/fd, a link O_NOFOLLOW refuses: ELOOP,
    which no kernel overlay gives there."""
    overlay.lowers(1)
    fs = await overlay.mount()
    await fs.create("f", b"data")
    ino = await fs.ino("f")
    held = (await fs.ops.open(ino, os.O_RDONLY, fs.ctx)).fh
    await fs.unlink("f")
    fh = (await fs.ops.open(ino, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW, fs.ctx)).fh
    assert await fs.ops.write(fh, 4, b"+more") == 5
    assert await fs.read_fh(held, 0, 100) == b"data+more"
    await fs.ops.release(fh)
    await fs.ops.release(held)


async def test_a_read_gets_the_real_file_short_at_its_end_empty_past_it_zeros_in_a_hole(overlay):
    """A read is answered with a range of the handle's real file, which libfuse
    reads into the reply: what pread(2) of the real file gives, on a lower file
    and an upper one alike."""
    (bottom,) = overlay.lowers(1)
    data = os.urandom(10000)
    write(bottom, "lower", data)
    with open(bottom / "sparse", "wb") as f:
        f.truncate(1 << 20)
        f.seek(600000)
        f.write(b"middle")
    fs = await overlay.mount()
    await fs.create("upper", data)
    for name in ("lower", "upper"):
        fh = await fs.open(name)
        try:
            assert await fs.read_fh(fh, 0, 4096) == data[:4096], name
            assert await fs.read_fh(fh, 8192, 4096) == data[8192:], name  # short: the end
            assert await fs.read_fh(fh, len(data), 4096) == b"", name
            assert await fs.read_fh(fh, 1 << 40, 4096) == b"", name
        finally:
            await fs.ops.release(fh)
    assert await fs.read("sparse", 131072, 0) == bytes(131072)
    assert await fs.read("sparse", 131072, 524288) == \
        bytes(600000 - 524288) + b"middle" + bytes(524288 + 131072 - 600006)
    assert await fs.read("sparse", 131072, (1 << 20) - 100) == bytes(100)


async def test_a_handle_opened_on_a_lower_file_reads_the_copy_after_a_copy_up(overlay):
    """As on the kernel overlay, a descriptor opened before another one copied
    the file up and wrote to it reads what was written: the range that answers
    its read is of the upper copy."""
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", b"lower")
    fs = await overlay.mount()
    reader = await fs.open("f")
    try:
        assert await fs.read_fh(reader, 0, 100) == b"lower"
        await fs.write("f", b"UPPER")  # an O_WRONLY open: the copy-up
        assert await fs.read_fh(reader, 0, 100) == b"UPPER"
    finally:
        await fs.ops.release(reader)


async def test_passthrough_handles_of_a_node_share_one_backing_and_never_mix_with_normal_ones(overlay):
    """The kernel fails (EIO) an open that mixes passthrough and normal handles
    on one inode, or two backing files; a handle on a lower file stays normal
    (it must move to the copy after a copy-up)."""
    overlay.lowers(1)
    write(overlay.layers[0], "f", b"lower")
    fs = await overlay.mount("upper_passthrough")
    fs.session.passthrough = True
    ino = await fs.ino("f")
    lower = await fs.ops.open(ino, os.O_RDONLY, fs.ctx)
    writer = await fs.ops.open(ino, os.O_WRONLY, fs.ctx)  # copies up, the lower handle open
    assert (lower.backing_id, writer.backing_id) == (0, 0)
    await fs.ops.release(lower.fh)
    third = await fs.ops.open(ino, os.O_RDONLY, fs.ctx)  # on the copy, the writer still normal
    assert third.backing_id == 0
    await fs.ops.release(writer.fh)
    await fs.ops.release(third.fh)

    a = await fs.ops.open(ino, os.O_RDONLY, fs.ctx)
    b = await fs.ops.open(ino, os.O_RDWR, fs.ctx)
    assert a.backing_id == b.backing_id != 0
    assert (a.keep_cache, list(fs.session.backings)) == (False, [a.backing_id])
    await fs.ops.release(a.fh)
    assert fs.session.closed_backings == []
    await fs.ops.release(b.fh)
    assert (fs.session.closed_backings, fs.session.backings) == ([a.backing_id], {})


async def test_passthrough_is_off_for_upper_files_without_the_option(overlay):
    overlay.lowers(1)
    fs = await overlay.mount()
    fs.session.passthrough = True
    await fs.create("f", b"data")
    info = await fs.ops.open(await fs.ino("f"), os.O_RDONLY, fs.ctx)
    assert info.backing_id == 0
    await fs.ops.release(info.fh)


async def test_a_mount_without_upper_passes_its_lower_files_through(overlay):
    overlay.lowers(1)
    write(overlay.layers[0], "f", b"lower")
    fs = await overlay.mount(upper=False)
    fs.session.passthrough = True
    info = await fs.ops.open(await fs.ino("f"), os.O_RDONLY, fs.ctx)
    assert info.backing_id != 0
    await fs.ops.release(info.fh)


async def test_a_refused_backing_file_turns_passthrough_off_for_the_mount(overlay):
    """An unprivileged daemon, an upper on a stacked filesystem: the kernel
    refuses the first backing file, and fsd asks no more."""
    overlay.lowers(1)
    fs = await overlay.mount("upper_passthrough")
    fs.session.passthrough = fs.session.refuse_backings = True
    await fs.create("f", b"data")
    for _ in range(2):
        info = await fs.ops.open(await fs.ino("f"), os.O_RDONLY, fs.ctx)
        assert info.backing_id == 0
        await fs.ops.release(info.fh)
    assert fs.session.backing_opens == 1


async def test_a_node_with_passthrough_handles_keeps_them_after_passthrough_turned_off(overlay):
    """A refusal for another file turns passthrough off, but a node whose
    handles pass through must get passthrough handles as long as one is open."""
    overlay.lowers(1)
    fs = await overlay.mount("upper_passthrough")
    fs.session.passthrough = True
    await fs.create("a", b"a")
    await fs.create("b", b"b")
    first = await fs.ops.open(await fs.ino("a"), os.O_RDONLY, fs.ctx)
    assert first.backing_id != 0
    fs.session.refuse_backings = True
    other = await fs.ops.open(await fs.ino("b"), os.O_RDONLY, fs.ctx)  # refused: off
    second = await fs.ops.open(await fs.ino("a"), os.O_RDWR, fs.ctx)
    assert (other.backing_id, second.backing_id) == (0, first.backing_id)
    for info in (first, other, second):
        await fs.ops.release(info.fh)
    assert fs.session.backings == {}


async def test_a_worker_job_answers_its_caller_and_waits_for_a_free_thread():
    """fsync's worker: the function's result or exception reaches the caller;
    with every thread of trio's default limit in use, a job waits for one."""
    from fsd.file import _in_worker

    assert await _in_worker(pow, 2, 10) == 1024
    with pytest.raises(OSError):
        await _in_worker(os.fsync, 1 << 20)  # no such descriptor: EBADF
    limiter = trio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = 1
    released = threading.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_in_worker, released.wait)
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.borrowed_tokens == 1
        done = []

        async def second():
            done.append(await _in_worker(pow, 3, 2))

        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert done == [] and limiter.statistics().tasks_waiting == 1
        released.set()
    assert done == [9] and limiter.borrowed_tokens == 0
