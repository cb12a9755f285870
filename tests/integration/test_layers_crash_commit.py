"""Kill -9 of commit, rm, volume and prune commands at exact steps
(`$STRATA_CRASH_AT`): the next command repairs, nothing is half-visible,
`layers check` finds nothing, the container is not left busy, and the same
command then succeeds.  And prune beside an import in flight."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers"))

from storetools import (LAYERS_EXE, StoreEnv, directory, file, oci_layout,  # noqa: E402,F401
                        store_env, tar_bytes, wait_until)

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
    killed(env, point, "prune", "-a", "-f")
    clean(env)
    out = run(env, "prune", "-a", "-f")
    assert out.splitlines()[-1].startswith("freed ")
    assert run(env, "ps", "-q") == "" and run(env, "images", "-q") == ""
    assert layer_dirs(env) == set()
    assert run(env, "volume", "ls", "-q").split() == ["data"]   # named volumes stay
    clean(env)


def test_prune_while_an_import_runs_spares_its_layers(store_env, tmp_path):
    """An import paused after publishing its first layer, the second extracted
    in its staging dir: `prune -a` and `check` see in-flight work and remove
    none of it, and the import then finishes."""
    env = store_env
    layers = [tar_bytes([file(f"l{i}/f{j}", os.urandom(1000)) for j in range(20)])
              for i in range(3)]
    built = oci_layout(tmp_path / "img", layers)
    p = subprocess.Popen([LAYERS_EXE] + env.args() + ["import", "-q", str(built.path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env.proc_env(STRATA_PAUSE_AT="extracted:2"))
    try:
        assert wait_until(lambda: _stopped(p.pid), 30)
        assert env.ok("images", "-q").out == ""              # still in flight
        assert layer_dirs(env) == {built.chain_ids[0][7:]}
        out = env.ok("prune", "-a", "-f").lines
        assert not any(line.startswith(("removed layer", "removed image")) for line in out)
        assert not any("staging" in line for line in out)
        assert layer_dirs(env) == {built.chain_ids[0][7:]}
        assert env.cli("check").out == ""
    finally:
        os.kill(p.pid, signal.SIGCONT)
        out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert env.ok("images", "-q").out.split() == [built.config_digest[7:]]
    assert layer_dirs(env) == {c[7:] for c in built.chain_ids}


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"
