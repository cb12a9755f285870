import os
import subprocess
import sys
import textwrap

import pytest

from layers import fsutil
from layers.errors import StoreLocked, UnsafeArchive


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "rec.json"
    fsutil.atomic_write(str(target), b"one")
    fsutil.atomic_write(str(target), b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["rec.json"]


def test_store_lock_names_its_holder(tmp_path):
    path = str(tmp_path / "lock")
    with fsutil.StoreLock(path):
        other = fsutil.StoreLock(path, timeout=0.05)
        with pytest.raises(StoreLocked) as e:
            other.acquire()
    assert str(e.value) == (f"store {tmp_path} is locked by pid {os.getpid()}; "
                            "gave up after 0.05s")
    with fsutil.StoreLock(path, timeout=0.05):   # released: free again
        pass


def test_store_lock_of_a_killed_holder_is_free(tmp_path):
    path = str(tmp_path / "lock")
    code = textwrap.dedent(f"""
        import os, signal
        from layers import fsutil
        lock = fsutil.StoreLock({path!r}); lock.acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    subprocess.run([sys.executable, "-c", code])
    with fsutil.StoreLock(path, timeout=0.5):
        pass


def test_lease_is_alive_while_held_and_dead_after_the_process(tmp_path):
    lease = fsutil.Lease(str(tmp_path))
    assert fsutil.lease_alive(str(tmp_path), lease.token)
    lease.close()
    assert not os.path.exists(lease.path)
    assert not fsutil.lease_alive(str(tmp_path), lease.token)
    code = textwrap.dedent(f"""
        import os, signal
        from layers import fsutil
        lease = fsutil.Lease({str(tmp_path)!r}); print(lease.token, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    token = subprocess.run([sys.executable, "-c", code], capture_output=True,
                           text=True).stdout.strip()
    assert os.path.isdir(tmp_path / token)
    assert not fsutil.lease_alive(str(tmp_path), token)
    for bad in (None, "", "../x", ".hidden"):
        assert not fsutil.lease_alive(str(tmp_path), bad)


def test_remove_tree_handles_read_only_dirs(tmp_path):
    top = tmp_path / "t"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "f").write_text("x")
    (top / "a" / "b").chmod(0o500)
    (top / "a").chmod(0)
    fsutil.remove_tree(str(top))
    assert not top.exists()
    fsutil.remove_tree(str(top))     # absent: fine


def test_open_beneath_refuses_symlinks_and_dotdot(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    os.symlink("/etc", tmp_path / "link")
    os.symlink("f", tmp_path / "d" / "lf")
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(fsutil.open_beneath(dfd, "d/f"))
        for bad, reason in (("link/passwd", "path goes through a symlink"),
                            ("d/lf", "is a symlink"),
                            ("../x", "path leaves the archive"),
                            ("/etc/passwd", "path leaves the archive")):
            with pytest.raises(UnsafeArchive) as e:
                fsutil.open_beneath(dfd, bad)
            assert e.value.reason == reason
    finally:
        os.close(dfd)


def test_allocated_size_counts_hard_links_once(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 100_000)
    one = fsutil.allocated_size(str(tmp_path))
    os.link(tmp_path / "f", tmp_path / "g")
    assert fsutil.allocated_size(str(tmp_path)) == one
    st = os.stat(tmp_path / "f")
    assert one >= st.st_blocks * 512


def test_clone_file_copies_data(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 << 20))
    s = os.open(src, os.O_RDONLY)
    d = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT, 0o600)
    fsutil.clone_file(s, d)
    os.close(s)
    os.close(d)
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()


def test_crash_point_only_fires_when_named(monkeypatch):
    monkeypatch.setenv("STRATA_CRASH_AT", "elsewhere")
    fsutil.crash_point("here")   # still alive
