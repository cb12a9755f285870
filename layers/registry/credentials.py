"""Credentials for a registry, from the files podman and docker write.

Searched in this order (the first file that has an entry for the registry
wins): `--authfile`, `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/
auth.json`, `$XDG_CONFIG_HOME/containers/auth.json` (`~/.config`),
`$DOCKER_CONFIG/config.json` (`~/.docker/config.json`).  In a file, the
most specific key wins: `registry/namespace/repo`, then its parents, then
`registry`; keys may carry a scheme and docker's `/v1/` path, and docker.io
answers to its old names.  An entry is `{"auth": base64("user:password")}`
or `username`/`password`; `credHelpers` / `credsStore` name a
`docker-credential-NAME` program asked with `get`.

A password is never printed: `Credentials.__repr__` hides it, and errors
name the file, not its contents.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field

from ..errors import ConfigError
from .reference import DOCKER_HUB

HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")
HELPER_TIMEOUT = 30


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    source: str = ""                       # the file or helper they came from

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, source={self.source!r})"


def parse_creds(text: str) -> Credentials:
    """`USER:PASSWORD` from the command line."""
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise ConfigError("--creds", "expected USER:PASSWORD")
    return Credentials(user, password, "--creds")


def auth_files(env=os.environ, authfile: str | None = None) -> list[str]:
    if authfile:
        return [authfile]
    out = []
    if env.get("REGISTRY_AUTH_FILE"):
        out.append(env["REGISTRY_AUTH_FILE"])
    home = os.path.expanduser("~")
    if env.get("XDG_RUNTIME_DIR"):
        out.append(os.path.join(env["XDG_RUNTIME_DIR"], "containers", "auth.json"))
    config_home = env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    out.append(os.path.join(config_home, "containers", "auth.json"))
    docker = env.get("DOCKER_CONFIG") or os.path.join(home, ".docker")
    out.append(os.path.join(docker, "config.json"))
    return out


def _normalize_key(key: str) -> str:
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    key = key.rstrip("/")
    if key.endswith("/v1") or key.endswith("/v2"):
        key = key[:-3]
    host, sep, rest = key.partition("/")
    if host in HUB_ALIASES:
        host = DOCKER_HUB
    return host + sep + rest


def _candidates(registry: str, repository: str) -> list[str]:
    """Keys to look for, most specific first."""
    parts = repository.split("/")
    out = [f"{registry}/{'/'.join(parts[:n])}" for n in range(len(parts), 0, -1)]
    return out + [registry]


def _read(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            raw = f.read(4 << 20)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(path, e.strerror or str(e)) from None
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ConfigError(path, "not JSON") from None
    if not isinstance(doc, dict):
        raise ConfigError(path, "not a JSON object")
    return doc


def _decode_entry(entry, path: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        try:
            text = base64.b64decode(entry["auth"], validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            raise ConfigError(path, "an \"auth\" entry is not base64 of USER:PASSWORD") from None
        user, sep, password = text.partition(":")
        if not sep:
            raise ConfigError(path, "an \"auth\" entry is not base64 of USER:PASSWORD")
        return Credentials(user, password, path)
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return Credentials(entry["username"], entry["password"], path)
    return None


def _helper(name: str, server: str, path: str, env) -> Credentials | None:
    exe = f"docker-credential-{name}"
    if "/" in name:
        raise ConfigError(path, f"credential helper name {name!r}")
    found = shutil.which(exe, path=env.get("PATH", os.defpath))
    if found is None:
        raise ConfigError(path, f"credential helper {exe} is not installed")
    try:
        p = subprocess.run([found, "get"], input=server.encode(), capture_output=True,
                           timeout=HELPER_TIMEOUT)
    except OSError as e:
        raise ConfigError(path, f"credential helper {exe}: {e.strerror or e}") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(path, f"credential helper {exe} did not answer") from None
    if p.returncode != 0:
        return None            # "credentials not found in native keychain"
    try:
        doc = json.loads(p.stdout)
        user, secret = doc["Username"], doc["Secret"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(path, f"credential helper {exe} answered no credentials") from None
    return Credentials(user, secret, exe)


def find_credentials(registry: str, repository: str, env=os.environ,
                     authfile: str | None = None) -> Credentials | None:
    """The credentials for `registry`/`repository`, or None (anonymous)."""
    wanted = _candidates(registry, repository)
    for path in auth_files(env, authfile):
        doc = _read(path)
        if doc is None:
            if authfile:
                raise ConfigError(path, "no such file")
            continue
        auths = doc.get("auths") if isinstance(doc.get("auths"), dict) else {}
        by_key = {_normalize_key(k): v for k, v in auths.items()}
        helpers = doc.get("credHelpers") if isinstance(doc.get("credHelpers"), dict) else {}
        helpers = {_normalize_key(k): v for k, v in helpers.items()}
        for key in wanted:
            if key in helpers and isinstance(helpers[key], str):
                found = _helper(helpers[key], key, path, env)
                if found is not None:
                    return found
            creds = _decode_entry(by_key.get(key), path)
            if creds is not None:
                return creds
        if isinstance(doc.get("credsStore"), str) and doc["credsStore"]:
            server = "https://index.docker.io/v1/" if registry == DOCKER_HUB else registry
            found = _helper(doc["credsStore"], server, path, env)
            if found is not None:
                return found
    return None
