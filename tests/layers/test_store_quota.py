"""Container limits and the per-user quota on the store side (issue 10), and
`layers info`'s checks of the filesystem under the store.  No mount here:
fsd's enforcement is tests/integration/test_quota_mounted.py, the store's use of it
tests/integration/test_layers_quota.py."""

from __future__ import annotations

import errno
import json
import os

import pytest

from layers import config, fsprobe, fsutil, quota, records
from layers.drivers.fuse import FuseDriver
from layers.drivers.overlay import OverlayDriver
from layers.errors import ConfigError, CorruptRecord, DriverError, QuotaExceeded
from layers.units import size
from layers.records import Container, Quota

from storetools import StoreEnv, file, make_tar

MiB = 1 << 20
REFUSED = ("cannot enforce a container size or inode limit (--size/--inodes, "
           "storage.conf size/inodes); only the fuse driver can")


def load(tmp_path, text):
    conf = tmp_path / "storage.conf"
    conf.write_text(text)
    return config.load(env={"STRATA_STORAGE_CONF": str(conf)})


# -- storage.conf and flags ------------------------------------------------------------

def test_storage_conf_limits(tmp_path):
    cfg = load(tmp_path, '[storage.options]\nsize = "50M"\ninodes = "1000"\n'
                         'user_quota = "2G"\n')
    assert (cfg.size, cfg.inodes, cfg.user_quota) == (50 * MiB, 1000, 2 << 30)
    assert cfg.warnings == ()
    assert config.load(env={"STRATA_STORAGE_CONF": str(tmp_path / "storage.conf")}) \
        .as_dict()["size"] == 50 * MiB


def test_overlay_section_and_plain_integers(tmp_path):
    cfg = load(tmp_path, '[storage.options.overlay]\nsize = 1048576\ninodes = 7\n')
    assert (cfg.size, cfg.inodes, cfg.user_quota) == (MiB, 7, None)
    cfg = load(tmp_path, '[storage.options]\nsize = ""\n')
    assert cfg.size is None, '"" is no limit, as in containers-storage'


@pytest.mark.parametrize("text, value", [
    ("123", 123), ("10k", 10 << 10), ("10KB", 10 << 10), ("50M", 50 * MiB),
    ("50MiB", 50 * MiB), ("1g", 1 << 30), ("2T", 2 << 40), (4096, 4096), ("", None),
])
def test_parse_size(text, value):
    assert config.parse_size(text, "here") == value


@pytest.mark.parametrize("text", ["0", "ten", "5X", "-1", "1.5G", "M", True])
def test_parse_size_refuses(text):
    with pytest.raises(ConfigError) as e:
        config.parse_size(text, "here")
    assert str(e.value) == (f"configuration here: size {text!r} is not a size above 0 "
                            "(N, NK, NM, NG or NT)")


def test_bad_limits_in_storage_conf(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, '[storage.options]\ninodes = "1k"\n')
    assert str(e.value) == f"configuration {tmp_path}/storage.conf: inodes '1k' is not " \
                           "a number above 0"
    with pytest.raises(ConfigError) as e:
        load(tmp_path, '[storage.options]\nuser_quota = "lots"\n')
    assert str(e.value) == f"configuration {tmp_path}/storage.conf: user_quota 'lots' is " \
                           "not a size above 0 (N, NK, NM, NG or NT)"


def test_flags_beat_storage_conf(tmp_path):
    cfg = load(tmp_path, '[storage.options]\nsize = "50M"\ninodes = "1000"\n')
    assert quota.container_quota(cfg) == Quota(50 * MiB, 1000)
    assert quota.container_quota(cfg, size=MiB) == Quota(MiB, 1000)
    assert quota.container_quota(cfg, inodes=5) == Quota(50 * MiB, 5)
    assert not quota.container_quota(load(tmp_path, ""))


# -- the record -----------------------------------------------------------------------

def container(**kw) -> Container:
    fields = dict(id="a" * 64, name="c", image="b" * 64, layers=(), driver="fuse",
                  created=1.0)
    fields.update(kw)
    return Container(**fields)


def test_record_keeps_limits_and_owner():
    c = container(quota=Quota(50 * MiB, None), owner=1000)
    raw = records.encode(c)
    assert json.loads(raw)["quota"] == {"bytes": 50 * MiB, "inodes": None}
    assert records.decode(Container, raw) == c


