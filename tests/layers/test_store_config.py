import pytest

from layers import config
from layers.errors import ConfigError


def load(tmp_path, text, **kw):
    conf = tmp_path / "storage.conf"
    conf.write_text(text)
    return config.load(env={"STRATA_STORAGE_CONF": str(conf)}, **kw)


def test_containers_storage_keys(tmp_path):
    cfg = load(tmp_path, f"""
[storage]
driver = "overlay"
graphroot = "{tmp_path}/g"
runroot = "{tmp_path}/r"
[storage.options.overlay]
mount_program = "/usr/bin/fsd"
mountopt = "nodev"
ignore_chown_errors = "true"
force_mask = "shared"
""")
    assert cfg.driver == "fuse"          # overlay + mount_program, as in podman
    assert cfg.root == f"{tmp_path}/g" and cfg.runroot == f"{tmp_path}/r"
    assert cfg.mount_program == "/usr/bin/fsd" and cfg.mountopt == "nodev"
    assert cfg.ignore_chown_errors is True and cfg.force_mask == 0o755
    assert cfg.warnings == ()


def test_flags_beat_the_file(tmp_path):
    cfg = load(tmp_path, '[storage]\ndriver = "vfs"\ngraphroot = "/nope"\n',
               root=str(tmp_path / "x"), driver="overlay")
    assert cfg.driver == "overlay" and cfg.root == str(tmp_path / "x")


def test_unknown_keys_warn(tmp_path):
    cfg = load(tmp_path, '[storage]\nfoo = 1\n[storage.options.overlay]\nbar = 2\n[other]\n')
    conf = tmp_path / "storage.conf"
    assert cfg.warnings == (f"{conf}: unknown key [other] ignored",
                            f"{conf}: unknown key storage.foo ignored",
                            f"{conf}: unknown key storage.options.overlay.bar ignored")


@pytest.mark.parametrize("text, reason", [
    ('[storage]\ndriver = "zfs"\n', "unknown driver 'zfs' (one of fuse, overlay, vfs, btrfs)"),
    ('[storage.options]\nforce_mask = "wide"\n',
     "force_mask 'wide' is not shared, private or octal"),
])
def test_bad_values(tmp_path, text, reason):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    assert str(e.value) == f"configuration {tmp_path}/storage.conf: {reason}"


def test_bad_toml(tmp_path):
    with pytest.raises(ConfigError):
        load(tmp_path, "[storage\n")


def test_defaults_follow_the_user():
    assert config.default_root({}, euid=0) == "/var/lib/strata"
    assert config.default_runroot({}, euid=0) == "/run/strata"
    env = {"XDG_DATA_HOME": "/h/data", "XDG_RUNTIME_DIR": "/run/user/5"}
    assert config.default_root(env, euid=5) == "/h/data/strata"
    assert config.default_runroot(env, euid=5) == "/run/user/5/strata"


def test_search_order(tmp_path):
    home = tmp_path / "cfg"
    (home / "strata").mkdir(parents=True)
    (home / "strata" / "storage.conf").write_text("")
    assert config.find_storage_conf({"XDG_CONFIG_HOME": str(home)}) == \
        str(home / "strata" / "storage.conf")
    with pytest.raises(ConfigError):
        config.find_storage_conf({"STRATA_STORAGE_CONF": str(tmp_path / "missing")})
