"""fsd's life: start in the background or the foreground, failure, and every way it ends."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import threading
import time

import pytest

from support import mounts
from support.fixtures import Deadline
from support.layergen import make_layers, write


@pytest.fixture
def stack(tmp_path):
    top, bottom = make_layers(tmp_path / "layers", 2)
    write(top, "top.txt", "top")
    write(bottom, "bottom.txt", "bottom")
    write(bottom, "dir/deep.txt", "deep")
    return [top, bottom]


def _opts(stack, log=None):
    o = ",".join(mounts.overlay_opts(stack))
    return o + (f",logfile={log}" if log else "")


def _check_content(mnt):
    assert sorted(os.listdir(mnt)) == ["bottom.txt", "dir", "top.txt"]
    assert (mnt / "dir" / "deep.txt").read_text() == "deep"


def _daemon_pids(m) -> list[int]:
    """The fsd processes of a mount (not a fusermount3 helper)."""
    out = []
    for pid in m.pids:
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
        except OSError:
            continue
        if not comm.startswith("fusermount"):
            out.append(pid)
    assert out, f"no fsd daemon among {m.pids}"
    return out


# -- starting --------------------------------------------------------------------------

def test_background_start_returns_only_when_mounted(stack, mount_fsd, fsd_log):
    for i in range(5):
        mnt = mount_fsd.new_mountpoint()
        r = mount_fsd.run(["-o", _opts(stack, fsd_log.new_path()), mnt], mnt)
        # no waiting: the mount is live the moment fsd returns 0
        assert r.returncode == 0, r.describe()
        assert mounts.is_mounted(mnt, mounts.FSD_FSTYPE), f"round {i}: returned before the mount was live"
        _check_content(mnt)


def test_background_daemon_outlives_its_starter_and_keeps_serving(stack, mount_fsd):
    m = mount_fsd(stack)
    pids = _daemon_pids(m)
    time.sleep(1)
    assert all(mounts.alive(p) for p in pids)
    _check_content(m.mnt)
    for p in pids:  # detached: not in the starter's session, not holding its terminal
        assert os.getsid(p) != os.getsid(0)


def test_a_started_daemon_is_named_fsd_and_loaded_no_tls_library(stack, mount_fsd):
    # fsd/startup.py: trio's TLS support is imported but never run, so libssl
    # and libcrypto are never mapped; the process keeps its name (podman's
    # bench and ps find the daemons by it)
    m = mount_fsd(stack)
    _check_content(m.mnt)
    for pid in _daemon_pids(m):
        assert open(f"/proc/{pid}/comm").read().strip() == "fsd"
        libraries = {line.split()[-1].rpartition("/")[2] for line in open(f"/proc/{pid}/maps")
                     if "/" in line}
        assert not {lib for lib in libraries if lib.startswith(("libssl", "libcrypto"))}, libraries


def test_background_start_releases_inherited_pipes(stack, mount_fsd, tmp_path):
    """A caller that reads fsd's output (podman does) must see EOF when fsd returns."""
    mnt = mount_fsd.new_mountpoint()
    try:
        r = subprocess.run([mounts.fsd_executable(), "-o", _opts(stack), str(mnt)],
                           capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail("fsd's background daemon kept the caller's stdout/stderr pipes open")
    finally:
        mount_fsd.track(mnt)
    assert r.returncode == 0, r.stderr
    _check_content(mnt)


def test_foreground_stays_until_sigterm(stack, mount_fsd):
    mnt = mount_fsd.new_mountpoint()
    m = mount_fsd.popen(["-f", "-o", _opts(stack), mnt], mnt)
    time.sleep(0.5)
    assert m.proc.poll() is None, "fsd -f returned while mounted:\n" + m.output()
    assert m.proc.pid in mounts.pids_with_arg(str(mnt))
    _check_content(mnt)
    m.proc.send_signal(signal.SIGTERM)
    m.wait_gone()
    assert m.proc.returncode == 0, m.output()


def test_foreground_ends_on_fusermount(stack, mount_fsd):
    mnt = mount_fsd.new_mountpoint()
    m = mount_fsd.popen(["-f", "-o", _opts(stack), mnt], mnt)
    _check_content(mnt)
    m.unmount("fusermount3")
    assert m.proc.returncode == 0, m.output()


def test_debug_logs_requests(stack, mount_fsd):
    mnt = mount_fsd.new_mountpoint()
    m = mount_fsd.popen(["-f", "-d", "-o", _opts(stack), mnt], mnt)
    before = len(m.output())
    for _ in range(3):
        os.listdir(mnt)
        os.path.exists(mnt / "no-such-name-for-debug")
    assert mounts.wait_for(lambda: len(m.output()) > before, 5), "fsd -d logged nothing for requests"
    m.unmount("fusermount3")


# -- failing ----------------------------------------------------------------------------------

def test_early_failure_leaves_nothing(stack, mount_fsd, tmp_path):
    mnt = mount_fsd.new_mountpoint()
    r = mount_fsd.run(["-o", f"lowerdir={stack[0]}:{tmp_path}/nope", mnt], mnt)
    assert r.returncode not in (0, None)
    assert not mounts.mounts_at(mnt)
    assert mounts.wait_exited(mounts.pids_with_arg(str(mnt)), 5) == []


def test_second_mount_of_an_upper_names_the_daemon_holding_it(stack, mount_fsd, fsd_log, tmp_path):
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    (holder,) = _daemon_pids(mount_fsd(stack, upper, work))
    mnt = mount_fsd.new_mountpoint()
    opts = ",".join([*mounts.overlay_opts(stack, upper, work), f"logfile={fsd_log.new_path()}"])
    r = mount_fsd.run(["-o", opts, mnt], mnt)
    assert (r.returncode, r.stderr) == (1, f"fsd: upperdir '{upper}' and workdir '{work}' are in use "
                                           f"by another mount (pid {holder})\n"), r.describe()
    assert not mounts.mounts_at(mnt)


def test_mount_waits_for_the_daemon_still_holding_its_work_area(stack, mount_fsd, fsd_log, tmp_path):
    """A remount right after `fusermount3 -u`: the old daemon, still exiting,
    holds the work area's lock a moment longer.  Here the test holds it until
    the new fsd has opened the lock file, then lets go: fsd waits, and mounts."""
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    (work / "fsd").mkdir(parents=True, mode=0o700)
    opts = ",".join([*mounts.overlay_opts(stack, upper, work), f"logfile={fsd_log.new_path()}"])
    lock = work / "fsd" / "lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    mnt = mount_fsd.new_mountpoint()
    result = {}
    starter = threading.Thread(target=lambda: result.update(r=mount_fsd.run(["-o", opts, mnt], mnt)))
    starter.start()
    try:
        assert mounts.wait_for(lambda: _has_open(mounts.pids_with_arg(str(mnt)), lock), 30), \
            "fsd never opened its work area's lock"
        time.sleep(0.1)  # fsd tries the lock right after opening it
    finally:
        os.close(fd)
        starter.join(60)
    assert result["r"].returncode == 0, result["r"].describe()
    assert mounts.is_mounted(mnt, mounts.FSD_FSTYPE)


def _has_open(pids, path) -> bool:
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                    return True
            except OSError:
                pass
    return False


NO_FUSE_DEV = {
    # /dev without a fuse node (a tmpfs with only null, zero, urandom)
    "missing": """mkdir -p "$T/olddev" && mount --bind /dev "$T/olddev" && mount -t tmpfs tmpfs /dev &&
        for n in null zero urandom random; do touch /dev/$n; mount --bind "$T/olddev/$n" /dev/$n; done""",
    # /dev/fuse is a regular file: it opens, and the kernel mount itself fails
    "not a device": """touch "$T/fake-fuse" && mount --bind "$T/fake-fuse" /dev/fuse""",
}


@pytest.mark.parametrize("dev", NO_FUSE_DEV)
def test_no_usable_dev_fuse_fails_cleanly(stack, mount_fsd, tmp_path, dev):
    """Run in a private mount namespace where /dev/fuse is missing or unusable."""
    mnt = mount_fsd.new_mountpoint()
    script = NO_FUSE_DEV[dev] + ' && exec "$FSD" -o "$OPTS" "$MNT"'
    env = dict(os.environ, T=str(tmp_path), FSD=mounts.fsd_executable(), OPTS=_opts(stack), MNT=str(mnt))
    try:
        r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                           capture_output=True, text=True, env=env, timeout=30, stdin=subprocess.DEVNULL)
    finally:
        mount_fsd.track(mnt)
    assert r.returncode != 0, f"fsd succeeded without a usable /dev/fuse: {r.stderr}"
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fsd: "), f"want one 'fsd: ' line, got: {r.stderr!r}"
    assert "fuse" in lines[0], lines[0]
    assert mounts.wait_exited(mounts.pids_with_arg(str(mnt)), 5) == [], "fsd left running"


