"""One registry endpoint, spoken to over HTTP(S) with httpx.

`RegistryClient(host, options, creds_for)` talks the OCI Distribution API
to `host` (host[:port]); it is shared by the transfer threads of one command
(httpx's `Client` pool is thread-safe; the client's own state — scheme,
challenge, tokens — changes under its lock).

- TLS is verified, with the system CAs plus the `*.crt` of the certs.d
  directory of the host (`--cert-dir`, else `/etc/containers/certs.d/HOST`,
  `~/.config/containers/certs.d/HOST`, `/etc/docker/certs.d/HOST`; a
  `NAME.cert` + `NAME.key` pair there is a client certificate).  An insecure
  registry (`--tls-verify=false`, registries.conf) is tried over HTTPS without
  verification, then over plain HTTP.
- Authentication follows the challenge of `GET /v2/`: none, Basic (the
  credentials on every request), or Bearer (a token per set of scopes from the
  challenge's realm, asked with the credentials when there are some, kept
  until it expires).  A 401 after that is an error naming what was refused,
  never the password.
- Idempotent requests are retried on transport errors and 429/5xx answers
  with exponential back-off (`Retry-After` honoured, at most 10 s), then fail
  with `RegistryUnavailable` naming the last answer.  A blob stream that
  breaks is resumed from where it broke with a `Range` request.
- Uploads (`upload_blob`) start with `POST …/blobs/uploads/` (offering a
  cross-repository mount when asked), then one `PUT` with the whole body
  (monolithic) or `PATCH`es of `chunk_size` bytes and a closing `PUT`; a
  failed upload is restarted from its `POST`.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from ..digest import Digest
from ..errors import BadArchive, LayersError
from . import auth
from .credentials import Credentials
from .errors import (Aborted, RegistryAuthError, RegistryError, RegistryNotFound,
                     RegistryTLSError, RegistryUnavailable)


def _httpx_on_first_use():
    """httpx, executed when first used (a client made, an exception caught):
    importing it is a fifth of the start-up of `layers`, and most commands
    (create, mount, ...) never speak to a registry."""
    if "httpx" in sys.modules:
        return sys.modules["httpx"]
    spec = importlib.util.find_spec("httpx")
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["httpx"] = module
    spec.loader.exec_module(module)
    return module


httpx = _httpx_on_first_use()


def _import_httpcore_without_trio() -> None:
    """httpx's transport, httpcore (imported when the first client is made),
    imports trio when it is installed (fsd uses it) for async clients this
    one never is: 50 ms of every pull's and every fetcher's start-up.  trio is
    hidden while httpcore is imported, in a process that has not imported it
    itself (the CLI's)."""
    if "httpcore" in sys.modules:
        return
    hide = "trio" not in sys.modules
    if hide:
        sys.modules["trio"] = None          # import trio: ImportError
    try:
        import httpcore  # noqa: F401
    finally:
        if hide:
            del sys.modules["trio"]

USER_AGENT = "strata-layers/0.1"
MANIFEST_LIMIT = 4 << 20
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
MAX_RETRY_AFTER = 10.0
CHUNK = 1 << 16

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+prettyjws",
                  "application/vnd.docker.distribution.manifest.v1+json")
MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
# layer media type → compression of its blob
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": None,
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": None,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}


@dataclass(frozen=True)
class ClientOptions:
    tls_verify: bool = True
    cert_dir: str | None = None
    retries: int = 3                  # extra attempts after the first
    backoff: float = 0.5              # first delay; doubles each time
    timeout: float = 60.0             # connect/read/write, seconds
    chunk_size: int = 0               # upload PATCH size; 0: one PUT


def certs_dirs(host: str, cert_dir: str | None, env=os.environ) -> list[str]:
    if cert_dir:
        return [cert_dir]
    config_home = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                            ".config")
    return [f"/etc/containers/certs.d/{host}",
            os.path.join(config_home, "containers", "certs.d", host),
            f"/etc/docker/certs.d/{host}"]


def ssl_context(host: str, cert_dir: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    for d in certs_dirs(host, cert_dir):
        for ca in sorted(glob.glob(os.path.join(glob.escape(d), "*.crt"))):
            ctx.load_verify_locations(cafile=ca)
        for cert in sorted(glob.glob(os.path.join(glob.escape(d), "*.cert"))):
            ctx.load_cert_chain(cert, cert[:-5] + ".key")
    return ctx


def _tls_failure(e: BaseException) -> ssl.SSLError | None:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ssl.SSLError):
            return e
        e = e.__cause__ or e.__context__
    return None


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}" if text != type(e).__name__ else text


