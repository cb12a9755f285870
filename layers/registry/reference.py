"""Image references: `[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`.

Normalized as docker and podman do: a first component with a `.` or a `:`, or
`localhost`, is a registry; otherwise the registry is `docker.io`, where a
one-component repository lives under `library/`.  Without tag and digest
the tag is `latest`.  The repository is checked against the OCI grammar and a
digest must be sha256 (`Digest.parse`), so neither can smuggle a path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..digest import Digest
from ..errors import BadReference

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_HOST = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
                   r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                   r"|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")


@dataclass(frozen=True)
class Reference:
    registry: str                 # "docker.io", "127.0.0.1:5000"
    repository: str               # "library/alpine"
    tag: str | None = None
    digest: Digest | None = None

    @property
    def name(self) -> str:
        """`registry/repository`: what registries.conf prefixes match."""
        return f"{self.registry}/{self.repository}"

    @property
    def image_name(self) -> str | None:
        """`registry/repository:tag`, the store's name for it; None by digest only."""
        return f"{self.name}:{self.tag}" if self.tag else None

    @property
    def manifest_ref(self) -> str:
        """What goes after `/manifests/`: the digest when there is one."""
        return str(self.digest) if self.digest else (self.tag or "latest")

    @property
    def api_host(self) -> str:
        """host[:port] the API is served on (docker.io's is another host)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    def moved(self, name: str) -> "Reference":
        """The same tag and digest under another `registry/repository`."""
        registry, _, repository = name.partition("/")
        if not repository:
            raise BadReference(name, "registry location")
        return Reference(registry, repository, self.tag, self.digest)


def split_registry(name: str) -> tuple[str | None, str]:
    """`name` → (registry or None, the rest), by docker's rule (module doc)."""
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return None, name


def parse_reference(text: str, default_registry: str = DOCKER_HUB) -> Reference:
    """Parse and normalize (module doc); BadReference when malformed."""
    if not isinstance(text, str) or not text or len(text) > 512:
        raise BadReference(str(text), "image reference")
    rest, digest = text, None
    if "@" in text:
        rest, _, dtext = text.partition("@")
        try:
            digest = Digest.parse(dtext)
        except BadReference:
            raise BadReference(text, "image reference (digest)") from None
    name, tag = rest, None
    slash, colon = rest.rfind("/"), rest.rfind(":")
    if colon > slash:
        name, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise BadReference(text, "image reference (tag)")
    registry, repository = split_registry(name)
    if registry is None:
        registry = default_registry
    elif not _HOST.fullmatch(registry):
        raise BadReference(text, "image reference (registry)")
    if registry in ("index.docker.io", DOCKER_HUB_API):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not _REPOSITORY.fullmatch(repository) or len(repository) > 255:
        raise BadReference(text, "image reference (repository)")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, repository, tag, digest)
