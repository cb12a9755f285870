"""fsd through mount(8) and mount.fuse3: `mount -t fuse.fsd -o OPTS fsd MNT`
and an fstab line, so that fsd can be used from /etc/fstab.

mount.fuse3 runs `fsd SOURCE MNT -o OPTS` through /bin/sh with no PATH of the
caller's (mount(8) drops it), so `fsd` must be found in the shell's default
PATH - /usr/local/bin for an installed fsd. The tests check that the fsd found
there is the one under test, and skip, naming what to install, if it is not.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support import mounts
from support.layergen import write


def _fsd_for_mount() -> str | None:
    """The `fsd` that mount.fuse3's /bin/sh runs (mount(8) gives it no PATH)."""
    r = subprocess.run(["env", "-u", "PATH", "/bin/sh", "-c", "command -v fsd"],
                       capture_output=True, text=True)
    return r.stdout.strip() or None


@pytest.fixture
def mount_helper(fuse_root):
    helper = shutil.which("mount.fuse3", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if helper is None:
        pytest.skip("needs mount.fuse3 (fuse3)")
    found = _fsd_for_mount()
    want = os.path.realpath(mounts.fsd_executable())
    if found is None:
        pytest.skip("mount -t fuse.fsd runs `fsd` from /bin/sh's default PATH and there is none: "
                    f"scripts/install must link /usr/local/bin/fsd -> {want}")
    if os.path.realpath(found) != want:
        pytest.skip(f"mount -t fuse.fsd would run {found} (-> {os.path.realpath(found)}), "
                    f"not the fsd under test {want}: scripts/install must link /usr/local/bin/fsd to it")
    return found


@pytest.fixture
def stack(tmp_path):
    top, bottom = tmp_path / "layers/top", tmp_path / "layers/bottom"
    write(top, "top.txt", "top")
    write(top, "dir/t", "t")
    write(bottom, "bottom.txt", "bottom")
    write(bottom, "dir/b", "b")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    return top, bottom, upper, work


def _mount(argv, cwd) -> mounts.Result:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=cwd,
                       stdin=subprocess.DEVNULL)
    return mounts.Result(argv, r.returncode, r.stdout, r.stderr)


def _check_merged(mnt: Path):
    assert sorted(os.listdir(mnt)) == ["bottom.txt", "dir", "top.txt"]
    assert sorted(os.listdir(mnt / "dir")) == ["b", "t"]
    assert (mnt / "bottom.txt").read_text() == "bottom"


def _umount_and_wait(mnt: Path, pids: list[int]):
    r = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"umount {mnt}: {r.stderr}"
    assert mounts.wait_for(lambda: not mounts.is_mounted(mnt), 10), f"{mnt} still mounted after umount"
    left = mounts.wait_exited(pids, 10)
    assert not left, f"fsd {left} still running 10 s after umount {mnt}"


def test_mount_t_fuse_fsd_and_umount_ends_the_daemon(mount_helper, mount_fsd, fsd_log, stack, tmp_path):
    top, bottom, upper, work = stack
    mnt = mount_fsd.new_mountpoint()
    opts = ",".join([*mounts.overlay_opts([top, bottom], upper, work), f"logfile={fsd_log.new_path()}"])
    r = _mount(["mount", "-t", "fuse.fsd", "-o", opts, "fsd", str(mnt)], cwd=tmp_path)
    mount_fsd.track(mnt)
    assert r.returncode == 0, r.describe()
    assert mounts.is_mounted(mnt, mounts.FSD_FSTYPE), f"not a fuse.fsd mount: {mounts.mounts_at(mnt)}"
    pids = mounts.pids_with_arg(str(mnt))
    assert pids, "no fsd daemon serves the mount"
    _check_merged(mnt)
    (mnt / "new.txt").write_text("new")
    with open(mnt / "top.txt", "a") as f:
        f.write("+")
    assert (mnt / "top.txt").read_text() == "top+"
    _umount_and_wait(mnt, pids)
    assert (upper / "new.txt").read_text() == "new"
    assert (upper / "top.txt").read_text() == "top+"
    assert (top / "top.txt").read_text() == "top"


def test_mount_t_fuse_fsd_read_only_without_upper(mount_helper, mount_fsd, fsd_log, stack, tmp_path):
    top, bottom, _, _ = stack
    mnt = mount_fsd.new_mountpoint()
    opts = ",".join([*mounts.overlay_opts([top, bottom]), f"logfile={fsd_log.new_path()}"])
    r = _mount(["mount", "-t", "fuse.fsd", "-o", opts, "fsd", str(mnt)], cwd=tmp_path)
    mount_fsd.track(mnt)
    assert r.returncode == 0, r.describe()
    pids = mounts.pids_with_arg(str(mnt))
    _check_merged(mnt)
    with pytest.raises(OSError) as exc:
        (mnt / "new.txt").write_text("x")
    assert exc.value.errno == errno.EROFS
    _umount_and_wait(mnt, pids)


def test_fstab_line_mounts_fsd(mount_helper, mount_fsd, fsd_log, stack, tmp_path):
    top, bottom, upper, work = stack
    mnt = mount_fsd.new_mountpoint()
    opts = ",".join(["noauto", *mounts.overlay_opts([top, bottom], upper, work),
                     f"logfile={fsd_log.new_path()}"])
    fstab = tmp_path / "fstab"
    fstab.write_text(f"fsd {mnt} fuse.fsd {opts} 0 0\n")
    r = _mount(["mount", "--fstab", str(fstab), str(mnt)], cwd=tmp_path)
    mount_fsd.track(mnt)
    assert r.returncode == 0, r.describe()
    assert mounts.is_mounted(mnt, mounts.FSD_FSTYPE)
    pids = mounts.pids_with_arg(str(mnt))
    _check_merged(mnt)
    (mnt / "dir" / "n").write_text("n")
    _umount_and_wait(mnt, pids)
    assert (upper / "dir" / "n").read_text() == "n"
