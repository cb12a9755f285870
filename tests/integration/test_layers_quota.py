"""Container limits through the store on the fuse driver, for real: `layers
create --size/--inodes` (or storage.conf `size`/`inodes`) reach fsd as
quota_bytes=/quota_inodes=, so writes through the container's mount stop
with EDQUOT and `df` in it shows the limit; `layers df -v` shows each
container's usage against its limits; `user_quota` refuses a create naming
the limit and the usage; `layers info` on this machine's filesystem warns
nothing.  Every mount is undone by the `store_env` fixture, which ends each
test with the store's own check."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers"))

from storetools import file, make_tar, store_env  # noqa: E402,F401

from layers import fsutil  # noqa: E402
from layers.units import size  # noqa: E402

MiB = 1 << 20
pytestmark = pytest.mark.parametrize("store_env", ["fuse"], indirect=True)


@pytest.fixture
def env(store_env, tmp_path):
    tar = make_tar(tmp_path / "base.tar", [file("etc/motd", "hi\n")])
    store_env.ok("import", "-q", str(tar), "--name", "base")
    return store_env


def write_until_refused(path: Path, total: int) -> tuple[int, int | None]:
    done = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while done < total:
            try:
                done += os.write(fd, b"\xab" * min(MiB, total - done))
            except OSError as e:
                return done, e.errno
    finally:
        os.close(fd)
    return done, None


def test_a_50mib_container_stops_at_its_limit(env):
    cid = env.ok("create", "base", "--name", "small", "--size", "50M").out.strip()
    mnt = Path(env.ok("mount", "small").out.strip())

    sv = os.statvfs(mnt)
    assert sv.f_blocks * sv.f_frsize == 50 * MiB, "df in the container shows its limit"
    df = subprocess.run(["df", "-B1", "--output=size", str(mnt)], capture_output=True,
                        text=True, check=True).stdout.split()
    assert df[-1] == str(50 * MiB)

    accepted, err = write_until_refused(mnt / "f60", 60 * MiB)
    assert err == errno.EDQUOT
    assert 49 * MiB < accepted <= 50 * MiB
    assert os.path.getsize(mnt / "f60") == accepted

    upper = env.root / "containers" / cid / "upper"
    used, objects = fsutil.tree_usage(str(upper))
    assert used <= 50 * MiB
    items = json.loads(env.ok("df", "--format", "json").out)[1]["items"]
    assert items[0]["quota"] == {"bytes": 50 * MiB, "inodes": None, "used_bytes": used,
                                 "used_inodes": objects}
    df = env.ok("df", "-v").out
    row = next(line for line in df.splitlines() if line.startswith(cid[:12]))
    assert row.split("  ")[-1] == f"{size(used)} of 52.4MB", row
    assert "MiB" not in df, "one unit style in the whole table"

    os.unlink(mnt / "f60")
    assert write_until_refused(mnt / "f20", 20 * MiB) == (20 * MiB, None)
    env.ok("umount", "small")


def test_storage_conf_limits_are_the_default(env):
    env.conf.write_text('[storage.options]\nsize = "1G"\ninodes = "10"\n')
    cid = env.ok("create", "base", "--name", "few").out.strip()
    mnt = Path(env.ok("mount", "few").out.strip())
    assert os.statvfs(mnt).f_files == 10
    made = 0
    with pytest.raises(OSError) as refused:
        for made in range(1, 20):
            (mnt / f"f{made}").write_bytes(b"")
    assert refused.value.errno == errno.EDQUOT
    upper = env.root / "containers" / cid / "upper"
    assert fsutil.tree_usage(str(upper))[1] == 10, "the upper itself is one of the ten"
    assert not (upper / f"f{made}").exists()
    row = next(line for line in env.ok("df", "-v").lines if line.startswith(cid[:12]))
    assert row.endswith(", 10 of 10 inodes")
    env.ok("umount", "few")


def test_user_quota_refuses_a_create_naming_limit_and_usage(env):
    env.conf.write_text('[storage.options]\nuser_quota = "100M"\n')
    env.ok("create", "base", "--name", "a", "--size", "60M")
    r = env.cli("create", "base", "--name", "b", "--size", "50M")
    assert (r.code, r.err) == (1, f"layers: user_quota exceeded for uid {os.geteuid()}: "
                                  "limit 105MB, in use 62.9MB by 1 container(s); this "
                                  "container asks 52.4MB\n")
    env.ok("create", "base", "--name", "b", "--size", "40M")
    r = env.cli_proc("create", "base", "--name", "c")
    assert (r.code, r.err) == (1, f"layers: user_quota exceeded for uid {os.geteuid()}: "
                                  "limit 105MB, in use 105MB by 2 container(s)\n")
    assert f"user quota of uid {os.geteuid()}: 105MB of 105MB in 2 container(s)" \
        in env.ok("df", "-v").lines
    env.ok("rm", "b")
    env.ok("create", "base", "--name", "c", "--size", "40M")


def test_info_on_this_machine_warns_nothing(env):
    r = env.cli_proc("info")
    assert (r.code, r.err) == (0, "")
    fstype = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(env.root)],
                            capture_output=True, text=True, check=True).stdout.strip()
    facts = dict(line.split(": ", 1) for line in r.out.splitlines())
    assert facts["filesystem"].startswith(f"{fstype} (")
    assert (facts["driver"], facts["xattrs"], facts["d_type"]) == ("fuse", "yes", "yes")
    assert (facts["images"], facts["containers"]) == ("1", "0")
