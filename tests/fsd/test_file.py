"""In-process tests of fsd/file.py: opening files."""

from __future__ import annotations

import os


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
    assert await fs.ops.read(held, 0, 100) == b"data+more"
    await fs.ops.release(fh)
    await fs.ops.release(held)