# -- ending ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_ends_background_daemon(stack, mount_fsd, sig):
    m = mount_fsd(stack)
    _check_content(m.mnt)
    for p in _daemon_pids(m):
        os.kill(p, sig)
    m.wait_gone()


@pytest.mark.parametrize("how", ["fusermount3", "umount"])
def test_unmount_ends_background_daemon(stack, mount_fsd, how):
    m = mount_fsd(stack)
    _check_content(m.mnt)
    m.unmount(how)


def test_sigterm_with_the_mount_busy(stack, mount_fsd):
    """An open file and a process whose cwd is in the mount do not keep fsd alive."""
    m = mount_fsd(stack)
    f = open(m.mnt / "dir" / "deep.txt")
    sleeper = subprocess.Popen(["sleep", "60"], cwd=m.mnt / "dir")
    try:
        for p in _daemon_pids(m):
            os.kill(p, signal.SIGTERM)
        left = mounts.wait_exited(m.pids, 10)
        assert not left, f"fsd {left} still running 10s after SIGTERM with the mount busy"
        assert mounts.wait_for(lambda: not mounts.is_mounted(m.mnt), 5), "still mounted"
        m.unmounted = True
    finally:
        try:
            f.close()  # its FLUSH may find the connection gone: ENOTCONN
        except OSError:
            pass
        sleeper.kill()
        sleeper.wait()


