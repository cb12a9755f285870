"""fsd has the kernel cache symlink targets (FUSE_CACHE_SYMLINKS: one
READLINK per symlink, not one per path walk through it).  What that must
not change: a name whose symlink is replaced, by a new link or a rename
over it, shows the new target at once, and a copy-up keeps the target, as
through the kernel overlay, whose answers these are."""

from __future__ import annotations

import os
import pathlib

import pytest

from support.layergen import make_layers


@pytest.mark.parametrize("how", ["unlink+symlink", "rename over", "copy-up (lchown)"])
def test_a_cached_target_follows_its_symlink(tmp_path, mount_fsd, mount_kernel_overlay, how):
    top, bottom = make_layers(tmp_path / "layers", 2)
    os.symlink("lower-target", bottom / "link")
    os.symlink("other-target", bottom / "other")
    for d in ("upper", "work", "kupper", "kwork"):
        (tmp_path / d).mkdir()
    mnt = mount_fsd([top, bottom], tmp_path / "upper", tmp_path / "work").mnt
    kernel = mount_kernel_overlay([top, bottom], tmp_path / "kupper", tmp_path / "kwork")

    def change(root: pathlib.Path) -> list[str]:
        seen = [os.readlink(root / "link") for _ in range(2)]  # the target is now cached
        if how == "unlink+symlink":
            os.unlink(root / "link")
            os.symlink("new-target", root / "link")
        elif how == "rename over":
            os.rename(root / "other", root / "link")
        else:
            os.chown(root / "link", 1234, 4321, follow_symlinks=False)
        return seen + [os.readlink(root / "link"), os.readlink(root / "link")]

    assert change(mnt) == change(kernel)
