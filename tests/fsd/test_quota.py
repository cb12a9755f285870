"""Usage limits (fsd/quota.py), in-process: the usage fsd keeps by following
every change equals a fresh measure of the upper, and a limit is enforced
before anything is written."""

from __future__ import annotations

import errno
import os

from harness import fails

from support.layergen import write

LIMITS = ("quota_bytes=100M", "quota_inodes=1000")


async def free(fs) -> tuple[int, int]:
    sv = await fs.statfs()
    return sv.f_bfree, sv.f_ffree


async def test_the_usage_kept_through_every_kind_of_change_is_what_a_fresh_measure_finds(overlay):
    top, bottom = overlay.lowers(2)
    write(bottom, "d/f", b"x" * 100_000)
    write(bottom, "d/sub/g", b"y" * 50_000)
    write(bottom, "h1", b"z" * 30_000)
    os.link(bottom / "h1", bottom / "h2")
    write(top, "t", b"t" * 20_000)
    fs = await overlay.mount(*LIMITS)
    start = await free(fs)
    await fs.create("new", b"n" * 70_000)
    await fs.write("d/f", b"X")  # copy-up of a file and its directory
    await fs.write("h1", b"Z")  # ... of a hard-linked file
    await fs.unlink("t")
    await fs.mkdir("m")
    for i in range(50):
        await fs.create(f"m/f{i}", b"q" * 5000)
    await fs.rename("d", "e")  # a merged directory's tree
    await fs.truncate("new", 10)
    await fs.unlink("h2")
    await fs.link("h1", "m/h3")
    await fs.rename("m/f1", "m/f2")
    await fs.symlink("x" * 2000, "long-link")
    await fs.unlink("e/sub/g")
    await fs.rmdir("e/sub")
    await fs.create("x1", b"1" * 9000)
    await fs.create("x2", b"2" * 19000)
    await fs.rename("x1", "x2")
    await fs.rename("x2", "h1", 2)  # RENAME_EXCHANGE
    await fs.chmod("e/f", 0o600)
    kept = await free(fs)
    assert kept != start
    fs = await overlay.remount(fs, *LIMITS)
    assert await free(fs) == kept


async def test_a_limit_is_enforced_before_anything_is_written(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "x")
    fs = await overlay.mount("quota_inodes=3")
    await fs.create("a")
    await fs.create("b")
    with fails(errno.EDQUOT):
        await fs.create("c")
    with fails(errno.EDQUOT):
        await fs.write("f", b"y")  # a copy-up is one more object
    assert sorted(os.listdir(overlay.upper)) == ["a", "b"]
