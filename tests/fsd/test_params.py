"""fsd/params.py: mount options parsed and checked into OverlayParams (no mount)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from fsd.params import IdMapping, OverlayParams, ParamError, parse_options, split_options


@pytest.fixture
def t(tmp_path):
    """Directories to mount with: lower a, b; upper, work; mountpoint mnt; a file."""
    for d in ("a", "b", "upper", "work", "mnt"):
        (tmp_path / d).mkdir()
    (tmp_path / "file").write_text("x")
    return tmp_path


def parse(t: Path, *opts: str, mnt: str | None = None, cwd=None) -> OverlayParams:
    return parse_options(list(opts), str(t / "mnt") if mnt is None else mnt, cwd=cwd or str(t))


def error(t: Path, *opts: str, mnt: str | None = None) -> str:
    with pytest.raises(ParamError) as exc:
        parse(t, *opts, mnt=mnt)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# -- splitting --------------------------------------------------------------------------------

@pytest.mark.parametrize("text,items", [
    ("a,b", ["a", "b"]),
    (",,volatile", ["volatile"]),
    ("a,b,", ["a", "b"]),
    (",,a,,,b,,", ["a", "b"]),
    ("", []),
    (",", []),
    ("lowerdir=x\\,y,ro", ["lowerdir=x,y", "ro"]),
    ("lowerdir=a\\:b:c", ["lowerdir=a\\:b:c"]),  # colon escapes are the lowerdir parser's
])
def test_split_options(text, items):
    assert split_options(text) == items


# -- accepted -------------------------------------------------------------------------------------

def test_lowerdirs_top_first_absolute_and_read_only(t):
    p = parse(t, f"lowerdir={t}/a:{t}/b")
    assert p.lowerdirs == (str(t / "a"), str(t / "b"))
    assert p.mountpoint == str(t / "mnt")
    assert p.upperdir is None and p.workdir is None
    assert p.ro and not p.writable
    assert p.warnings == ()


def test_several_option_strings_are_joined(t):
    p = parse(t, "lowerdir=a", "ro", "fsync=0,,", "logfile=fsd.log")
    assert p.lowerdirs == (str(t / "a"),)
    assert p.fsync is False
    assert p.logfile == str(t / "fsd.log")


def test_relative_paths_resolve_against_cwd(t):
    p = parse(t, "lowerdir=a:./b/../b", mnt="mnt")
    assert p.lowerdirs == (str(t / "a"), str(t / "b"))
    assert p.mountpoint == str(t / "mnt")


def test_symlinks_are_resolved_like_containers_storage_links(t):
    (t / "id1" / "diff").mkdir(parents=True)
    (t / "l").mkdir()
    os.symlink("../id1/diff", t / "l" / "ABC")
    p = parse(t, "lowerdir=l/ABC:a")
    assert p.lowerdirs == (str(t / "id1" / "diff"), str(t / "a"))


@pytest.mark.parametrize("name,escaped", [
    ("with:colon", "with\\:colon"),
    ("two::colons", "two\\:\\:colons"),
    ("back\\slash", "back\\\\slash"),
    ("com,ma", "com\\,ma"),
])
def test_escapes_in_lowerdir(t, name, escaped):
    (t / name).mkdir()
    p = parse(t, f"lowerdir={escaped}:b")
    assert p.lowerdirs == (str(t / name), str(t / "b"))


def test_upper_and_work_make_it_writable(t):
    p = parse(t, "lowerdir=a", "upperdir=upper", "workdir=work")
    assert (p.upperdir, p.workdir) == (str(t / "upper"), str(t / "work"))
    assert p.writable and not p.ro
    assert not parse(t, "lowerdir=a,upperdir=upper,workdir=work,ro").writable


@pytest.mark.parametrize("opt,field,value", [
    ("fsync=0", "fsync", False),
    ("fsync=1", "fsync", True),
    ("volatile", "volatile", True),
    ("static_nlink", "static_nlink", True),
    ("noacl", "noacl", True),
    ("allow_other", "allow_other", True),
    ("debug", "debug", True),
    ("timeout=1.5", "timeout", 1.5),
    ("xattr_permissions=2", "xattr_permissions", 2),
    ("whiteout=file", "whiteout", "file"),
    ("whiteout=chardev", "whiteout", "chardev"),
    ("upper_passthrough", "upper_passthrough", True),
    ("metacopy=on", "metacopy", True),
    ("metacopy=off", "metacopy", False),
    ("metacopy", "metacopy", True),
    ("squash_to_uid=1000", "squash_to_uid", 1000),
    ("squash_to_gid=0", "squash_to_gid", 0),
    ("uidmapping=0:1000:1:1:100000:65536", "uidmapping",
     (IdMapping(0, 1000, 1), IdMapping(1, 100000, 65536))),
    ("gidmapping=:0:1000:65536", "gidmapping", (IdMapping(0, 1000, 65536),)),
])
def test_option_values(t, opt, field, value):
    p = parse(t, "lowerdir=a", opt)
    assert getattr(p, field) == value
    assert p.warnings == ()


def test_squash_to_root(t):
    p = parse(t, "lowerdir=a,squash_to_root")
    assert (p.squash_to_uid, p.squash_to_gid) == (0, 0)


def test_defaults(t):
    p = parse(t, "lowerdir=a")
    assert (p.fsync, p.volatile, p.metacopy, p.whiteout, p.uidmapping, p.logfile) == \
        (True, False, False, None, (), None)


def test_unknown_options_warn_and_kernel_flags_pass_through(t):
    p = parse(t, "lowerdir=a,foo=bar,bogus,nosuid,nodev,rw,default_permissions,userxattr")
    assert len(p.warnings) == 2
    assert "unknown option 'foo'" in p.warnings[0] and "unknown option 'bogus'" in p.warnings[1]
    assert set(p.passthrough) == {"nosuid", "nodev"}


def test_params_are_frozen(t):
    p = parse(t, "lowerdir=a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.lowerdirs = ()


# -- refused -----------------------------------------------------------------------------------------

def test_missing_and_bad_lowerdirs(t):
    assert error(t, "ro") == "no lowerdir given (-o lowerdir=DIR[:DIR...])"
    assert error(t) == "no lowerdir given (-o lowerdir=DIR[:DIR...])"
    assert error(t, "lowerdir") == "option 'lowerdir' needs a value"
    assert error(t, "lowerdir=") == "lowerdir: empty path"
    assert error(t, "lowerdir=a::b") == "lowerdir: empty path"
    assert error(t, "lowerdir=a:nope") == "lowerdir 'nope': No such file or directory"
    assert error(t, "lowerdir=file") == "lowerdir 'file': not a directory"
    assert error(t, "lowerdir=a:mnt") == f"lowerdir '{t}/mnt' is the mountpoint"


def test_dangling_symlink_lowerdir(t):
    os.symlink("nowhere", t / "dangling")
    assert error(t, "lowerdir=dangling") == "lowerdir 'dangling': No such file or directory"


def test_upper_and_work(t):
    assert error(t, "lowerdir=a,upperdir=upper") == "upperdir and workdir must be given together"
    assert error(t, "lowerdir=a,workdir=work") == "upperdir and workdir must be given together"
    assert error(t, "lowerdir=a,upperdir=nope,workdir=work") == "upperdir 'nope': No such file or directory"
    assert error(t, "lowerdir=a,upperdir=upper,workdir=nope") == "workdir 'nope': No such file or directory"
    assert error(t, "lowerdir=a,upperdir=file,workdir=work") == "upperdir 'file': not a directory"
    assert error(t, "lowerdir=a,upperdir=upper,workdir=file") == "workdir 'file': not a directory"


def test_upper_and_work_must_not_nest_or_overlap_lowers(t):
    (t / "upper" / "w").mkdir()
    (t / "a" / "u").mkdir()
    assert error(t, "lowerdir=a,upperdir=upper,workdir=upper/w") == \
        f"upperdir '{t}/upper' and workdir '{t}/upper/w' must not be inside each other"
    assert error(t, "lowerdir=a,upperdir=a/u,workdir=work") == \
        f"upperdir '{t}/a/u' overlaps lowerdir '{t}/a'"
    assert error(t, "lowerdir=upper/w,upperdir=upper,workdir=work") == \
        f"upperdir '{t}/upper' overlaps lowerdir '{t}/upper/w'"
    assert error(t, "lowerdir=a,upperdir=upper,workdir=work", mnt=str(t / "upper")) == \
        f"mountpoint '{t}/upper' is inside upperdir '{t}/upper'"
    (t / "work" / "m").mkdir()
    assert error(t, "lowerdir=a,upperdir=upper,workdir=work", mnt=str(t / "work" / "m")) == \
        f"mountpoint '{t}/work/m' is inside workdir '{t}/work'"


def test_upper_and_work_on_different_filesystems(t):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(t).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than tmp_path")
    work = shm / f"strata-test-work-{os.getpid()}"
    work.mkdir()
    try:
        assert error(t, f"lowerdir=a,upperdir=upper,workdir={work}") == \
            f"upperdir '{t}/upper' and workdir '{work}' are on different filesystems"
    finally:
        work.rmdir()


def test_mountpoint(t):
    assert error(t, "lowerdir=a", mnt="") == "no mountpoint given"
    assert error(t, "lowerdir=a", mnt="nope") == "mountpoint 'nope': No such file or directory"
    assert error(t, "lowerdir=a", mnt="file") == "mountpoint 'file': not a directory"


@pytest.mark.parametrize("opt,message", [
    ("fsync=x", "bad value for option 'fsync': 'x'"),
    ("fsync=", "bad value for option 'fsync': ''"),
    ("volatile=maybe", "bad value for option 'volatile': 'maybe'"),
    ("timeout=abc", "bad value for option 'timeout': 'abc'"),
    ("timeout=-1", "bad value for option 'timeout': '-1'"),
    ("timeout", "option 'timeout' needs a value"),
    ("squash_to_uid=abc", "bad value for option 'squash_to_uid': 'abc'"),
    ("squash_to_uid=-1", "bad value for option 'squash_to_uid': '-1'"),
    ("uidmapping=0:1000", "bad value for option 'uidmapping': '0:1000' (want container:host:size triples)"),
    ("uidmapping=", "bad value for option 'uidmapping': '' (want container:host:size triples)"),
    ("gidmapping=0:1000:0", "bad value for option 'gidmapping': '0:1000:0' (empty range)"),
    ("gidmapping=0:x:1", "bad value for option 'gidmapping': 'x'"),
    ("xattr_permissions=3", "bad value for option 'xattr_permissions': '3' (want 0, 1 or 2)"),
    ("metacopy=maybe", "bad value for option 'metacopy': 'maybe' (want on or off)"),
    ("whiteout=bogus", "bad value for option 'whiteout': 'bogus' (want chardev or file)"),
    ("logfile", "option 'logfile' needs a value"),
])
def test_bad_values(t, opt, message):
    assert error(t, "lowerdir=a", opt) == message


def test_upper_passthrough_and_quota_exclude_each_other(t):
    """Writes through passthrough handles never reach fsd's quota accounting."""
    assert error(t, "lowerdir=a,upperdir=upper,workdir=work,upper_passthrough,quota_bytes=1M") == \
        "upper_passthrough cannot be used with quota_bytes or quota_inodes"
