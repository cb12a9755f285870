"""The registry kinds of `LayersError`; each names the registry it is about.

Credentials never appear in a message."""

from __future__ import annotations

from ..errors import LayersError


class RegistryError(LayersError):
    """A registry answered something we cannot use, or could not be reached."""

    def __init__(self, registry: str, reason: str):
        self.registry = registry
        self.reason = reason
        super().__init__(f"registry {registry}: {reason}")


class RegistryAuthError(RegistryError):
    """401 or 403: no credentials, rejected ones, or no permission."""


class RegistryNotFound(RegistryError):
    """The manifest or blob is not in the repository."""


class RegistryUnavailable(RegistryError):
    """Transport failures or 5xx answers that outlived every retry."""


class RegistryTLSError(RegistryError):
    """The registry's certificate is not trusted (or TLS fails altogether)."""


class Aborted(LayersError):
    """A transfer stopped because another one of the same command failed."""

    def __init__(self) -> None:
        super().__init__("stopped: another transfer of this command failed")
