"""override_stat values as containers/storage and fuse-overlayfs write them."""

import os
import stat

from fsd.ondisk import format_override, parse_override


def test_device_numbers_past_255_survive_the_override_xattr():
    # major:minor as the kernel's dev_t holds them, minors of 256 and more too
    uid, gid, mode, rdev = parse_override(b"0:6:0660:block-7-300")
    assert (uid, gid, mode) == (0, 6, stat.S_IFBLK | 0o660)
    assert (os.major(rdev), os.minor(rdev)) == (7, 300)
    assert format_override(0, 6, mode, rdev) == b"0:6:0660:block-7-300"
    assert parse_override(b"0:0:0666:char-1-7")[3] == os.makedev(1, 7)
