"""Kill -9 of commit, rm, volume and prune commands at exact steps
(`$STRATA_CRASH_AT`): the next command repairs, nothing is half-visible,
`layers check` finds nothing, the container is not left busy, and the same
command then succeeds."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers"))

from storetools import (StoreEnv, directory, file, oci_layout, store_env,  # noqa: E402,F401
                        tar_bytes)

BASE = tar_bytes([directory("etc"), file("etc/os-release", "ID=base\n"),
                  file("bin/sh", "sh\n", mode=0o755)])


def run(env: StoreEnv, *args: str) -> str:
    """In-process: only the command killed needs a process of its own."""
    return env.ok(*args).out.strip()


def killed(env: StoreEnv, point: str, *args: str) -> None:
    r = env.cli_proc(*args, STRATA_CRASH_AT=point)
    assert r.code == -signal.SIGKILL, (point, r.code, r.err)


def clean(env: StoreEnv) -> None:
    env.ok("ps")                        # the next command repairs
    r = env.cli("check")
    assert (r.code, r.out) == (0, ""), r.out


def layer_dirs(env: StoreEnv) -> set[str]:
    return {n for n in os.listdir(env.root / "layers") if not n.endswith(".json")}


@pytest.fixture
def container(store_env, tmp_path):
    run(store_env, "import", "-q", str(oci_layout(tmp_path / "img", [BASE]).path),
        "--name", "base:1")
    run(store_env, "create", "base:1", "--name", "c", "-v", "data:/data")
    mp = run(store_env, "mount", "c")
    for i in range(5):
        Path(mp, f"file{i}").write_text(f"{i}\n" * 1000)
    os.unlink(os.path.join(mp, "bin/sh"))
    run(store_env, "umount", "c")
    return store_env


@pytest.mark.parametrize("point", ["building", "commit-built", "layer-moved",
                                   "commit-layer-published"])
def test_kill_commit_at_each_step(container, point):
    env = container
    before = layer_dirs(env)
    images = run(env, "images", "-q").split()
    killed(env, point, "commit", "c", "new:1")
    assert run(env, "images", "-q").split() == images          # no half image
    assert layer_dirs(env) == before                            # no stray layer
    clean(env)
    run(env, "mount", "c")                                      # not left busy
    run(env, "umount", "c")
    new_id = run(env, "commit", "c", "new:1")
    assert new_id in run(env, "images", "-q").split()
    assert len(layer_dirs(env)) == len(before) + 1
    clean(env)


def test_kill_rm_with_volumes_and_volume_create(container):
    env = container
    anon = run(env, "create", "base:1", "--name", "d", "-v", "/anon")
    killed(env, "volume-delete-marked", "rm", "-v", "d")
    assert run(env, "ps", "--format", "json").count('"name": "d"') == 0
    assert run(env, "volume", "ls", "-q").split() == ["data"]
    clean(env)
    killed(env, "volume-recorded", "volume", "create", "half")
    assert run(env, "volume", "ls", "-q").split() == ["data"]
    assert not (env.root / "volumes" / "half").exists()
    clean(env)
    assert run(env, "volume", "create", "half") == "half"
    assert anon


@pytest.mark.parametrize("point", ["pruning", "container-delete-marked",
                                   "layer-delete-marked"])
def test_kill_prune(container, tmp_path, point):
    env = container
    run(env, "import", "-q", str(oci_layout(tmp_path / "other", [tar_bytes(
        [file("x", "x")])]).path), "--name", "other:1")
    run(env, "create", "other:1", "--name", "gone")
    killed(env, point, "prune", "-a")
    clean(env)
    out = run(env, "prune", "-a")
    assert out.splitlines()[-1].startswith("freed ")
    assert run(env, "ps", "-q") == "" and run(env, "images", "-q") == ""
    assert layer_dirs(env) == set()
    assert run(env, "volume", "ls", "-q").split() == ["data"]   # named volumes stay
    clean(env)