def test_record_without_limits_reads_as_before():
    doc = json.loads(records.encode(container()))
    del doc["quota"], doc["owner"]
    c = records.decode(Container, json.dumps(doc).encode())
    assert c.quota == Quota() and not c.quota and c.owner is None


@pytest.mark.parametrize("field, value", [
    ("quota", {"bytes": 0}), ("quota", {"inodes": "5"}), ("quota", [1, 2]),
    ("owner", -1), ("owner", True),
])
def test_bad_limits_are_a_corrupt_record(field, value):
    doc = json.loads(records.encode(container()))
    doc[field] = value
    with pytest.raises(CorruptRecord):
        records.decode(Container, json.dumps(doc).encode(), "c.json")


# -- drivers ----------------------------------------------------------------------------

def test_fuse_passes_the_limits_to_fsd():
    d = FuseDriver(mountopt="nodev")
    assert d.options("/c", ["/l"]) == \
        "lowerdir=/l,upperdir=/c/upper,workdir=/c/work,logfile=/c/fsd.log,nodev"
    assert d.options("/c", ["/l"], Quota(50 * MiB, 100)).endswith(
        ",nodev,quota_bytes=52428800,quota_inodes=100")
    assert d.options("/c", ["/l"], Quota(inodes=3)).endswith(",nodev,quota_inodes=3")
    d.check_quota(Quota(1, 1))
    other = FuseDriver(mount_program="/usr/bin/fuse-overlayfs")    # knows no logfile
    assert other.options("/c", ["/l"]) == "lowerdir=/l,upperdir=/c/upper,workdir=/c/work"


def test_overlay_refuses_limits(tmp_path):
    d = OverlayDriver(str(tmp_path))
    d.check_quota(Quota())
    with pytest.raises(DriverError) as e:
        d.check_quota(Quota(bytes=MiB))
    assert str(e.value) == f"overlay driver: {REFUSED}"


@pytest.fixture
def imported(store_env, tmp_path):
    tar = make_tar(tmp_path / "l.tar", [file("data", b"x" * MiB)])
    store_env.ok("import", "-q", str(tar), "--name", "img")
    return store_env


def test_vfs_refuses_a_container_with_limits(imported):
    env = imported
    r = env.cli("create", "img", "--size", "10M")
    assert (r.code, r.err) == (1, f"layers: vfs driver: {REFUSED}\n")
    env.conf.write_text('[storage.options]\ninodes = "100"\n')
    r = env.cli("create", "img")
    assert (r.code, r.err) == (1, f"layers: vfs driver: {REFUSED}\n")
    assert env.ok("ps", "-q").out == "", "nothing is left of a refused create"


def test_bad_flags_are_usage_errors(imported):
    r = imported.cli_proc("create", "img", "--size", "0")
    assert r.code == 2
    assert r.err.splitlines()[-1] == ("layers create: error: argument --size: size '0' "
                                      "is not a size above 0 (N, NK, NM, NG or NT)")
    r = imported.cli_proc("create", "img", "--inodes", "many")
    assert r.code == 2
    assert r.err.splitlines()[-1] == ("layers create: error: argument --inodes: inodes "
                                      "'many' is not a number above 0")


def test_fuse_store_records_the_limits(tmp_path):
    """Creating does not mount: the record is all there is to see."""
    env = StoreEnv(tmp_path, "fuse")
    tar = make_tar(tmp_path / "l.tar", [file("f", "x")])
    env.ok("import", "-q", str(tar), "--name", "img")
    env.conf.write_text('[storage.options]\nsize = "50M"\ninodes = "1000"\n')
    env.ok("create", "img", "--name", "dflt")
    env.ok("create", "img", "--name", "mine", "--size", "1G")
    doc = json.loads(env.ok("inspect", "dflt").out)
    assert (doc["quota"], doc["owner"]) == ({"bytes": 50 * MiB, "inodes": 1000}, os.geteuid())
    assert json.loads(env.ok("inspect", "mine").out)["quota"] == \
        {"bytes": 1 << 30, "inodes": 1000}
    env.assert_consistent()


# -- the per-user quota -----------------------------------------------------------------

