"""Lazy layers (fsd/lazy.py), in-process: a placeholder lower whose files a real
fetcher on a unix socket completes (support/lazyfetcher.py).  Concurrent
requests are ordered by holding the fetcher, never by timing; time, where it
matters (the fetch's bound, the watchdog), is trio's MockClock."""

from __future__ import annotations

import errno
import logging
import os

import pytest
import trio
import trio.testing

from fsd.lazy import FETCH_TIMEOUT, ROOT_RECHECK
from fsd.watchdog import LIMIT
from harness import fails
from support.lazyfetcher import LAZY_XATTR, A, B, H, lazy_layer


@pytest.fixture
def lazy(overlay, tmp_path):
    """The mount's one lower is a lazy layer of the sample tree; its fetcher."""
    with lazy_layer(tmp_path) as (layer, fetcher):
        overlay.use_lowers([layer])
        yield fetcher


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fsd" and r.levelno >= logging.ERROR]


async def test_a_read_gets_the_content_after_one_fetch_per_file(overlay, lazy):
    fs = await overlay.mount()
    assert os.getxattr(overlay.layers[0] / "a", LAZY_XATTR) == b""
    assert await fs.read("a") == A
    assert await fs.read("a") == A
    assert await fs.read("d/b", 8 << 20) == B
    assert await fs.read("empty") == b""
    assert lazy.requests == [(str(overlay.layers[0]), "a"), (str(overlay.layers[0]), "d/b")]


async def test_metadata_requests_never_contact_the_fetcher(overlay, lazy):
    fs = await overlay.mount()
    assert (await fs.stat("a")).st_size == len(A)
    assert sorted(await fs.listdir("")) == [b"a", b"d", b"empty", b"h1"]
    assert sorted(await fs.listdir("d")) == [b"b", b"h2", b"link"]
    assert await fs.readlink("d/link") == b"../a"
    assert await fs.getxattr("a", "user.test") == b"kept"
    assert lazy.requests == []


async def test_hard_linked_names_share_one_fetch(overlay, lazy):
    fs = await overlay.mount()
    lazy.hold()
    got = []

    async def read(path):
        got.append(await fs.read(path))

    async with trio.open_nursery() as nursery:
        for path in ("h1", "d/h2", "h1"):
            nursery.start_soon(read, path)
        await trio.to_thread.run_sync(lazy.wait_held)
        await trio.testing.wait_all_tasks_blocked()  # every open waits on that one fetch
        lazy.release()
    assert got == [H, H, H]
    assert await fs.read("d/h2") == H
    assert len(lazy.requests) == 1


async def test_a_slow_fetch_leaves_the_loop_free_and_the_watchdog_names_it(overlay, lazy, caplog, mock_clock):
    fs = await overlay.mount()
    ino = await fs.ino("a")
    overlay.expect_log(r"request open .* in flight")
    lazy.hold()
    async with trio.open_nursery() as watching:
        watching.start_soon(fs.ops.requests.watch)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fs.read, "a")
            await trio.to_thread.run_sync(lazy.wait_held)
            assert (await fs.stat("d/b")).st_size == len(B)  # answered while the fetch waits
            for _ in range(int(LIMIT) + 1):
                mock_clock.jump(1)
                await trio.testing.wait_all_tasks_blocked()
            lazy.release()
        watching.cancel_scope.cancel()
    reports = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert reports == [f"request open (inode {ino}) in flight for {LIMIT + 1:.0f} s, "
                       f"waiting on: a lazy fetch of b'a' in lower layer 0"]


async def test_a_failed_fetch_is_eio_logged_once_and_a_later_open_succeeds(overlay, lazy, caplog):
    fs = await overlay.mount()
    overlay.expect_log(r"lazy layer .* could not be fetched")
    lazy.fail = "registry\ngone"  # one log line all the same
    for _ in range(3):
        with fails(errno.EIO):
            await fs.read("a")
    assert errors(caplog) == [f"lazy layer {overlay.layers[0]}: b'a' could not be fetched: registry gone"]
    lazy.fail = None
    assert await fs.read("a") == A
    assert len(lazy.requests) == 4


