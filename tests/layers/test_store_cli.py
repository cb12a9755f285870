"""The command line: exit codes, one-line errors, output for scripts."""

import importlib.metadata
import json
import os
import socket
import subprocess
import sys

import pytest

from layers import fsutil

from storetools import LAYERS_EXE, file, make_tar, oci_layout, run_on_terminal, tar_bytes


@pytest.fixture
def imported(store_env, tmp_path):
    tar = make_tar(tmp_path / "l.tar", [file("etc/motd", "hi\n")])
    r = store_env.ok("import", "-q", str(tar), "--name", "demo:1")
    return store_env, r.out.strip()


def test_import_prints_the_image_id(imported):
    env, image_id = imported
    assert len(image_id) == 64
    assert env.ok("images", "-q").lines == [image_id]
    table = env.ok("images").lines
    assert table[0].split() == ["IMAGE", "ID", "NAMES", "LAYERS", "SIZE", "CREATED"]
    assert table[1].startswith(f"{image_id[:12]}  demo:1  1 ")
    doc = json.loads(env.ok("images", "--format", "json").out)
    assert doc[0]["names"] == ["demo:1"]


def test_container_lifecycle(imported):
    env, _ = imported
    cid = env.ok("create", "demo:1", "--name", "web").out.strip()
    mp = env.ok("mount", "web").out.strip()
    assert open(os.path.join(mp, "etc/motd")).read() == "hi\n"
    os.unlink(os.path.join(mp, "etc/motd"))
    assert env.ok("diff", "web").lines == ["D /etc/motd"]
    assert json.loads(env.ok("diff", "web", "--format", "json").out) == \
        [{"kind": "D", "path": "/etc/motd"}]
    ps = env.ok("ps").lines
    assert ps[1].startswith(f"{cid[:12]}  web ") and ps[1].endswith(f"1x {mp}")
    env.ok("umount", "web")
    assert env.ok("rm", "web").lines == [cid]
    assert env.ok("ps", "-q").out == ""


@pytest.mark.parametrize("args, code, message", [
    (["create", "nope"], 1, "image not known: nope"),
    (["mount", "ghost"], 1, "container not known: ghost"),
    (["import", "/nonexistent.tar"], 1, "cannot read /nonexistent.tar: No such file or directory"),
    (["tag", "demo:1", "Bad Name"], 2, "invalid image name: 'Bad Name'"),
    (["create", "demo:1", "--name", "a/b"], 2, "invalid container name: 'a/b'"),
    (["inspect", "zzz"], 1, "no container, image or layer matches zzz"),
    (["reset"], 2, "reset removes the whole store; repeat with -f"),
    (["commit", "ghost"], 1, "container not known: ghost"),
    (["commit", "c1", "Bad Name"], 2, "invalid image name: 'Bad Name'"),
    (["export", "zzzz", "-o", "/tmp/never"], 1, "no container, image or layer matches zzzz"),
    (["save", "nope", "-o", "/tmp/never"], 1, "image not known: nope"),
    (["create", "demo:1", "-v", "x:rel"], 2,
     "invalid mount spec (paths must be absolute): 'x:rel'"),
    (["create", "demo:1", "-v", "/no/such/dir:/x"], 2, "bind source /no/such/dir does not exist"),
    (["volume", "rm", "nope"], 1, "volume not known: nope"),
    (["volume", "create", "-l", "novalue"], 2, "label 'novalue' is not KEY=VALUE"),
    (["volume", "inspect", "../x"], 2, "invalid volume name: '../x'"),
])
def test_user_errors_are_one_line(imported, args, code, message):
    env, _ = imported
    env.ok("create", "demo:1", "--name", "c1")
    r = env.cli(*args)
    assert (r.code, r.err) == (code, f"layers: {message}\n")
    assert r.out == ""


def test_debug_shows_the_traceback(imported):
    env, _ = imported
    r = env.cli("--debug", "create", "nope")
    assert r.code == 1
    assert "Traceback (most recent call last)" in r.err
    assert r.err.endswith("layers: image not known: nope\n")


def test_a_real_process_prints_no_traceback(store_env):
    r = store_env.cli_proc("create", "nope")
    assert (r.code, r.err) == (1, "layers: image not known: nope\n")


def test_store_locked(imported):
    env, _ = imported
    with fsutil.StoreLock(str(env.root / "lock")):
        r = env.cli("--lock-timeout", "0.2", "images")
    assert r.code == 1
    assert r.err == (f"layers: store {env.root} is locked by pid {os.getpid()}; "
                     "gave up after 0.2s\n")


def test_config_prints_the_effective_configuration(store_env):
    store_env.conf.write_text('[storage]\nbogus = 1\n[storage.options.overlay]\n'
                              'mountopt = "nodev"\n')
    r = store_env.cli("config")
    assert r.code == 0
    doc = json.loads(r.out)
    assert doc["root"] == str(store_env.root) and doc["driver"] == "vfs"
    assert doc["mountopt"] == "nodev" and doc["storage_conf"] == str(store_env.conf)
    assert r.err == f"layers: warning: {store_env.conf}: unknown key storage.bogus ignored\n"


