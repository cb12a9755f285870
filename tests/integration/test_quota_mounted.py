"""fsd's quota_bytes= and quota_inodes=: limits on the upper, enforced on any filesystem."""

from __future__ import annotations

import errno
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

MiB = 1 << 20


@pytest.fixture
def layers(tmp_path):
    lower, upper, work = (tmp_path / n for n in ("lower", "upper", "work"))
    for d in (lower, upper, work):
        d.mkdir()
    with open(lower / "big40", "wb") as f:
        f.write(os.urandom(40 * MiB))
    (lower / "small").write_bytes(b"lower data\n")
    return lower, upper, work


def upper_usage(upper: Path) -> tuple[int, int]:
    """(allocated bytes, inodes) of the upper, hard links once: what fsd must agree with."""
    seen = {}
    for path in [upper, *upper.rglob("*")]:
        st = os.lstat(path)
        seen[st.st_ino] = st.st_blocks * 512
    return sum(seen.values()), len(seen)


def mounted_usage(mnt: Path) -> tuple[int, int]:
    sv = os.statvfs(mnt)
    return (sv.f_blocks - sv.f_bfree) * sv.f_frsize, sv.f_files - sv.f_ffree


def write_until_refused(path: Path, total: int, chunk: int = MiB) -> tuple[int, int | None]:
    """Write `total` bytes in chunks; (bytes accepted, errno that stopped it)."""
    done = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while done < total:
            try:
                done += os.write(fd, b"\xab" * min(chunk, total - done))
            except OSError as exc:
                return done, exc.errno
    finally:
        os.close(fd)
    return done, None


def test_byte_quota_write_copy_up_free_and_remount(layers, mount_fsd):
    lower, upper, work = layers
    m = mount_fsd([lower], upper, work, extra_opts=("quota_bytes=50M",)).mnt
    sv = os.statvfs(m)
    assert sv.f_blocks * sv.f_frsize == 50 * MiB, "df in the mount shows the quota as the size"

    accepted, err = write_until_refused(m / "f60", 60 * MiB)
    assert err == errno.EDQUOT
    assert 49 * MiB < accepted <= 50 * MiB
    assert os.path.getsize(m / "f60") == accepted, "the file holds exactly what was accepted"
    assert (m / "f60").read_bytes() == b"\xab" * accepted

    os.unlink(m / "f60")
    accepted, err = write_until_refused(m / "f20", 20 * MiB)
    assert (accepted, err) == (20 * MiB, None), "removing a file frees its usage at once"

    with pytest.raises(OSError) as refused:
        with open(m / "big40", "ab") as f:
            f.write(b"+")
    assert refused.value.errno == errno.EDQUOT, "a 40 MiB copy-up into 20 MiB used must be refused"
    assert not (upper / "big40").exists(), "nothing partial in the upper"
    assert os.listdir(work / "fsd" / "tmp") == [], "nothing partial in the work area"
    assert os.path.getsize(lower / "big40") == 40 * MiB
    assert os.path.getsize(m / "big40") == 40 * MiB

    os.unlink(m / "f20")
    with open(m / "big40", "ab") as f:
        f.write(b"+")
    assert os.path.getsize(m / "big40") == 40 * MiB + 1

    used = mounted_usage(m)
    assert abs(used[0] - upper_usage(upper)[0]) <= 4096, (used, upper_usage(upper))


def test_usage_after_remount_matches_a_walk(layers, mount_fsd):
    lower, upper, work = layers
    fm = mount_fsd([lower], upper, work, extra_opts=("quota_bytes=80M", "quota_inodes=1000"))
    m = fm.mnt
    (m / "d").mkdir()
    for i in range(20):
        (m / "d" / f"f{i}").write_bytes(os.urandom(i * 10000))
    os.link(m / "d" / "f5", m / "d" / "f5-link")
    os.unlink(m / "small")
    with open(m / "big40", "ab") as f:
        f.write(b"x")
    os.rename(m / "d", m / "e")
    before = mounted_usage(m)
    fm.unmount()
    walked = upper_usage(upper)
    m = mount_fsd([lower], upper, work, extra_opts=("quota_bytes=80M", "quota_inodes=1000")).mnt
    after = mounted_usage(m)
    assert after[1] == walked[1] == before[1], "inodes: kept count, remount and a walk agree"
    assert abs(after[0] - walked[0]) <= 4096 and abs(before[0] - walked[0]) <= 8192, (before, after, walked)


def test_inode_quota(layers, mount_fsd):
    lower, upper, work = layers
    m = mount_fsd([lower], upper, work, extra_opts=("quota_inodes=10",)).mnt
    made = 0
    with pytest.raises(OSError) as refused:
        for i in range(20):
            (m / f"n{i}").touch()
            made += 1
    assert refused.value.errno == errno.EDQUOT
    assert made == 10 - 1, "the upper root counts as one object"
    assert sorted(os.listdir(upper)) == sorted(f"n{i}" for i in range(made))
    os.unlink(m / "n0")
    (m / "again").touch()


def _racer(path: str, chunk: int, out) -> None:
    done, err = write_until_refused(Path(path), 100 * MiB, chunk)
    out.put((done, err))


def test_racing_writers_never_pass_the_limit_by_more_than_one_write(layers, mount_fsd):
    lower, upper, work = layers
    m = mount_fsd([lower], upper, work, extra_opts=("quota_bytes=30M",)).mnt
    chunk = 256 * 1024
    out = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_racer, args=(str(m / f"w{i}"), chunk, out)) for i in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    assert all(err == errno.EDQUOT for _, err in results), results
    assert sum(done for done, _ in results) <= 30 * MiB + chunk
    used, _ = upper_usage(upper)
    assert used <= 30 * MiB + chunk + 64 * 1024


def test_quota_needs_an_upper_and_a_valid_size(tmp_path, mount_fsd):
    lower = tmp_path / "lower"
    lower.mkdir()
    mnt = mount_fsd.new_mountpoint()
    r = mount_fsd.run(["-o", f"lowerdir={lower},quota_bytes=1M", str(mnt)])
    assert r.returncode != 0 and "quota_bytes and quota_inodes need an upperdir" in r.stderr
    upper, work = tmp_path / "u", tmp_path / "w"
    upper.mkdir()
    work.mkdir()
    r = mount_fsd.run(["-o", f"lowerdir={lower},upperdir={upper},workdir={work},quota_bytes=lots", str(mnt)])
    assert r.returncode != 0 and "bad value for option 'quota_bytes': 'lots'" in r.stderr
    assert stat.S_ISDIR(os.stat(mnt).st_mode)