def _error_message(r: httpx.Response) -> str:
    """The registry's own words: the first `errors[].message` of its JSON."""
    try:
        doc = r.json()
        err = doc["errors"][0]
        return f"{err.get('code', '')}: {err.get('message', '')}".strip(": ")
    except Exception:
        return ""


class RegistryClient:
    def __init__(self, host: str, options: ClientOptions,
                 creds_for: Callable[[str], Credentials | None],
                 insecure: bool = False, name: str | None = None,
                 abort: threading.Event | None = None):
        self.host = host                      # where the API is served
        self.name = name or host              # how messages call it
        self.options = options
        self.verify = options.tls_verify and not insecure
        self.creds_for = creds_for
        self.abort = abort or threading.Event()
        verify = ssl_context(host, options.cert_dir) if self.verify else False
        _import_httpcore_without_trio()
        self._http = httpx.Client(
            verify=verify, follow_redirects=True, headers={"User-Agent": USER_AGENT},
            timeout=httpx.Timeout(options.timeout, connect=min(options.timeout, 15.0)),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16))
        self._lock = threading.Lock()
        self._base: str | None = None
        self._challenge: auth.Challenge | None = None
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- sending, with retries ------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        if self.abort.wait(seconds):
            raise Aborted()

    def _delay(self, attempt: int, r: httpx.Response | None = None) -> float:
        if r is not None:
            after = r.headers.get("Retry-After", "")
            if after.isdigit():
                return min(float(after), MAX_RETRY_AFTER)
        return min(self.options.backoff * (2 ** attempt), MAX_RETRY_AFTER)

    def _send(self, method: str, url: str, headers: dict, *, params=None,
              content: Callable[[], object] | None = None, stream: bool = False,
              retry: bool = True) -> httpx.Response:
        """One request, retried (when `retry`) on transport errors and
        RETRY_STATUS answers; the last answer is returned whatever its status.
        `content` makes the body anew for each attempt."""
        attempts = self.options.retries + 1 if retry else 1
        what = f"{method} {httpx.URL(url).path}"
        for k in range(attempts):
            if self.abort.is_set():
                raise Aborted()
            try:
                request = self._http.build_request(
                    method, url, headers=headers, params=params,
                    content=content() if content is not None else None)
                r = self._http.send(request, stream=stream)
            except httpx.TransportError as e:
                bad_tls = _tls_failure(e)
                if bad_tls is not None:
                    raise RegistryTLSError(self.name, self._tls_message(bad_tls)) from None
                if k + 1 < attempts:
                    self._sleep(self._delay(k))
                    continue
                raise RegistryUnavailable(
                    self.name, f"{what}: {_describe(e)}"
                    + (f" (after {attempts} attempts)" if attempts > 1 else "")) from None
            if r.status_code in RETRY_STATUS and k + 1 < attempts:
                delay = self._delay(k, r)
                r.close()
                self._sleep(delay)
                continue
            r.attempts = k + 1
            return r
        raise AssertionError("unreachable")

    def _tls_message(self, e: ssl.SSLError) -> str:
        reason = getattr(e, "verify_message", None) or getattr(e, "reason", None) or str(e)
        if self.verify:
            return (f"TLS failed ({reason}); trust its CA with --cert-dir, or "
                    "use --tls-verify=false for a registry without TLS")
        return f"TLS failed ({reason})"

    # -- the API root, scheme and challenge ---------------------------------------------

    def _ping(self) -> str:
        """The base URL (`https://host` or `http://host`) and the auth challenge,
        learned once from `GET /v2/`."""
        with self._lock:
            if self._base is not None:
                return self._base
            schemes = ["https"] if self.verify else ["https", "http"]
            last: Exception | None = None
            for i, scheme in enumerate(schemes):
                base = f"{scheme}://{self.host}"
                try:
                    # An insecure registry's HTTPS probe is not retried: the
                    # plain-HTTP try follows at once.
                    r = self._send("GET", base + "/v2/", {},
                                   retry=i == len(schemes) - 1)
                except (RegistryTLSError, RegistryUnavailable) as e:
                    last = e
                    continue
                r.close()
                if r.status_code >= 500:
                    raise self._failure(r, "GET /v2/")
                if r.status_code == 401:
                    self._challenge = self._parse_challenge(r)
                self._base = base
                return base
            assert last is not None
            raise last

    def connect(self) -> None:
        """Learn the scheme and the auth challenge now (`GET /v2/`, a round
        trip or two), so that a later request need not wait for them; a
        failure is that request's to report (it tries again)."""
        try:
            self._ping()
        except LayersError:         # RegistryError, Aborted
            pass

    def _parse_challenge(self, r: httpx.Response) -> auth.Challenge | None:
        header = r.headers.get("WWW-Authenticate")
        if not header:
            return None
        try:
            challenges = auth.parse_challenges(header)
        except auth.ChallengeError as e:
            raise RegistryError(self.name, f"unreadable WWW-Authenticate ({e})") from None
        for c in challenges:
            if c.scheme == "bearer":
                return c
        for c in challenges:
            if c.scheme == "basic":
                return c
        return None

    def _authorization(self, repository: str, scopes: tuple[str, ...]) -> str | None:
        challenge = self._challenge
        if challenge is None:
            return None
        creds = self.creds_for(repository)
        if challenge.scheme == "basic":
            return auth.basic_header(creds.username, creds.password) if creds else None
        if challenge.scheme != "bearer" or not challenge.realm:
            return None
        with self._lock:
            token = self._tokens.get(scopes)
            if token is not None and token[1] > time.monotonic():
                return f"Bearer {token[0]}"
            value, lifetime = self._fetch_token(challenge, scopes, creds)
            self._tokens[scopes] = (value, time.monotonic() + max(lifetime - 10, 1))
            return f"Bearer {value}"

    def _fetch_token(self, challenge: auth.Challenge, scopes: tuple[str, ...],
                     creds: Credentials | None) -> tuple[str, int]:
        headers = {}
        if creds is not None:
            headers["Authorization"] = auth.basic_header(creds.username, creds.password)
        r = self._send("GET", challenge.realm, headers,
                       params=auth.token_params(challenge, list(scopes)))
        r.read()
        if r.status_code in (401, 403):
            raise RegistryAuthError(self.name, self._refusal(
                f"token for {' '.join(scopes)}", r.status_code, creds))
        if r.status_code != 200:
            raise self._failure(r, f"token for {' '.join(scopes)}")
        try:
            return auth.parse_token(r.content)
        except auth.ChallengeError as e:
            raise RegistryError(self.name, f"token server: {e}") from None

    def _refusal(self, what: str, status: int, creds: Credentials | None) -> str:
        if status == 403:
            return f"{what}: access denied (403)"
        if creds is None:
            return (f"{what}: authentication required (401) and no credentials for "
                    f"{self.name} were found; log in (podman/docker login writes them) "
                    "or pass --creds or --authfile")
        return f"{what}: the credentials of {creds.username!r} from {creds.source} " \
               "were rejected (401)"

    def _failure(self, r: httpx.Response, what: str, repository: str = "") -> RegistryError:
        """The error for an unwanted answer (its body must have been read)."""
        status = f"{r.status_code} {r.reason_phrase}".strip()
        said = _error_message(r)
        detail = f" ({said})" if said else ""
        if r.status_code in (401, 403):
            creds = self.creds_for(repository) if repository else None
            return RegistryAuthError(self.name, self._refusal(what, r.status_code, creds))
        if r.status_code == 404:
            return RegistryNotFound(self.name, f"{what}: not found{detail}")
        if r.status_code in RETRY_STATUS:
            n = getattr(r, "attempts", 1)
            tries = f" after {n} attempts" if n > 1 else ""
            return RegistryUnavailable(self.name, f"{what}: {status}{detail}{tries}")
        return RegistryError(self.name, f"{what}: unexpected {status}{detail}")

    def request(self, method: str, path: str, repository: str, actions: str = "pull",
                *, headers: dict | None = None, params=None,
                content: Callable[[], object] | None = None, stream: bool = False,
                retry: bool = True, extra_scopes: tuple[str, ...] = ()) -> httpx.Response:
        """`method path` (relative to the API root, or a full URL), with the
        authorization for `repository:actions` (+ `extra_scopes`); a 401 that
        brings a new challenge is answered once."""
        base = self._ping()
        url = path if "://" in path else base + path
        scopes = (auth.scope(repository, actions),) + tuple(extra_scopes)
        for first in (True, False):
            h = dict(headers or {})
            authorization = self._authorization(repository, scopes)
            if authorization:
                h["Authorization"] = authorization
            r = self._send(method, url, h, params=params, content=content,
                           stream=stream, retry=retry)
            if r.status_code == 401 and first:
                challenge = self._parse_challenge(r)
                if challenge is not None and (challenge != self._challenge
                                              or challenge.scheme == "bearer"):
                    with self._lock:
                        self._challenge = challenge
                        self._tokens.pop(scopes, None)
                    if authorization is None or challenge.scheme == "bearer":
                        r.close()
                        continue
            return r
        raise AssertionError("unreachable")

    def check_access(self, repository: str, actions: str) -> None:
        """Fail now rather than after expensive work: reach the registry
        (scheme, TLS, its challenge) and be let into `repository` for
        `actions` (a Bearer token for that scope, or Basic credentials it
        accepts), with a request that changes nothing.  A repository that
        does not exist yet (404) is no failure: a push creates it."""
        what = f"{actions} access to {repository}"
        r = self.request("GET", f"/v2/{repository}/tags/list", repository, actions)
        r.read()
        if r.status_code not in (200, 404):
            raise self._failure(r, what, repository)

    # -- manifests -----------------------------------------------------------------

    def get_manifest(self, repository: str, ref: str) -> tuple[bytes, str, str | None]:
        """(bytes, media type, the registry's Docker-Content-Digest or None)."""
        what = f"manifest {repository}:{ref}" if not ref.startswith("sha256:") \
            else f"manifest {repository}@{ref}"
        r = self.request("GET", f"/v2/{repository}/manifests/{ref}", repository,
                         headers={"Accept": MANIFEST_ACCEPT}, stream=True)
        try:
            if r.status_code != 200:
                r.read()
                raise self._failure(r, what, repository)
            body = self._read_limited(r, MANIFEST_LIMIT, what)
        finally:
            r.close()
        media = r.headers.get("Content-Type", "").split(";")[0].strip()
        return body, media, r.headers.get("Docker-Content-Digest")

    def _read_limited(self, r: httpx.Response, limit: int, what: str) -> bytes:
        out = bytearray()
        for chunk in r.iter_raw(CHUNK):
            out += chunk
            if len(out) > limit:
                raise RegistryError(self.name, f"{what} is larger than {limit} bytes")
        return bytes(out)

    def put_manifest(self, repository: str, ref: str, body: bytes, media_type: str) -> str | None:
        """Store a manifest under a tag or digest; the digest the registry says."""
        what = f"manifest {repository}:{ref}"
        r = self.request("PUT", f"/v2/{repository}/manifests/{ref}", repository,
                         "pull,push", headers={"Content-Type": media_type},
                         content=lambda: body)
        r.read()
        if r.status_code not in (200, 201):
            raise self._failure(r, f"upload of {what}", repository)
        return r.headers.get("Docker-Content-Digest")

    # -- blobs ---------------------------------------------------------------------

    def blob_size(self, repository: str, digest: Digest) -> int | None:
        """The blob's size when the repository has it, else None."""
        r = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", repository)
        r.close()
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise self._failure(r, f"blob {digest} of {repository}", repository)
        length = r.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else -1

    def get_blob(self, repository: str, digest: Digest, limit: int) -> bytes:
        """A small blob (a config) read whole; the caller verifies its digest."""
        what = f"blob {digest} of {repository}"
        r = self.request("GET", f"/v2/{repository}/blobs/{digest}", repository, stream=True)
        try:
            if r.status_code != 200:
                r.read()
                raise self._failure(r, what, repository)
            return self._read_limited(r, limit, what)
        finally:
            r.close()

    def get_blob_range(self, repository: str, digest: Digest, start: int, end: int) -> bytes:
        """Bytes [start, end) of a blob, by one HTTP Range request (a seekable
        layer's footer, TOC or chunk); the caller verifies what they hold.
        Only a 206 whose Content-Range is the one asked and whose body has
        exactly those bytes is accepted: a registry that ignores Range and
        answers 200 with the whole blob is an error (RegistryError), never a
        silent full read.  A connection that breaks mid-body is retried."""
        if not 0 <= start < end:
            raise ValueError(f"empty or negative range [{start}, {end})")
        what = f"bytes [{start}, {end}) of blob {digest} of {repository}"
        for attempt in range(self.options.retries + 1):
            r = self.request("GET", f"/v2/{repository}/blobs/{digest}", repository,
                             headers={"Range": f"bytes={start}-{end - 1}"}, stream=True)
            try:
                if r.status_code == 200:
                    raise RegistryError(self.name, f"{what}: the registry ignored the Range "
                                                   "request and sent the whole blob (200)")
                if r.status_code != 206:
                    r.read()
                    raise self._failure(r, what, repository)
                said = r.headers.get("Content-Range", "")
                if said.removeprefix("bytes ").split("/")[0] != f"{start}-{end - 1}":
                    raise RegistryError(self.name, f"{what}: the registry sent another range "
                                                   f"({said or 'no Content-Range'})")
                try:
                    body = self._read_limited(r, end - start, what)
                except (httpx.TransportError, httpx.StreamError) as e:
                    if attempt == self.options.retries:
                        raise RegistryUnavailable(self.name, f"{what}: {_describe(e)}") \
                            from None
                    self._sleep(self._delay(attempt))
                    continue
            finally:
                r.close()
            if len(body) != end - start:
                raise RegistryError(self.name, f"{what}: got {len(body)} bytes")
            return body
        raise AssertionError("unreachable")

    def open_blob(self, repository: str, digest: Digest, size: int | None,
                  on_bytes: Callable[[int], None] | None = None) -> "BlobStream":
        return BlobStream(self, repository, digest, size, on_bytes)

    # -- uploads -------------------------------------------------------------------

    def mount_blob(self, repository: str, digest: Digest, source: str) -> bool:
        """Ask the registry to link `digest` from repository `source`; True
        when it did (201), False when it offered an upload instead."""
        r = self.request("POST", f"/v2/{repository}/blobs/uploads/", repository, "pull,push",
                         params={"mount": str(digest), "from": source},
                         extra_scopes=(auth.scope(source, "pull"),))
        r.read()
        if r.status_code == 201:
            return True
        if r.status_code == 202:
            self._cancel(r, repository)
            return False
        if r.status_code in (401, 403, 404):
            return False              # no right to read `source`: upload instead
        raise self._failure(r, f"mount of {digest} into {repository}", repository)

    def _cancel(self, r: httpx.Response, repository: str) -> None:
        location = r.headers.get("Location")
        if location:
            try:
                self.request("DELETE", str(r.url.join(location)), repository,
                             "pull,push", retry=False).close()
            except RegistryError:
                pass

    def upload_blob(self, repository: str, digest: Digest, size: int,
                    body: Callable[[], Iterator[bytes]],
                    on_bytes: Callable[[int], None] | None = None) -> None:
        """Upload the blob `body()` yields (`size` bytes, `digest`): one PUT,
        or PATCHes of `options.chunk_size` then a PUT.  Transport errors and
        5xx restart the whole upload, `options.retries` times."""
        what = f"upload of {digest} to {repository}"
        attempts = self.options.retries + 1
        for k in range(attempts):
            try:
                self._upload_once(repository, digest, size, body, on_bytes, what)
                return
            except (RegistryUnavailable, httpx.TransportError) as e:
                if k + 1 >= attempts:
                    if isinstance(e, RegistryUnavailable):
                        raise
                    raise RegistryUnavailable(self.name, f"{what}: {_describe(e)} "
                                                         f"(after {attempts} attempts)") from None
                self._sleep(self._delay(k))

    def _upload_once(self, repository: str, digest: Digest, size: int,
                     body: Callable[[], Iterator[bytes]],
                     on_bytes: Callable[[int], None] | None, what: str) -> None:
        r = self.request("POST", f"/v2/{repository}/blobs/uploads/", repository, "pull,push")
        r.read()
        if r.status_code != 202 or not r.headers.get("Location"):
            raise self._failure(r, what, repository)
        location = r.url.join(r.headers["Location"])
        sent = 0

        def counted(chunks: Iterable[bytes]) -> Iterator[bytes]:
            nonlocal sent
            for chunk in chunks:
                if self.abort.is_set():
                    raise Aborted()
                sent += len(chunk)
                if on_bytes is not None:
                    on_bytes(sent)
                yield chunk

        chunk_size = self.options.chunk_size
        if chunk_size > 0:
            offset = 0
            for piece in _pieces(body(), chunk_size):
                end = offset + len(piece) - 1
                r = self.request("PATCH", str(location), repository, "pull,push",
                                 headers={"Content-Type": "application/octet-stream",
                                          "Content-Range": f"{offset}-{end}",
                                          "Content-Length": str(len(piece))},
                                 content=lambda piece=piece: counted([piece]), retry=False)
                r.read()
                if r.status_code != 202:
                    raise self._failure(r, what, repository)
                location = r.url.join(r.headers.get("Location", str(location)))
                offset = end + 1
            put_body = None
            headers = {"Content-Length": "0"}
        else:
            put_body = lambda: counted(body())      # noqa: E731
            headers = {"Content-Type": "application/octet-stream",
                       "Content-Length": str(size)}
        url = location.copy_merge_params({"digest": str(digest)})
        r = self.request("PUT", str(url), repository, "pull,push", headers=headers,
                         content=put_body, retry=False)
        r.read()
        if r.status_code not in (201, 204):
            raise self._failure(r, what, repository)
        said = r.headers.get("Docker-Content-Digest")
        if said and said != str(digest):
            raise RegistryError(self.name, f"{what}: the registry stored it as {said}")


