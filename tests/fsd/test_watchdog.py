"""The watchdog of requests (fsd/watchdog.py), in-process: a request in flight
longer than the limit is logged once, naming its operation, inode and what it
waits on.  Time is trio's MockClock, moved by the test a second at a time
while every task waits: the test takes no real time and depends on none."""

from __future__ import annotations

import logging

import trio
import trio.testing

from fsd.watchdog import LIMIT
from support.layergen import write


async def test_requests_held_by_a_directory_move_are_reported_once(overlay, monkeypatch, caplog, mock_clock):
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/f", "x")
    fs = await overlay.mount()
    d = await fs.ino("d")
    overlay.expect_log(r"request (rename|mkdir) .* in flight")
    # The move's tree copy is held until the test lets it go.
    real_run_sync = trio.to_thread.run_sync
    moving, mover_may_go = trio.Event(), trio.Event()
    tasks = {}

    async def held_run_sync(fn, *args, **kw):
        if trio.lowlevel.current_task() is tasks.get("mover"):
            moving.set()
            await mover_may_go.wait()
        return await real_run_sync(fn, *args, **kw)

    monkeypatch.setattr(trio.to_thread, "run_sync", held_run_sync)

    async def mover():
        tasks["mover"] = trio.lowlevel.current_task()
        await fs.rename("d", "e")

    async def seconds_pass(count: int):
        for _ in range(count):
            mock_clock.jump(1)
            await trio.testing.wait_all_tasks_blocked()

    async with trio.open_nursery() as watching:
        watching.start_soon(fs.ops.requests.watch)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mover)
            await moving.wait()
            nursery.start_soon(fs.mkdir, "new")
            await trio.testing.wait_all_tasks_blocked()
            await seconds_pass(3 * int(LIMIT))  # three times the limit: still one report each
            mover_may_go.set()
        await seconds_pass(3 * int(LIMIT))  # once they have ended, nothing more
        watching.cancel_scope.cancel()
    reports = sorted(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert reports == [
        f"request mkdir (parent inode 1) in flight for {LIMIT + 1:.0f} s, waiting on: "
        f"the move of directory inode {d}",
        f"request rename (parent inode 1) in flight for {LIMIT + 1:.0f} s, waiting on: "
        f"a worker thread copying the tree of b'd'",
    ]
    assert sorted(await fs.listdir("")) == [b"e", b"new"]