async def test_no_fetcher_is_eio_until_it_is_back(overlay, lazy, caplog):
    fs = await overlay.mount()
    overlay.expect_log(r"lazy layer .* could not be fetched")
    lazy.stop()
    with fails(errno.EIO):
        await fs.read("a")
    lazy.start()
    assert await fs.read("a") == A
    assert errors(caplog) == [f"lazy layer {overlay.layers[0]}: b'a' could not be fetched: "
                              f"fetcher at {lazy.socket}: No such file or directory"]


async def test_a_fetcher_that_answers_ok_without_completing_gives_eio(overlay, lazy, caplog):
    fs = await overlay.mount()
    overlay.expect_log(r"lazy layer .* could not be fetched")
    lazy.lie = True
    with fails(errno.EIO):
        await fs.read("a")
    assert errors(caplog) == [f"lazy layer {overlay.layers[0]}: b'a' could not be fetched: "
                              f"the fetcher answered ok but the file still carries {LAZY_XATTR}"]


async def test_a_fetch_without_answer_fails_after_the_bound(overlay, lazy, caplog, mock_clock):
    fs = await overlay.mount()
    overlay.expect_log(r"lazy layer .* could not be fetched")
    lazy.hold()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mock_clock_jumps, mock_clock, FETCH_TIMEOUT)
        with fails(errno.EIO):
            await fs.read("a")
    lazy.release()
    assert errors(caplog) == [f"lazy layer {overlay.layers[0]}: b'a' could not be fetched: no answer "
                              f"from the fetcher at {lazy.socket} within {FETCH_TIMEOUT:.0f} s"]


async def mock_clock_jumps(clock, seconds: float) -> None:
    """Move the clock past `seconds` once every task waits."""
    await trio.testing.wait_all_tasks_blocked()
    clock.jump(seconds + 1)


async def test_a_write_copies_up_the_completed_content(overlay, lazy):
    fs = await overlay.mount()
    await fs.write("a", b"ALPHA", 0)
    await fs.write("d/b", b"B", 1)
    assert await fs.read("a") == b"ALPHA" + A[5:]
    assert (overlay.upper / "a").read_bytes() == b"ALPHA" + A[5:]
    assert (overlay.upper / "d/b").read_bytes() == B[:1] + b"B" + B[2:]
    for path in ("a", "d/b", "d"):
        assert not [n for n in os.listxattr(overlay.upper / path) if n.startswith("user.strata.")]
    assert os.getxattr(overlay.upper / "a", "user.test") == b"kept"


async def test_a_hard_link_made_through_the_mount_copies_up_the_completed_content(overlay, lazy):
    fs = await overlay.mount()
    await fs.link("a", "a2")
    assert (overlay.upper / "a2").read_bytes() == A
    assert await fs.read("a") == A
    assert len(lazy.requests) == 1


async def test_the_quota_counts_the_completed_content_of_a_copy_up(overlay, lazy):
    """A placeholder takes no blocks: checked before its fetch, the copy-up of
    3 MiB would pass a 1 MiB limit."""
    fs = await overlay.mount("quota_bytes=1M")
    with fails(errno.EDQUOT):
        await fs.open("d/b", os.O_WRONLY)  # the copy-up, no write yet
    await fs.write("a", b"A")


async def test_the_quota_counts_the_completed_content_of_a_metacopy_filled(overlay, lazy):
    fs = await overlay.mount("metacopy=on", "quota_bytes=1M")
    await fs.chmod("d/b", 0o600)
    with fails(errno.EDQUOT):
        await fs.open("d/b", os.O_WRONLY)  # the copy of the data, no write yet


