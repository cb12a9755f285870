"""fsd through mount.fuse3 and mount(8), as /etc/fstab uses it, with the fsd
under test and nothing changed outside the test's temp dir.

mount.fuse3 runs `TYPE SOURCE MNT -o OPTS` through /bin/sh: `fsd` is looked
up in the PATH mount.fuse3 was given.  mount(8) gives its helpers none (it
drops PATH from the environment), so through mount(8) the shell's default
PATH finds whichever fsd is in /usr/local/bin - another checkout's, maybe;
`scripts/install --system` puts this one there.  The tests never rely on it:
- `-t fuse.fsd` runs mount.fuse3 itself, with the argv mount(8) gives it and a
  PATH whose first directory holds this checkout's fsd;
- through mount(8) (`mount -t fuse`, an fstab line) the source names the
  program by its absolute path, `/path/to/fsd#SOURCE`, which mount.fuse3
  takes as the type.
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


@pytest.fixture
def mount_helper(fuse_root):
    helper = shutil.which("mount.fuse3", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if helper is None:
        pytest.skip("needs mount.fuse3 (fuse3)")
    return helper


@pytest.fixture
def fsd_path_dir(tmp_path) -> Path:
    """A directory holding `fsd`, a link to the fsd under test: first in the
    PATH given to mount.fuse3, and an absolute program name for mount(8)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(mounts.fsd_executable(), bindir / "fsd")
    return bindir


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


def _mount(argv, cwd, env=None) -> mounts.Result:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=cwd,
                       stdin=subprocess.DEVNULL, env=env)
    return mounts.Result(argv, r.returncode, r.stdout, r.stderr)


def _under_test(pids: list[int]) -> None:
    """The daemons serving the mount run the fsd under test (a script: argv
    is the venv's python, the argument of its #! line (-S), then the script
    as it was named)."""
    assert pids, "no fsd daemon serves the mount"
    want = os.path.realpath(mounts.fsd_executable())
    for pid in pids:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:3]
        assert want in (os.path.realpath(os.fsdecode(a)) for a in argv if a), \
            f"fsd {pid} is not the fsd under test {want}: {argv}"


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


def test_mount_t_fuse_fsd_and_umount_ends_the_daemon(mount_helper, fsd_path_dir, mount_fsd, fsd_log,
                                                     stack, tmp_path):
    top, bottom, upper, work = stack
    mnt = mount_fsd.new_mountpoint()
    opts = ",".join([*mounts.overlay_opts([top, bottom], upper, work), f"logfile={fsd_log.new_path()}"])
    # what `mount -t fuse.fsd -o OPTS fsd MNT` runs, with this checkout's fsd first in PATH
    path = f"{fsd_path_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    r = _mount([mount_helper, "fsd", str(mnt), "-o", opts, "-t", "fuse.fsd"], cwd=tmp_path,
               env=dict(os.environ, PATH=path))
    mount_fsd.track(mnt)
    assert r.returncode == 0, r.describe()
    assert mounts.is_mounted(mnt, mounts.FSD_FSTYPE), f"not a fuse.fsd mount: {mounts.mounts_at(mnt)}"
    pids = mounts.pids_with_arg(str(mnt))
    _under_test(pids)
    _check_merged(mnt)
    (mnt / "new.txt").write_text("new")
    with open(mnt / "top.txt", "a") as f:
        f.write("+")
    assert (mnt / "top.txt").read_text() == "top+"
    _umount_and_wait(mnt, pids)
    assert (upper / "new.txt").read_text() == "new"
    assert (upper / "top.txt").read_text() == "top+"
    assert (top / "top.txt").read_text() == "top"


def test_mount_8_read_only_without_upper(mount_helper, fsd_path_dir, mount_fsd, fsd_log, stack,
                                        tmp_path):
    top, bottom, _, _ = stack
    mnt = mount_fsd.new_mountpoint()
    opts = ",".join([*mounts.overlay_opts([top, bottom]), f"logfile={fsd_log.new_path()}"])
    r = _mount(["mount", "-t", "fuse", "-o", opts, f"{fsd_path_dir}/fsd#fsd", str(mnt)],
               cwd=tmp_path)
    mount_fsd.track(mnt)
    assert r.returncode == 0, r.describe()
    assert mounts.is_mounted(mnt, mounts.FSD_FSTYPE), f"not a fuse.fsd mount: {mounts.mounts_at(mnt)}"
    pids = mounts.pids_with_arg(str(mnt))
    _under_test(pids)
    _check_merged(mnt)
    with pytest.raises(OSError) as exc:
        (mnt / "new.txt").write_text("x")
    assert exc.value.errno == errno.EROFS
    _umount_and_wait(mnt, pids)


def test_fstab_line_mounts_fsd(mount_helper, fsd_path_dir, mount_fsd, fsd_log, stack, tmp_path):
    top, bottom, upper, work = stack
    mnt = mount_fsd.new_mountpoint()
    opts = ",".join(["noauto", *mounts.overlay_opts([top, bottom], upper, work),
                     f"logfile={fsd_log.new_path()}"])
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{fsd_path_dir}/fsd#fsd {mnt} fuse {opts} 0 0\n")
    r = _mount(["mount", "--fstab", str(fstab), str(mnt)], cwd=tmp_path)
    mount_fsd.track(mnt)
    assert r.returncode == 0, r.describe()
    assert mounts.is_mounted(mnt, mounts.FSD_FSTYPE)
    pids = mounts.pids_with_arg(str(mnt))
    _under_test(pids)
    _check_merged(mnt)
    (mnt / "dir" / "n").write_text("n")
    _umount_and_wait(mnt, pids)
    assert (upper / "dir" / "n").read_text() == "n"


def test_scripts_install_links_fsd_machine_wide_only_when_asked(fuse_root):
    """scripts/install (which scripts/test and scripts/run call) leaves
    /usr/local/bin alone; --system links fsd there.  Run in a private mount
    namespace over an empty /usr/local/bin: the machine's stays as it is."""
    install = mounts.REPO / "scripts" / "install"
    script = "\n".join([
        "set -e",
        "mount -t tmpfs strata-install-test /usr/local/bin",
        f"{install} 2>/dev/null",
        "ls -A /usr/local/bin",
        "echo --",
        f"{install} --system 2>/dev/null",
        "readlink /usr/local/bin/fsd",
    ])
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script],
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n") == ["--", str(mounts.REPO / ".venv" / "bin" / "fsd"), ""], \
        "scripts/install without --system put something in /usr/local/bin:\n" + r.stdout
