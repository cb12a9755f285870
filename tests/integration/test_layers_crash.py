"""Kill -9 of store commands at exact steps (`$STRATA_CRASH_AT`) and at timed
moments: the next command repairs, nothing is half-visible, `layers check`
finds nothing, and the same import then succeeds.  Also: two processes
importing the same layer end with one copy."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers"))

from storetools import (LAYERS_EXE, StoreEnv, directory, file, oci_layout,  # noqa: E402
                        store_env, tar_bytes)


def layer(tag: str, n: int = 200, size: int = 2000) -> bytes:
    return tar_bytes([directory(f"{tag}")] +
                     [file(f"{tag}/f{i:04d}", os.urandom(size)) for i in range(n)])


BASE = layer("base")
MID = layer("mid")
TOP = layer("top")

IMPORT_POINTS = ["image-recorded", "extracting", "extracted", "layer-recorded",
                 "layer-moved", "layers-done"]


def layer_dirs(env: StoreEnv) -> list[str]:
    return sorted(n for n in os.listdir(env.root / "layers") if not n.endswith(".json"))


def assert_repaired(env: StoreEnv, expect_images: list[str]) -> None:
    r = env.cli_proc("images", "-q")                 # the next command repairs
    assert r.code == 0, r.err
    assert sorted(r.out.split()) == sorted(expect_images)
    r = env.cli_proc("check")
    assert (r.code, r.out) == (0, ""), r.out


@pytest.mark.parametrize("point", IMPORT_POINTS)
def test_kill_import_at_each_step(store_env, tmp_path, point):
    built = oci_layout(tmp_path / "img", [BASE, MID, TOP])
    r = store_env.cli_proc("import", "-q", str(built.path), STRATA_CRASH_AT=point)
    assert r.code == -signal.SIGKILL, (r.code, r.err)
    assert_repaired(store_env, [])
    assert layer_dirs(store_env) == []
    r = store_env.cli_proc("import", "-q", str(built.path))
    assert r.code == 0, r.err
    assert_repaired(store_env, [r.out.strip()])
    assert layer_dirs(store_env) == sorted(c[7:] for c in built.chain_ids)


def test_kill_import_keeps_what_other_images_share(store_env, tmp_path):
    a = oci_layout(tmp_path / "a", [BASE, MID])
    b = oci_layout(tmp_path / "b", [BASE, TOP])
    a_id = store_env.cli_proc("import", "-q", str(a.path)).out.strip()
    r = store_env.cli_proc("import", "-q", str(b.path), STRATA_CRASH_AT="layer-moved")
    assert r.code == -signal.SIGKILL
    assert_repaired(store_env, [a_id])
    assert layer_dirs(store_env) == sorted(c[7:] for c in a.chain_ids)


def test_kill_import_at_timed_moments(store_env, tmp_path):
    big = [layer(f"l{i}", n=400, size=8000) for i in range(3)]
    built = oci_layout(tmp_path / "img", big)
    rng = random.Random(5)
    image_id = None
    for delay in sorted(rng.uniform(0.3, 1.2) for _ in range(4)):
        p = subprocess.Popen([LAYERS_EXE] + store_env.args() + ["import", "-q",
                                                                 str(built.path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=store_env.proc_env())
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        out, _ = p.communicate()
        done = out.decode().strip()
        r = store_env.cli_proc("images", "-q")
        images = r.out.split()
        assert images in ([], [done] if done else [], [image_id] if image_id else [])
        assert store_env.cli_proc("check").out == ""
        image_id = images[0] if images else image_id
        if images:   # complete: every layer is there
            assert layer_dirs(store_env) == sorted(c[7:] for c in built.chain_ids)


def test_kill_rm_and_rmi(store_env, tmp_path):
    built = oci_layout(tmp_path / "img", [BASE, TOP])
    store_env.cli_proc("import", "-q", str(built.path), "--name", "x")
    cid = store_env.cli_proc("create", "x", "--name", "c").out.strip()
    r = store_env.cli_proc("rm", "c", STRATA_CRASH_AT="container-delete-marked")
    assert r.code == -signal.SIGKILL
    assert store_env.cli_proc("ps", "-q").out == ""
    assert not (store_env.root / "containers" / cid).exists()
    r = store_env.cli_proc("rmi", "x", STRATA_CRASH_AT="layer-delete-marked")
    assert r.code == -signal.SIGKILL
    assert_repaired(store_env, [])
    assert layer_dirs(store_env) == []


def test_two_processes_import_one_layer_once(store_env, tmp_path):
    big = layer("shared", n=600, size=16000)
    a = oci_layout(tmp_path / "a", [big, tar_bytes([file("a", "1")])])
    b = oci_layout(tmp_path / "b", [big, tar_bytes([file("b", "2")])])
    procs = [subprocess.Popen([LAYERS_EXE] + store_env.args() + ["import", "-q", str(x.path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=store_env.proc_env()) for x in (a, b)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(set(a.chain_ids) | set(b.chain_ids)) == 3
    assert layer_dirs(store_env) == sorted({c[7:] for c in a.chain_ids + b.chain_ids})
    info = json.loads(store_env.cli_proc("inspect", a.chain_ids[0]).out)
    assert info["type"] == "layer"