def test_user_usage_counts_limit_or_content():
    cs = [container(id="1" * 64, quota=Quota(50 * MiB), owner=1000),
          container(id="2" * 64, quota=Quota(MiB), owner=1000),    # wrote past it
          container(id="3" * 64, owner=1000),                       # no limit
          container(id="4" * 64, quota=Quota(MiB), owner=None),     # the store owner's
          container(id="5" * 64, quota=Quota(MiB), owner=1001)]
    written = {"1" * 64: 4096, "2" * 64: 3 * MiB, "3" * 64: 2 * MiB, "4" * 64: 0}
    u = quota.user_usage(cs, 1000, 1000, 60 * MiB, written)
    assert (u.used, u.containers) == (50 * MiB + 3 * MiB + 2 * MiB + MiB, 4)
    assert quota.user_usage(cs, 1001, 1000, None, written).used == MiB
    assert quota.user_usage(cs, 0, 1000, None, written).containers == 0


def test_check_user_quota():
    u = quota.UserUsage(uid=1000, limit=100 * MiB, used=60 * MiB, containers=2)
    quota.check_user_quota(u, Quota(40 * MiB))
    quota.check_user_quota(u, Quota())
    with pytest.raises(QuotaExceeded) as e:
        quota.check_user_quota(u, Quota(41 * MiB))
    assert str(e.value) == ("user_quota exceeded for uid 1000: limit 105MB, in use "
                            "62.9MB by 2 container(s); this container asks 43MB")
    assert (e.value.limit, e.value.used, e.value.asked) == (100 * MiB, 60 * MiB, 41 * MiB)
    full = quota.UserUsage(uid=1000, limit=100 * MiB, used=100 * MiB, containers=3)
    with pytest.raises(QuotaExceeded) as e:
        quota.check_user_quota(full, Quota(inodes=5))
    assert str(e.value) == ("user_quota exceeded for uid 1000: limit 105MB, in use "
                            "105MB by 3 container(s)")
    quota.check_user_quota(quota.UserUsage(0, None, 1 << 50, 9), Quota(1 << 50))


def test_user_quota_counts_what_vfs_containers_hold(imported):
    """vfs takes no limits, so the quota is a check at create time against
    what the user's containers hold (each a copy of the 1 MiB image)."""
    env = imported
    env.conf.write_text('[storage.options]\nuser_quota = "1536K"\n')
    env.ok("create", "img", "--name", "one")
    env.ok("create", "img", "--name", "two")
    store = env.open()
    held = sum(fsutil.tree_usage(str(env.root / "containers" / c.container.id / "rootfs"))[0]
               for c in store.list_containers())
    assert held > 1536 << 10
    r = env.cli("create", "img", "--name", "three")
    assert (r.code, r.err) == (1, f"layers: user_quota exceeded for uid {os.geteuid()}: "
                                  f"limit 1.57MB, in use {size(held)} by 2 "
                                  "container(s)\n")
    assert store.user_usage().used == held
    env.ok("rm", "two")
    env.ok("create", "img", "--name", "three")


def test_df_without_limits(imported):
    imported.ok("create", "img", "--name", "free")
    out = imported.ok("df", "-v").lines
    header = next(i for i, line in enumerate(out) if line.startswith("CONTAINER ID"))
    assert out[header].split() == ["CONTAINER", "ID", "NAME", "IMAGE", "SIZE", "MOUNTED",
                                   "QUOTA"]
    assert out[header + 1].split()[-1] == "-"
    doc = json.loads(imported.ok("df", "--format", "json").out)
    assert [c["quota"] for c in doc[1]["items"]] == [None]


# -- the filesystem under the store -----------------------------------------------------

def entry(line: str) -> fsprobe.MountInfo:
    return fsprobe.parse_mountinfo_line(line)


NFS = "61 27 0:53 / /home rw,relatime shared:30 - nfs4 srv:/export/home rw,vers=4.2"
CIFS = "62 27 0:54 / /mnt/share rw - cifs //nas/share rw,vers=3.0"
SSHFS = "63 27 0:55 / /mnt/remote rw,nosuid - fuse.sshfs me@host:/data rw,user_id=0"
EXT4 = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard"
ROOT_NFS = "61 1 0:53 / / rw - nfs4 srv:/export/home rw,vers=4.2"
SPACE = r"70 27 0:60 / /mnt/with\040space rw - tmpfs tmpfs rw"