async def test_a_truncating_open_fetches_nothing(overlay, lazy):
    fs = await overlay.mount()
    await fs.write("a", b"new", 0, os.O_WRONLY | os.O_TRUNC)
    assert await fs.read("a") == b"new"
    assert lazy.requests == []


async def test_metacopy_fetches_when_the_data_is_copied(overlay, lazy):
    fs = await overlay.mount("metacopy=on")
    await fs.chmod("a", 0o600)
    assert lazy.requests == []
    assert await fs.read("a") == A  # from the lower, through the metadata-only copy
    await fs.write("a", b"X", 0)
    assert (overlay.upper / "a").read_bytes() == b"X" + A[1:]
    assert len(lazy.requests) == 1


async def test_a_directory_move_copies_completed_content(overlay, lazy):
    """A directory with lower parts is moved by copying its tree in a worker
    thread: the fetch runs on the trio loop for it."""
    fs = await overlay.mount()
    await fs.rename("d", "e")
    assert await fs.read("e/b", 8 << 20) == B
    assert await fs.read("e/h2") == H
    assert await fs.read("h1") == H
    assert sorted(p for _, p in lazy.requests) == ["d/b", "d/h2"]


async def test_the_lazy_xattrs_are_never_shown_or_changed(overlay, lazy):
    fs = await overlay.mount()
    assert await fs.listxattr("a") == [b"user.test"]
    assert await fs.listxattr("") == []
    with fails(errno.ENODATA):
        await fs.getxattr("a", LAZY_XATTR)
    with fails(errno.ENODATA):
        await fs.getxattr("", LAZY_XATTR)
    with fails(errno.EPERM):
        await fs.setxattr("empty", "user.strata.other", b"x")
    with fails(errno.ENODATA):
        await fs.removexattr("a", LAZY_XATTR)
    assert lazy.requests == []


async def test_a_layer_whose_root_loses_the_xattr_while_mounted_stops_being_lazy(overlay, lazy, caplog):
    """The store removes the root's xattr once every file is complete: fsd
    sees it within ROOT_RECHECK opens and stops looking at files' xattrs."""
    caplog.set_level(logging.INFO, "fsd")
    fs = await overlay.mount()
    for path in ("a", "d/b", "h1"):
        await fs.read(path, 8 << 20)
    os.removexattr(overlay.layers[0], LAZY_XATTR)
    for _ in range(ROOT_RECHECK):
        await fs.read("empty")
    assert [r.getMessage() for r in caplog.records if r.name == "fsd"] == \
        [f"lazy layer {overlay.layers[0]} is complete"]
    os.setxattr(overlay.layers[0] / "a", LAZY_XATTR, b"")  # never done by a store: to show it
    assert await fs.read("a") == A
    assert len(lazy.requests) == 3


async def test_a_layer_without_the_root_xattr_is_not_lazy(overlay, lazy):
    """No root xattr (the layer is complete): its files are opened as any
    lower's, with no look at their xattrs."""
    os.removexattr(overlay.layers[0], LAZY_XATTR)
    fs = await overlay.mount()
    assert await fs.read("a") == bytes(len(A))  # the placeholder as it is
    assert lazy.requests == []


async def test_a_fetcher_socket_path_longer_than_a_socket_address_is_reached(overlay, lazy, tmp_path):
    """A store deep in a tree: the socket's path is over the 107 bytes a unix
    socket address holds (a plain connect fails with 'AF_UNIX path too long')."""
    deep = tmp_path / ("d" * 100) / ("e" * 100)
    deep.mkdir(parents=True)
    long_path = deep / "fetch.sock"
    os.rename(lazy.socket, long_path)      # the socket moves; its fetcher still listens
    lazy.socket = long_path
    os.setxattr(overlay.layers[0], LAZY_XATTR, os.fsencode(long_path))
    fs = await overlay.mount()
    assert await fs.read("a") == A
    assert lazy.requests == [(str(overlay.layers[0]), "a")]