# -- the fixtures' own safety nets ------------------------------------------------------------

def test_log_check_finds_error_lines(fsd_log):
    path = fsd_log.new_path("selfcheck")
    path.write_text("2026-01-01 00:00:00,000 fsd[1] WARNING fine\n"
                    "2026-01-01 00:00:00,000 fsd[1] ERROR handler failed\n")
    assert fsd_log.unexpected_errors() == ["2026-01-01 00:00:00,000 fsd[1] ERROR handler failed"]
    fsd_log.expect_errors("handler failed")
    assert fsd_log.unexpected_errors() == []


@pytest.mark.fsd_errors_expected()  # how fsd reports a connection aborted under it is its own business
def test_deadline_aborts_a_hung_daemon(stack, mount_fsd):
    """A stopped daemon hangs every request; the deadline aborts the connection
    and the hung call fails (ECONNABORTED) instead of hanging the suite."""
    m = mount_fsd(stack)
    deadline = Deadline(1.0)
    deadline.watch_mount(m.mnt)
    pids = _daemon_pids(m)
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(OSError) as exc:
            os.lstat(m.mnt / "never-looked-up-before")
        assert exc.value.errno in (errno.ECONNABORTED, errno.ENOTCONN)
        assert deadline.fired and time.monotonic() - start < 10
    finally:
        deadline.cancel()
        for p in pids:
            os.kill(p, signal.SIGCONT)
    mounts.unmount_fuse(m.mnt, m.pids)
    assert not mounts.mounts_at(m.mnt)
    m.unmounted = True