def _pieces(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


class BlobStream:
    """A blob being downloaded, read like a file: `read(n)` gives the next
    bytes (fewer than n at times; b"" at the end).  A broken connection is
    resumed with `Range: bytes=POS-` (`options.retries` times); more or fewer
    bytes than `size` is BadArchive.  Bytes received, resumes included, are
    reported to `on_bytes(count)`."""

    def __init__(self, client: RegistryClient, repository: str, digest: Digest,
                 size: int | None, on_bytes: Callable[[int], None] | None):
        self.client = client
        self.repository = repository
        self.digest = digest
        self.size = size
        self.on_bytes = on_bytes
        self.where = f"{client.name}/{repository}@{digest}"
        self.pos = 0
        self.received = 0
        self.resumes_left = client.options.retries
        self._response: httpx.Response | None = None
        self._chunks: Iterator[bytes] | None = None
        self._buf = b""
        self._eof = False

    def __enter__(self) -> "BlobStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def _connect(self) -> None:
        self.close()
        headers = {"Range": f"bytes={self.pos}-"} if self.pos else {}
        r = self.client.request("GET", f"/v2/{self.repository}/blobs/{self.digest}",
                                self.repository, headers=headers, stream=True)
        skip = 0
        if r.status_code == 206 and self.pos:
            start = r.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
            if start != str(self.pos):
                r.close()
                raise RegistryError(self.client.name, f"blob {self.digest}: asked for bytes "
                                                      f"from {self.pos}, got {start or '?'}")
        elif r.status_code == 200:
            skip = self.pos                   # no Range support: read past them
        else:
            r.read()
            r.close()
            raise self.client._failure(r, f"blob {self.digest} of {self.repository}",
                                       self.repository)
        self._response = r
        self._chunks = r.iter_raw(CHUNK)
        while skip:
            chunk = next(self._chunks, b"")
            if not chunk:
                raise BadArchive(self.where, "ended before the resumed position")
            self._count(len(chunk))
            if len(chunk) > skip:
                self._buf = chunk[skip:]
                skip = 0
            else:
                skip -= len(chunk)

    def _count(self, n: int) -> None:
        self.received += n
        if self.on_bytes is not None:
            self.on_bytes(n)

    def _next_chunk(self) -> bytes:
        while True:
            if self.client.abort.is_set():
                raise Aborted()
            try:
                if self._chunks is None:
                    self._connect()
                    if self._buf:
                        chunk, self._buf = self._buf, b""
                        return chunk
                chunk = next(self._chunks, b"")
                if chunk:
                    self._count(len(chunk))
                return chunk
            except (httpx.TransportError, httpx.StreamError) as e:
                if self.resumes_left <= 0:
                    raise RegistryUnavailable(self.client.name,
                                              f"blob {self.digest}: {_describe(e)} after "
                                              f"{self.pos} bytes") from None
                self.resumes_left -= 1
                self._chunks = None
                self.client._sleep(self.client._delay(0))

    def read(self, n: int = -1) -> bytes:
        if self._eof:
            return b""
        if not self._buf:
            self._buf = self._next_chunk()
            if not self._buf:
                self._eof = True
                if self.size is not None and self.pos != self.size:
                    raise BadArchive(self.where, f"ended after {self.pos} of the "
                                                 f"{self.size} bytes its descriptor declares")
                return b""
        if n < 0 or n >= len(self._buf):
            data, self._buf = self._buf, b""
        else:
            data, self._buf = self._buf[:n], self._buf[n:]
        self.pos += len(data)
        if self.size is not None and self.pos > self.size:
            raise BadArchive(self.where, f"longer than the {self.size} bytes its "
                                         "descriptor declares")
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)
