"""`registries.conf`: where references are pulled from and pushed to.

The containers-registries.conf(5) format, version 2 (TOML), the part that
applies here::

    unqualified-search-registries = ["docker.io"]   # first one: short names

    [[registry]]
    prefix = "example.com/team"      # matches example.com/team[/…] (or
                                     # "*.example.com": any host under it)
    location = "internal:5000/team"  # what the prefix is replaced with
    insecure = true                  # plain HTTP, or HTTPS without verification
    blocked = false                  # refuse pulls and pushes
    [[registry.mirror]]              # pulls try these first, in order
    location = "mirror.local:5000/team"
    insecure = true

and version 1's `[registries.insecure] registries = [...]` and
`[registries.block] registries = [...]`.  Other keys (aliases, short-name
modes, …) are ignored.  The most specific prefix wins; a prefix matches a
whole path component.

Found at `--registries-conf`, `$STRATA_REGISTRIES_CONF`,
`$XDG_CONFIG_HOME/strata/registries.conf`, `/etc/strata/registries.conf`,
then podman's `$XDG_CONFIG_HOME/containers/registries.conf` and
`/etc/containers/registries.conf`; the first that exists is read.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass

from ..errors import ConfigError
from .reference import DOCKER_HUB, Reference


@dataclass(frozen=True)
class Endpoint:
    """One place to talk to: `registry/repository` (the reference moved) and
    whether TLS may be skipped."""
    reference: Reference
    insecure: bool
    mirror: bool = False


@dataclass(frozen=True)
class Rule:
    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirrors: tuple[tuple[str, bool], ...] = ()      # (location, insecure)

    def matches(self, name: str) -> bool:
        if self.prefix.startswith("*."):
            host = name.split("/", 1)[0].split(":", 1)[0]
            return host.endswith(self.prefix[1:])
        return name == self.prefix or name.startswith(self.prefix + "/")

    def rewrite(self, ref: Reference, location: str) -> Reference:
        if self.prefix.startswith("*."):
            return ref
        return ref.moved(location + ref.name[len(self.prefix):])


@dataclass(frozen=True)
class RegistriesConf:
    rules: tuple[Rule, ...] = ()
    search: tuple[str, ...] = (DOCKER_HUB,)
    source: str | None = None

    @property
    def default_registry(self) -> str:
        return self.search[0] if self.search else DOCKER_HUB

    def rule_for(self, ref: Reference) -> Rule | None:
        found = [r for r in self.rules if r.matches(ref.name)]
        if not found:
            return None
        # the longest prefix; a wildcard counts as shorter than any path
        return max(found, key=lambda r: -1 if r.prefix.startswith("*.") else len(r.prefix))

    def pull_endpoints(self, ref: Reference) -> list[Endpoint]:
        """Mirrors in order, then the registry itself; ConfigError when the
        rule blocks it."""
        rule = self.rule_for(ref)
        if rule is None:
            return [Endpoint(ref, False)]
        if rule.blocked:
            raise ConfigError(self.source or "registries.conf",
                              f"registry {ref.registry} is blocked")
        out = [Endpoint(rule.rewrite(ref, loc), insecure, True)
               for loc, insecure in rule.mirrors]
        return out + [Endpoint(rule.rewrite(ref, rule.location), rule.insecure)]

    def push_endpoint(self, ref: Reference) -> Endpoint:
        """Pushes go to the registry (its `location`), never to a mirror."""
        return self.pull_endpoints(ref)[-1]


def conf_paths(env=os.environ) -> list[str]:
    config_home = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                            ".config")
    out = [env["STRATA_REGISTRIES_CONF"]] if env.get("STRATA_REGISTRIES_CONF") else []
    return out + [os.path.join(config_home, "strata", "registries.conf"),
                  "/etc/strata/registries.conf",
                  os.path.join(config_home, "containers", "registries.conf"),
                  "/etc/containers/registries.conf"]


def load(path: str | None = None, env=os.environ) -> RegistriesConf:
    """The first registries.conf found (module doc); defaults when none."""
    for candidate in ([path] if path else conf_paths(env)):
        try:
            with open(candidate, "rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            if path:
                raise ConfigError(path, "no such file") from None
            continue
        except OSError as e:
            raise ConfigError(candidate, e.strerror or str(e)) from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(candidate, f"not TOML ({e})") from None
        return parse(doc, candidate)
    return RegistriesConf()


def _str(value, where: str, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(where, f"{key} must be a non-empty string")
    return value


def _bool(value, where: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(where, f"{key} must be true or false")
    return value


def _location(text: str, where: str) -> str:
    """A location/prefix: `host[:port][/path]`, no scheme."""
    text = text.rstrip("/")
    if "://" in text or " " in text:
        raise ConfigError(where, f"location {text!r} must be host[:port][/path]")
    return text


def parse(doc: dict, where: str = "registries.conf") -> RegistriesConf:
    search = doc.get("unqualified-search-registries", [DOCKER_HUB])
    if not isinstance(search, list) or not all(isinstance(s, str) for s in search):
        raise ConfigError(where, "unqualified-search-registries must be a list of strings")
    rules: dict[str, Rule] = {}
    entries = doc.get("registry", [])
    if not isinstance(entries, list):
        raise ConfigError(where, "[[registry]] must be an array of tables")
    for entry in entries:
        if not isinstance(entry, dict):
            raise ConfigError(where, "[[registry]] must be an array of tables")
        location = entry.get("location")
        prefix = entry.get("prefix", location)
        prefix = _location(_str(prefix, where, "registry prefix"), where)
        location = _location(_str(location, where, "registry location"), where) \
            if location is not None else prefix
        mirrors = []
        for m in entry.get("mirror", []):
            if not isinstance(m, dict):
                raise ConfigError(where, "[[registry.mirror]] must be an array of tables")
            mirrors.append((_location(_str(m.get("location"), where, "mirror location"),
                                      where),
                            _bool(m.get("insecure", False), where, "mirror insecure")))
        rules[prefix] = Rule(prefix, location,
                             _bool(entry.get("insecure", False), where, "insecure"),
                             _bool(entry.get("blocked", False), where, "blocked"),
                             tuple(mirrors))
    v1 = doc.get("registries", {})
    if isinstance(v1, dict):
        for key, flag in (("insecure", "insecure"), ("block", "blocked")):
            table = v1.get(key, {})
            hosts = table.get("registries", []) if isinstance(table, dict) else []
            for host in hosts:
                host = _location(_str(host, where, f"registries.{key}"), where)
                old = rules.get(host, Rule(host, host))
                rules[host] = Rule(old.prefix, old.location,
                                   old.insecure or flag == "insecure",
                                   old.blocked or flag == "blocked", old.mirrors)
    return RegistriesConf(tuple(rules.values()), tuple(search) or (DOCKER_HUB,), where)