def test_rmi_refusal_names_the_container(imported):
    env, _ = imported
    env.ok("create", "demo:1", "--name", "user1")
    r = env.cli("rmi", "demo:1")
    assert (r.code, r.err) == (1, "layers: image demo:1 is in use by container(s) user1; "
                                  "remove them first or use -f\n")
    assert env.ok("rmi", "-f", "demo:1").lines[0] == "removed container user1"


def test_check_and_reset(imported):
    env, _ = imported
    assert env.ok("check").out == ""
    assert env.ok("reset", "-f").lines == [f"removed store {env.root}"]
    assert not env.root.exists()
    env.ok("images")      # a fresh store again


def test_multi_image_name_needs_one_image(store_env, tmp_path):
    layer = tar_bytes([file("a", "1")])
    built = oci_layout(tmp_path / "img", [layer], ref_name="r/x:1")
    r = store_env.ok("import", str(built.path))
    assert store_env.ok("images", "--format", "json").out.count('"r/x:1"') == 1
    assert r.lines == [json.loads(store_env.ok("inspect", "r/x:1").out)["id"]]


def test_commit_volume_df_prune_output(imported, monkeypatch):
    env, image_id = imported
    env.ok("create", "demo:1", "--name", "web", "-v", "data:/data")
    mp = env.ok("mount", "web").out.strip()
    with open(os.path.join(mp, "new"), "w") as f:
        f.write("x")
    env.ok("umount", "web")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "soon")
    r = env.cli("commit", "web")
    assert (r.code, r.err) == (2, "layers: SOURCE_DATE_EPOCH must be a number of seconds, "
                                  "not 'soon'\n")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    new_id = env.ok("commit", "web", "demo:2").out.strip()
    assert json.loads(env.ok("inspect", "demo:2").out)["id"] == new_id
    ls = env.ok("volume", "ls").lines
    assert ls[0].split() == ["NAME", "ANONYMOUS", "CONTAINERS", "CREATED"]
    assert ls[1].startswith("data  no         web ")
    df = env.ok("df", "-v").lines
    assert df[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert [line.split()[:3] for line in df[1:4]] == [
        ["images", "2", "1"], ["containers", "1", "0"], ["volumes", "1", "1"]]
    assert "IMAGE ID" in df[5] and "SHARED" in df[5]
    doc = json.loads(env.ok("df", "--format", "json").out)
    assert [u["type"] for u in doc] == ["images", "containers", "volumes"]
    out = env.ok("prune", "--dry-run").lines
    assert out[0].startswith("would remove container web (")
    assert out[-1].startswith("would free ")
    out = env.ok("prune", "-f").lines
    assert out[0].startswith("removed container web (") and out[-1].startswith("freed ")
    assert env.ok("volume", "prune", "-a", "-f").lines[0].startswith("removed volume data (")
    assert env.ok("ps", "-q").out == "" and env.ok("volume", "ls", "-q").out == ""


def test_version(store_env):
    r = store_env.cli_proc("--version")
    assert (r.code, r.out, r.err) == (0, f"layers {importlib.metadata.version('strata')}\n", "")


@pytest.mark.parametrize("group", [[], ["volume"]])
def test_a_group_without_its_command_prints_its_help(store_env, group):
    r = store_env.cli(*group)
    assert r.code == 0 and r.err == ""
    assert r.out.startswith(f"usage: layers {' '.join(group)}".rstrip())
    assert "COMMAND" in r.out


def test_a_reader_that_leaves_ends_the_output_quietly(imported):
    """`layers info | head -1`: the pipe's reader is gone before the output
    is written; no message, exit 0 (SIGPIPE is ignored in Python)."""
    env, _ = imported
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        p = subprocess.run([LAYERS_EXE] + env.args() + ["info"], stdout=write_end,
                           stderr=subprocess.PIPE, text=True, timeout=60,
                           env=env.proc_env(), stdin=subprocess.DEVNULL)
    finally:
        os.close(write_end)
    assert (p.returncode, p.stderr) == (0, "")


def test_push_without_destination_refuses_a_name_without_registry(imported):
    """`demo:1` would mean docker.io: refused, nothing contacted."""
    env, _ = imported
    r = env.cli("push", "demo:1")
    assert (r.code, r.out, r.err) == (
        2, "", "layers: image demo:1 has no name that names a registry (demo:1); say where "
               "to push it: layers push demo:1 REGISTRY/REPOSITORY[:TAG]\n")


def test_push_without_destination_uses_a_name_that_names_a_registry(imported):
    env, _ = imported
    with socket.socket() as s:          # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.ok("tag", "demo:1", f"127.0.0.1:{port}/team/demo:1")
    r = env.cli("push", "demo:1", "--retries", "0", "--tls-verify=false")
    assert r.code == 1
    assert r.err.startswith(f"layers: registry 127.0.0.1:{port}: GET /v2/: ConnectError"), r.err


def test_help_says_where_storage_conf_is_read_from(store_env):
    r = store_env.cli_proc("--help")
    assert r.code == 0
    text = " ".join(r.out.split())
    assert ("storage.conf is read from $STRATA_STORAGE_CONF, else "
            "$XDG_CONFIG_HOME/strata/storage.conf (~/.config/strata/storage.conf), else "
            "/etc/strata/storage.conf") in text


def test_info_names_the_storage_conf_read(store_env, tmp_path):
    assert f"storage.conf: {store_env.conf}" in store_env.ok("info").lines
    if os.path.exists("/etc/strata/storage.conf"):
        pytest.skip("this machine has an /etc/strata/storage.conf")
    del store_env.env["STRATA_STORAGE_CONF"]
    r = store_env.cli_proc("info", XDG_CONFIG_HOME=str(tmp_path / "nothing"))
    assert r.code == 0, r.err
    assert "storage.conf: none, defaults" in r.out.splitlines()


# -- prune, as podman does it ---------------------------------------------------------

@pytest.fixture
def prunable(imported):
    """An unmounted container with a change, a dangling image, an anonymous
    and a named volume nothing uses."""
    env, _ = imported
    env.ok("create", "demo:1", "--name", "idle", "-v", "/anon")
    mp = env.ok("mount", "idle").out.strip()
    with open(os.path.join(mp, "uncommitted"), "w") as f:
        f.write("work")
    env.ok("umount", "idle")
    env.ok("commit", "idle", "demo:2")
    env.ok("tag", "demo:2", "demo:1")           # the old demo:1 is dangling now
    env.ok("volume", "create", "named")
    return env


def test_prune_without_a_terminal_needs_force(prunable):
    env = prunable
    for args in (["prune"], ["system", "prune"], ["container", "prune"],
                 ["image", "prune"], ["volume", "prune"]):
        r = env.cli(*args)
        assert (r.code, r.out, r.err) == (2, "", "layers: prune asks before it removes, and "
                                                 "there is no terminal to ask on: use -f\n")
    assert env.ok("ps", "-q").out != ""


def test_prune_asks_on_a_terminal(prunable):
    env = prunable
    argv = [LAYERS_EXE] + env.args() + ["prune"]
    code, out = run_on_terminal(argv, env.proc_env(), answer=b"n\n")
    assert code == 0
    assert "WARNING! This command removes:" in out
    assert "all unmounted containers, with the changes they hold" in out
    assert out.rstrip().endswith("Are you sure you want to continue? [y/N] n")
    assert env.ok("ps", "-q").out != ""
    code, out = run_on_terminal(argv, env.proc_env(), answer=b"y\n")
    assert code == 0 and "removed container idle (" in out
    assert env.ok("ps", "-q").out == ""


def test_prune_subcommands_remove_what_podman_s_do(prunable):
    env = prunable
    assert [line.split(" (")[0] for line in env.ok("container", "prune", "-f").lines[:-1]] \
        == ["removed container idle"]
    removed = env.ok("image", "prune", "-f").lines
    assert removed[0].startswith("removed image ") and "(<none>)" in removed[0]
    assert env.ok("images", "-q").out != ""                   # demo:1 and demo:2 stay
    anon = [v for v in env.ok("volume", "ls", "-q").lines if v != "named"]
    assert env.ok("volume", "prune", "-f").lines[0].startswith(f"removed volume {anon[0]} (")
    assert env.ok("volume", "ls", "-q").lines == ["named"]
    assert env.ok("image", "prune", "-a", "-f").lines[0].startswith("removed image ")
    assert env.ok("images", "-q").out == ""
    assert env.ok("system", "prune", "-a", "-f", "--volumes").lines == ["freed 0B (0 bytes)"]
    assert env.ok("volume", "ls", "-q").lines == ["named"]    # only volume prune -a takes it


def test_system_prune_leaves_volumes_without_the_flag_and_says_nothing_of_locks(prunable):
    env = prunable
    staging = env.root / "staging"
    (staging / ("b" * 64 + ".lock")).write_bytes(b"")       # as an import leaves one
    out = env.ok("system", "prune", "-a", "-f").lines
    assert not any("lock" in line or "volume" in line for line in out), out
    assert not any(n.endswith(".lock") for n in os.listdir(staging))
    assert len(env.ok("volume", "ls", "-q").lines) == 2
    out = env.ok("prune", "-f", "--volumes").lines
    assert [line.split(" (")[0].split()[1] for line in out[:-1]] == ["volume"]


def test_the_command_line_loads_no_workflow_nor_transfer_code_before_a_command_needs_it():
    """Every command starts by importing the CLI: `create` and `mount`, on a
    lazy container's way to its first output, loaded pull's, push's, the
    fetcher's and every other workflow's modules, HTTP and TLS included (a
    third of their start-up).  Checked in a fresh interpreter, not timed."""
    code = "import json, sys, layers.cli; print(json.dumps(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    loaded = set(json.loads(r.stdout.splitlines()[-1]))
    assert not loaded & {"layers.ingest", "layers.push", "layers.fetcher", "layers.als",
                         "layers.export", "layers.commit", "layers.check", "layers.cleanup",
                         "layers.registry.session", "layers.registry.client",
                         "layers.registry.upload", "layers.source", "ssl"}