def test_parse_mountinfo_line():
    e = entry(NFS)
    assert (e.dev, e.mountpoint, e.fstype, e.source, e.options) == \
        ("0:53", "/home", "nfs4", "srv:/export/home", "rw,vers=4.2")
    assert entry(SPACE).mountpoint == "/mnt/with space"
    assert entry("garbage") is None


@pytest.mark.parametrize("line, fstype, source", [
    (NFS, "nfs4", "srv:/export/home"), (CIFS, "cifs", "//nas/share"),
    (SSHFS, "fuse.sshfs", "me@host:/data"),
])
def test_network_filesystems_are_named(line, fstype, source):
    e = entry(line)
    assert fsprobe.classify(e) == [
        f"network filesystem: {e.mountpoint} is {fstype} ({source}); rootless storage "
        "needs a local filesystem (xattrs, locks, uids) — set graphroot to a local "
        "directory"]


@pytest.mark.parametrize("line", [EXT4, SPACE, "80 27 0:70 / /m rw - fuse.fsd fsd rw",
                                  "81 27 0:71 / /o rw - overlay overlay rw,lowerdir=/a"])
def test_local_filesystems_pass(line):
    assert fsprobe.classify(entry(line)) == []


def test_mount_of_the_store_root():
    table = [entry(EXT4), entry(NFS), entry(SPACE)]
    assert fsprobe.mount_of("/home/me/.local/share/strata", table, dev="0:53").fstype == "nfs4"
    assert fsprobe.mount_of("/homeless", table, dev="254:0").fstype == "ext4"
    assert fsprobe.mount_of("/mnt/with space/x", table, dev="0:60").fstype == "tmpfs"
    # a bind mount of another filesystem's dir deeper down: the store's own dev wins
    bind = entry("90 61 254:0 /srv /home/me rw - ext4 /dev/vda rw")
    assert fsprobe.mount_of("/home/me/s", table + [bind], dev="254:0").mountpoint == "/home/me"
    assert fsprobe.mount_of("/home/me/s", [bind] + table, dev="0:53").fstype == "nfs4"


def test_probes_pass_here(tmp_path):
    assert fsprobe.probe_xattrs(str(tmp_path)) is None
    assert fsprobe.probe_dtype(str(tmp_path)) is None
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("")
    assert fsprobe.dirent_types(str(tmp_path)) == {"d": 4, "f": 8}   # DT_DIR, DT_REG


def test_failed_probes_name_the_check(imported, monkeypatch):
    def no_xattrs(*args, **kw):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "setxattr", no_xattrs)
    monkeypatch.setattr(fsprobe, "dirent_types", lambda path: {"d": 0, "f": 0})
    monkeypatch.setattr(fsprobe, "read_mountinfo", lambda: [entry(ROOT_NFS)])
    r = imported.cli("info")
    assert r.code == 0
    assert r.err.splitlines() == [
        "layers: warning: network filesystem: / is nfs4 (srv:/export/home); rootless "
        "storage needs a local filesystem (xattrs, locks, uids) — set graphroot to a "
        "local directory",
        "layers: warning: xattrs on nfs4 at /: user.* extended attributes refused "
        f"({os.strerror(errno.EOPNOTSUPP)})",
        "layers: warning: d_type on nfs4 at /: directory listings do not report file "
        "types (an xfs made with ftype=0?)"]
    assert "xattrs: no" in r.lines and "d_type: no" in r.lines
    assert "filesystem: nfs4 (srv:/export/home at /)" in r.out


def test_info_facts(imported):
    imported.conf.write_text('[storage.options]\nsize = "50M"\nuser_quota = "1G"\n')
    doc = json.loads(imported.ok("info", "--format", "json").out)
    assert doc["warnings"] == [] and doc["driver"] == "vfs"
    assert (doc["images"], doc["layers"], doc["containers"]) == (1, 1, 0)
    assert doc["limits"] == {"size": 50 * MiB, "inodes": None, "user_quota": 1 << 30,
                             "uid": os.geteuid(), "user_usage": 0, "user_containers": 0}
    assert doc["filesystem"]["xattrs"] is True and doc["filesystem"]["d_type"] is True
