"""The effective configuration: defaults, `storage.conf`, command-line flags.

`storage.conf` is TOML with the containers-storage keys that apply::

    [storage]
    driver = "fuse"            # fuse | overlay | vfs | btrfs ("overlay" with a
    graphroot = "/var/lib/strata"  # mount_program means fuse, as in podman)
    runroot = "/run/strata"
    [storage.options.overlay]
    mount_program = "/usr/bin/fsd"
    mountopt = "nodev"
    ignore_chown_errors = "true"
    force_mask = "shared"      # shared (0755), private (0700) or octal
    [storage.options]
    size = "10G"               # default limits of a container's writable layer
    inodes = "100000"          # (also under [storage.options.overlay])
    user_quota = "50G"         # all containers of one user in this store

Sizes are an integer or N with K, M, G or T (powers of 1024, as in
containers-storage); "" means no limit.

Where it is found is `WHERE_READ` (`find_storage_conf`): the first that
exists wins.  Unknown keys produce warnings, not errors.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field

from .errors import ConfigError

DRIVERS = ("fuse", "overlay", "vfs", "btrfs")
DEFAULT_DRIVER = "fuse"

_KNOWN = {
    "storage": {"driver", "graphroot", "runroot", "options", "rootless_storage_path",
                "transient_store"},
    "storage.options": {"overlay", "additionalimagestores", "pull_options",
                        "mount_program", "mountopt", "ignore_chown_errors",
                        "force_mask", "size", "inodes", "user_quota"},
    "storage.options.overlay": {"mount_program", "mountopt", "ignore_chown_errors",
                                "force_mask", "skip_mount_home", "inodes", "size",
                                "use_composefs"},
}


@dataclass(frozen=True)
class Config:
    root: str
    runroot: str
    driver: str | None                  # None: keep what the store has, else default
    mount_program: str | None
    mountopt: str
    ignore_chown_errors: bool
    force_mask: int | None
    source: str | None                  # the storage.conf read, if any
    warnings: tuple[str, ...] = field(default=())
    size: int | None = None             # default byte limit of a container
    inodes: int | None = None           # default inode limit of a container
    user_quota: int | None = None       # bytes for all of one user's containers

    def as_dict(self) -> dict:
        return {"root": self.root, "runroot": self.runroot,
                # None: the store's recorded driver, or for a new store the
                # one its filesystem calls for (driverchoice.py)
                "driver": self.driver or "auto",
                "mount_program": self.mount_program, "mountopt": self.mountopt,
                "ignore_chown_errors": self.ignore_chown_errors,
                "force_mask": None if self.force_mask is None else f"0{self.force_mask:o}",
                "storage_conf": self.source, "size": self.size, "inodes": self.inodes,
                "user_quota": self.user_quota}


def default_root(env=os.environ, euid: int | None = None) -> str:
    if (os.geteuid() if euid is None else euid) == 0:
        return "/var/lib/strata"
    data = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"),
                                                   ".local", "share")
    return os.path.join(data, "strata")


def default_runroot(env=os.environ, euid: int | None = None) -> str:
    uid = os.geteuid() if euid is None else euid
    if uid == 0:
        return "/run/strata"
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "strata")
    return os.path.join("/tmp", f"strata-run-{uid}")


# What `find_storage_conf` does, in the words `layers --help` and the README use.
WHERE_READ = ("storage.conf is read from $STRATA_STORAGE_CONF, else "
              "$XDG_CONFIG_HOME/strata/storage.conf (~/.config/strata/storage.conf), "
              "else /etc/strata/storage.conf: the first that exists; none means defaults")


def find_storage_conf(env=os.environ) -> str | None:
    explicit = env.get("STRATA_STORAGE_CONF")
    if explicit:
        if not os.path.exists(explicit):
            raise ConfigError(explicit, "STRATA_STORAGE_CONF names a missing file")
        return explicit
    home_conf = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                          ".config")
    for path in (os.path.join(home_conf, "strata", "storage.conf"),
                 "/etc/strata/storage.conf"):
        if os.path.exists(path):
            return path
    return None


def parse_force_mask(value, path: str) -> int | None:
    if value in (None, ""):
        return None
    if value == "shared":
        return 0o755
    if value == "private":
        return 0o700
    try:
        mask = int(str(value), 8)
    except ValueError:
        raise ConfigError(path, f"force_mask {value!r} is not shared, private or octal") \
            from None
    if not 0 <= mask <= 0o7777:
        raise ConfigError(path, f"force_mask {value!r} out of range")
    return mask


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value, where: str, key: str = "size") -> int | None:
    """A limit in bytes: an integer, or N with K, M, G or T (powers of 1024;
    "B" or "iB" may follow); "" or None: no limit.  ConfigError(where, …)
    for anything else, 0 included (a writable layer that holds nothing)."""
    if value is None or value == "":
        return None
    text = str(value).strip().lower() if not isinstance(value, bool) else "?"
    text = text.removesuffix("b").removesuffix("i")
    unit = text[-1:] if text[-1:] in _SIZE_UNITS else ""
    number = text[:len(text) - len(unit)]
    if not (number.isascii() and number.isdigit()) or int(number) == 0:
        raise ConfigError(where, f"{key} {value!r} is not a size above 0 "
                                 "(N, NK, NM, NG or NT)")
    return int(number) * _SIZE_UNITS[unit]


def parse_count(value, where: str, key: str = "inodes") -> int | None:
    """A limit on a number of objects: an integer above 0; "" or None: none."""
    if value is None or value == "":
        return None
    text = str(value).strip() if not isinstance(value, bool) else "?"
    if not (text.isascii() and text.isdigit()) or int(text) == 0:
        raise ConfigError(where, f"{key} {value!r} is not a number above 0")
    return int(text)


def _truthy(value) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")


def load(root: str | None = None, runroot: str | None = None,
         driver: str | None = None, env=os.environ) -> Config:
    """The effective configuration; flags beat storage.conf beat defaults."""
    path = find_storage_conf(env)
    doc: dict = {}
    warnings: list[str] = []
    if path is not None:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(path, str(e)) from None
        warnings = _unknown_keys(doc, path)
    storage = doc.get("storage") or {}
    options = storage.get("options") or {}
    overlay = options.get("overlay") or {}

    def opt(key, default=None):
        return overlay.get(key, options.get(key, default))

    mount_program = opt("mount_program")
    conf_driver = storage.get("driver")
    if conf_driver == "overlay" and mount_program:
        conf_driver = "fuse"
    chosen = driver or conf_driver or None
    if chosen is not None and chosen not in DRIVERS:
        raise ConfigError(path or "--driver", f"unknown driver {chosen!r} "
                                              f"(one of {', '.join(DRIVERS)})")
    return Config(
        root=os.path.abspath(root or storage.get("graphroot") or default_root(env)),
        runroot=os.path.abspath(runroot or storage.get("runroot") or default_runroot(env)),
        driver=chosen,
        mount_program=mount_program or None,
        mountopt=str(opt("mountopt", "") or ""),
        ignore_chown_errors=_truthy(opt("ignore_chown_errors", False)),
        force_mask=parse_force_mask(opt("force_mask"), path or "storage.conf"),
        source=path,
        warnings=tuple(warnings),
        size=parse_size(opt("size"), path or "storage.conf"),
        inodes=parse_count(opt("inodes"), path or "storage.conf"),
        user_quota=parse_size(options.get("user_quota"), path or "storage.conf",
                              "user_quota"),
    )


def _unknown_keys(doc: dict, path: str) -> list[str]:
    out = []
    for key in doc:
        if key != "storage":
            out.append(f"{path}: unknown key [{key}] ignored")
    storage = doc.get("storage")
    if not isinstance(storage, dict):
        return out
    for section, known in _KNOWN.items():
        node = doc
        for part in section.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        for key in node:
            if key not in known:
                out.append(f"{path}: unknown key {section}.{key} ignored")
    return out
