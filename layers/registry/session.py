"""What one `pull` or `push` talks to: options, registries.conf, endpoints.

- `open_pull(text, options)`: the reference (short names completed with the
  first `unqualified-search-registries` entry) is tried at each mirror, then
  at the registry itself; the first that has the manifest is used for all of
  the image (a mirror that fails or lacks it is passed over; the registry's
  own failure is the error).  Yields a `Pull`: the resolved `RemoteImage`,
  named by the reference asked for.
- `open_push(text, options, cache)`: a `Pusher` for the registry's location
  (never a mirror), once the registry has been reached and has let us push
  (`Pusher.check_access`), so that a wrong host, TLS setting or credential
  fails before any layer is compressed; a digest reference is refused.

TLS: verified unless `--tls-verify=false`, or, without the flag, the
registry is `insecure` in registries.conf.  Credentials: `--creds`, else
the auth files (`credentials.find_credentials`) for the endpoint's registry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from dataclasses import dataclass
from typing import Iterator

from ..digest import Digest
from ..errors import UsageError
from . import regconf
from .choices import DEFAULT_JOBS
from .blobinfo import BlobInfoCache
from .client import ClientOptions, RegistryClient
from .credentials import Credentials, find_credentials
from .errors import RegistryAuthError, RegistryError
from .reference import Reference, parse_reference
from .remote import Platform, RemoteImage, resolve
from .upload import PushedBlob, Pusher, check_options


@dataclass(frozen=True)
class RegistryOptions:
    tls_verify: bool | None = None      # None: registries.conf decides
    cert_dir: str | None = None
    creds: Credentials | None = None
    authfile: str | None = None
    registries_conf: str | None = None
    retries: int = 3
    backoff: float = 0.5
    timeout: float = 60.0
    jobs: int = DEFAULT_JOBS
    platform: Platform | None = None    # pull; None: the host's
    format: str = "oci"                 # push: oci | v2s2
    compression: str = "gzip"           # push: gzip | none | estargz (seekable gzip)
    compression_level: int = 6
    chunk_size: int = 0                 # push: PATCH size; 0: monolithic


@dataclass(frozen=True)
class LayerTransfer:
    index: int
    layer: Digest               # ChainID
    blob: Digest
    size: int                   # of the blob, as its descriptor says
    outcome: str                # "present" (in the store), "parked" (kept by an
                                # interrupted pull), "fetched", "lazy" (its TOC only)
    received: int               # bytes received for it
    saved: int = 0              # blob bytes not fetched: their files were in the store


@dataclass(frozen=True)
class PullReport:
    reference: str              # as asked, normalized
    found_at: str               # where the manifest came from (a mirror, maybe)
    image_id: str
    names: tuple[str, ...]
    manifest_digest: Digest | None
    layers: list[LayerTransfer]
    received: int               # layer bytes received
    seconds: float
    mirrors_passed: list[str]

    @property
    def saved(self) -> int:
        return sum(t.saved for t in self.layers)

    def as_dict(self) -> dict:
        return {"reference": self.reference, "found_at": self.found_at,
                "image": self.image_id, "names": list(self.names),
                "manifest_digest": str(self.manifest_digest) if self.manifest_digest else None,
                "layers": [{"index": t.index, "layer": str(t.layer), "blob": str(t.blob),
                            "size": t.size, "outcome": t.outcome, "received": t.received,
                            "saved": t.saved}
                           for t in self.layers],
                "received": self.received, "saved": self.saved,
                "seconds": round(self.seconds, 3),
                "mirrors_passed": self.mirrors_passed}


@dataclass(frozen=True)
class PushReport:
    destination: str
    image_id: str
    manifest_digest: Digest
    layers: list[PushedBlob]
    config: PushedBlob
    sent: int                   # blob bytes uploaded
    seconds: float
    warnings: list[str]

    def as_dict(self) -> dict:
        def blob(b: PushedBlob) -> dict:
            return {"digest": str(b.digest), "size": b.size, "media_type": b.media_type,
                    "diff_id": str(b.diff_id) if b.diff_id else None,
                    "status": b.status, "sent": b.sent}
        return {"destination": self.destination, "image": self.image_id,
                "manifest_digest": str(self.manifest_digest),
                "layers": [blob(b) for b in self.layers], "config": blob(self.config),
                "sent": self.sent, "seconds": round(self.seconds, 3),
                "warnings": self.warnings}


@dataclass
class Pull:
    asked: Reference                    # what the user named
    remote: RemoteImage                 # where it was found (a mirror, maybe)
    client: RegistryClient
    abort: threading.Event
    mirrors_passed: list[str]           # "mirror: reason" of mirrors that failed


def _client(endpoint: regconf.Endpoint, options: RegistryOptions,
            abort: threading.Event, env=os.environ) -> RegistryClient:
    insecure = endpoint.insecure if options.tls_verify is None else not options.tls_verify
    ref = endpoint.reference
    cached: dict[str, Credentials | None] = {}
    lock = threading.Lock()

    def creds_for(repository: str) -> Credentials | None:
        if options.creds is not None:
            return options.creds
        with lock:
            if repository not in cached:
                cached[repository] = find_credentials(ref.registry, repository, env,
                                                      options.authfile)
            return cached[repository]

    copts = ClientOptions(tls_verify=not insecure, cert_dir=options.cert_dir,
                          retries=options.retries, backoff=options.backoff,
                          timeout=options.timeout, chunk_size=options.chunk_size)
    return RegistryClient(ref.api_host, copts, creds_for, insecure=insecure,
                          name=ref.registry, abort=abort)


def blob_client(registry: str, repository: str, insecure: bool, cert_dir: str | None,
                abort: threading.Event, env=os.environ) -> RegistryClient:
    """A client of `registry` for reading blobs of `repository` later, as a
    pull found them (the fetcher of lazy layers: credentials from the auth
    files, TLS as the pull had it)."""
    endpoint = regconf.Endpoint(Reference(registry, repository, None, None), insecure)
    return _client(endpoint, RegistryOptions(tls_verify=not insecure, cert_dir=cert_dir),
                   abort, env)


@contextlib.contextmanager
def open_pull(text: str, options: RegistryOptions, env=os.environ) -> Iterator[Pull]:
    conf = regconf.load(options.registries_conf, env)
    asked = parse_reference(text, conf.default_registry)
    platform = options.platform or Platform.host()
    abort = threading.Event()
    passed: list[str] = []
    endpoints = conf.pull_endpoints(asked)
    for endpoint in endpoints:
        client = _client(endpoint, options, abort, env)
        try:
            remote = resolve(client, endpoint.reference, platform)
        except RegistryError as e:
            client.close()
            if endpoint.mirror and not isinstance(e, RegistryAuthError):
                passed.append(f"{endpoint.reference.registry}: {e.reason}")
                continue
            raise
        except BaseException:
            client.close()
            raise
        names = [asked.image_name] if asked.image_name else []
        remote.source = dataclasses.replace(remote.source, names=names)
        try:
            yield Pull(asked, remote, client, abort, passed)
        finally:
            abort.set()
            client.close()
        return
    raise AssertionError("the registry itself is always the last endpoint")


@contextlib.contextmanager
def open_push(text: str, options: RegistryOptions, cache: BlobInfoCache,
              env=os.environ) -> Iterator[Pusher]:
    check_options(options.format, options.compression)
    conf = regconf.load(options.registries_conf, env)
    ref = parse_reference(text, conf.default_registry)
    if ref.digest is not None:
        raise UsageError(f"push to a tag, not a digest: {text}")
    endpoint = conf.push_endpoint(ref)
    abort = threading.Event()
    client = _client(endpoint, options, abort, env)
    try:
        pusher = Pusher(client, endpoint.reference, options.format, options.compression,
                        options.compression_level, cache)
        pusher.check_access()
        yield pusher
    finally:
        abort.set()
        client.close()
