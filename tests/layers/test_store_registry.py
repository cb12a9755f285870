"""Unit tests of layers/registry/: references, challenges, credentials,
registries.conf, platform choice, parked layers, the blob-info cache,
deterministic gzip, bounded parallel runs, and the HTTP client against a
small registry double of the test's own (stdlib http.server on 127.0.0.1):
resumed blob streams, size limits, retries, 401 messages."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from layers.digest import Digest
from layers.errors import BadArchive, BadReference, ConfigError
from layers.layout import StorePaths
from layers.parkedstore import GRACE, MAX_AGE, ParkedStore
from layers.records import Layer, replace
from layers.registry import auth, regconf
from layers.registry.blobinfo import BlobInfoCache
from layers.registry.client import ClientOptions, RegistryClient
from layers.registry.credentials import Credentials, find_credentials, parse_creds
from layers.registry.errors import Aborted, RegistryAuthError, RegistryError, RegistryUnavailable
from layers.registry.parallel import run_bounded
from layers.registry.reference import Reference, parse_reference
from layers.registry.remote import Platform, choose_platform
from layers.registry.upload import gzip_file

H = "a" * 64
D = f"sha256:{H}"


# -- references ------------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("alpine", ("docker.io", "library/alpine", "latest", None)),
    ("library/alpine:3.19", ("docker.io", "library/alpine", "3.19", None)),
    ("index.docker.io/user/app", ("docker.io", "user/app", "latest", None)),
    ("quay.io/org/app:v1", ("quay.io", "org/app", "v1", None)),
    ("localhost/app", ("localhost", "app", "latest", None)),
    ("127.0.0.1:5000/a/b/c:1", ("127.0.0.1:5000", "a/b/c", "1", None)),
    (f"reg.example:443/app@{D}", ("reg.example:443", "app", None, D)),
    (f"reg.example/app:1@{D}", ("reg.example", "app", "1", D)),
])
def test_references_are_normalized_as_docker_does(text, want):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag,
            str(ref.digest) if ref.digest else None) == want


@pytest.mark.parametrize("text", ["", "Upper/app", "app@sha256:abc", "a/../b", "app:bad tag",
                                  "reg.example/app@md5:" + H, "/app", "app:"])
def test_malformed_references_are_refused(text):
    with pytest.raises(BadReference):
        parse_reference(text)


def test_reference_names_and_api_host():
    ref = parse_reference("alpine:3")
    assert (ref.name, ref.image_name, ref.api_host, ref.manifest_ref) == (
        "docker.io/library/alpine", "docker.io/library/alpine:3", "registry-1.docker.io", "3")
    assert str(parse_reference(f"x.io/a@{D}")) == f"x.io/a@{D}"
    assert parse_reference(f"x.io/a@{D}").image_name is None
    assert parse_reference("x.io/a:1").moved("y.io:5/b/a") == Reference("y.io:5", "b/a", "1")


# -- challenges and tokens ---------------------------------------------------------------

def test_challenges_parse_with_quotes_commas_and_several_schemes():
    header = ('Bearer realm="https://auth.example/token",service="reg.example",'
              'scope="repository:a/b:pull,push", Basic realm="x \\"y\\""')
    got = auth.parse_challenges(header)
    assert [c.scheme for c in got] == ["bearer", "basic"]
    assert got[0].params == {"realm": "https://auth.example/token", "service": "reg.example",
                             "scope": "repository:a/b:pull,push"}
    assert got[1].realm == 'x "y"'
    assert auth.parse_challenges("Basic") == [auth.Challenge("basic", {})]
    assert auth.token_params(got[0], ["repository:a:pull", "repository:b:pull"]) == [
        ("service", "reg.example"), ("scope", "repository:a:pull"),
        ("scope", "repository:b:pull")]


def test_token_answers():
    assert auth.parse_token(b'{"token":"t","expires_in":300}') == ("t", 300)
    assert auth.parse_token(b'{"access_token":"u"}') == ("u", auth.DEFAULT_TOKEN_LIFETIME)
    with pytest.raises(auth.ChallengeError):
        auth.parse_token(b'{"nothing":1}')
    assert auth.basic_header("u", "p:w") == "Basic " + base64.b64encode(b"u:p:w").decode()


# -- credentials ---------------------------------------------------------------------------

def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def cred_env(tmp_path):
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "run"), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "DOCKER_CONFIG": str(tmp_path / "docker"), "PATH": os.environ.get("PATH", "")}
    for d in ("run/containers", "cfg/containers", "docker"):
        (tmp_path / d).mkdir(parents=True)
    return env


def test_credentials_come_from_podman_first_then_docker(cred_env, tmp_path):
    (tmp_path / "docker" / "config.json").write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": _b64("hubuser:hubpw")},
        "reg.example": {"auth": _b64("dockeruser:dpw")}}}))
    assert find_credentials("docker.io", "library/alpine", cred_env).username == "hubuser"
    assert find_credentials("reg.example", "a", cred_env).username == "dockeruser"
    (tmp_path / "run" / "containers" / "auth.json").write_text(json.dumps({"auths": {
        "reg.example": {"auth": _b64("podman:ppw")},
        "reg.example/team": {"username": "teamuser", "password": "tpw"}}}))
    got = find_credentials("reg.example", "team/app", cred_env)
    assert (got.username, got.password) == ("teamuser", "tpw")
    assert find_credentials("reg.example", "other/app", cred_env).username == "podman"
    assert find_credentials("elsewhere.example", "a", cred_env) is None
    assert "ppw" not in repr(find_credentials("reg.example", "x", cred_env))


def test_credentials_errors_name_the_file_not_the_secret(cred_env, tmp_path):
    path = tmp_path / "run" / "containers" / "auth.json"
    path.write_text(json.dumps({"auths": {"reg.example": {"auth": "!!not base64 secret!!"}}}))
    with pytest.raises(ConfigError) as e:
        find_credentials("reg.example", "a", cred_env)
    assert str(e.value) == (f'configuration {path}: an "auth" entry is not base64 of '
                            "USER:PASSWORD")
    with pytest.raises(ConfigError, match="no such file"):
        find_credentials("reg.example", "a", cred_env, authfile=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="USER:PASSWORD"):
        parse_creds("justuser")
    assert parse_creds("u:p:q") == Credentials("u", "p:q", "--creds")


def test_credential_helper_is_asked(cred_env, tmp_path):
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\nread server\n[ "$1" = get ] || exit 1\n'
                      'echo "{\\"Username\\":\\"from-$server\\",\\"Secret\\":\\"s\\"}"\n')
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    cred_env["PATH"] = f"{helper.parent}:{cred_env['PATH']}"
    (tmp_path / "docker" / "config.json").write_text(json.dumps(
        {"credHelpers": {"reg.example": "fake"}}))
    assert find_credentials("reg.example", "a", cred_env).username == "from-reg.example"


# -- registries.conf --------------------------------------------------------------------------

CONF = """
unqualified-search-registries = ["reg.example"]
[[registry]]
prefix = "reg.example/team"
location = "internal:5000/team"
insecure = true
[[registry.mirror]]
location = "mirror:5000/team"
[[registry]]
location = "reg.example"
[[registry]]
prefix = "*.blocked.example"
blocked = true
location = "x.blocked.example"
[registries.insecure]
registries = ["plain:5000"]
"""


def test_registries_conf_mirrors_prefixes_insecure_blocked(tmp_path):
    path = tmp_path / "registries.conf"
    path.write_text(CONF)
    conf = regconf.load(str(path))
    assert conf.default_registry == "reg.example"
    ref = parse_reference("app:1", conf.default_registry)
    assert ref.name == "reg.example/app"
    eps = conf.pull_endpoints(parse_reference("reg.example/team/app:1"))
    assert [(str(e.reference), e.insecure, e.mirror) for e in eps] == [
        ("mirror:5000/team/app:1", False, True), ("internal:5000/team/app:1", True, False)]
    assert str(conf.push_endpoint(parse_reference("reg.example/team/app:1")).reference) \
        == "internal:5000/team/app:1"
    assert str(conf.pull_endpoints(parse_reference("reg.example/teams:1"))[0].reference) \
        == "reg.example/teams:1"               # a prefix matches whole components
    assert conf.pull_endpoints(parse_reference("plain:5000/a"))[0].insecure
    with pytest.raises(ConfigError, match="registry a.blocked.example is blocked"):
        conf.pull_endpoints(parse_reference("a.blocked.example/x"))


def test_registries_conf_errors(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text('[[registry]]\nlocation = "https://x"\n')
    with pytest.raises(ConfigError, match="must be host"):
        regconf.load(str(bad))
    bad.write_text("not toml [")
    with pytest.raises(ConfigError, match="not TOML"):
        regconf.load(str(bad))


# -- platform choice ----------------------------------------------------------------------------

def _index(*platforms: str) -> dict:
    out = []
    for i, p in enumerate(platforms):
        parts = p.split("/")
        plat = {"os": parts[0], "architecture": parts[1]}
        if len(parts) > 2:
            plat["variant"] = parts[2]
        out.append({"digest": f"sha256:{i:064x}", "platform": plat})
    return {"manifests": out}


def test_platform_choice():
    idx = _index("linux/amd64", "linux/arm/v6", "linux/arm/v7", "linux/arm64", "windows/amd64")
    pick = lambda p: choose_platform(idx, Platform.parse(p), "x")["digest"][-1]  # noqa: E731
    assert pick("linux/amd64") == "0"
    assert pick("linux/arm") == "2"            # v7 is arm's default variant
    assert pick("linux/arm/v6") == "1"
    assert pick("linux/arm64/v8") == "3"       # no variant listed means the default one
    assert pick("windows/amd64") == "4"
    with pytest.raises(BadArchive) as e:
        choose_platform(idx, Platform.parse("linux/s390x"), "reg/app:1")
    assert str(e.value) == ("cannot read reg/app:1: no image for linux/s390x in the index; it "
                            "has linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64, "
                            "windows/amd64 (choose one with --platform)")
    with pytest.raises(BadReference):
        Platform.parse("linux")


# -- parked layers --------------------------------------------------------------------------------

def _layer(n: int, parent=None) -> Layer:
    d = Digest(f"{n:064x}")
    return Layer(id=d, diff_id=d, parent=parent, compressed_digest=None, created=1.0,
                 tar_size=10, size=4096)


def test_parking_find_validates_and_expire_cleans(tmp_path):
    paths = StorePaths(str(tmp_path / "store"), str(tmp_path / "run"))
    os.makedirs(paths.staging)
    parking = ParkedStore(paths)
    parked = paths.parked
    staged = tmp_path / "staging" / "x"
    (staged / "diff").mkdir(parents=True)
    (staged / "diff" / "f").write_text("x")
    layer = _layer(1)
    parking.park(layer, str(staged), "lease")
    assert parking.find(layer.id, layer.diff_id, None) == layer
    assert parking.find(layer.id, Digest("f" * 64), None) is None   # not that one
    assert parking.find(_layer(2).id, _layer(2).diff_id, None) is None
    # a record whose dir went: dropped
    os.rename(parking.content_dir(layer.id), tmp_path / "gone")
    assert parking.find(layer.id, layer.diff_id, None) is None
    assert os.listdir(parked) == []
    # a dir without a record is kept while a park may be running, then removed
    os.makedirs(os.path.join(parking.content_dir(layer.id), "diff"))
    assert parking.expire() == []
    assert parking.expire(now=time.time() + 2 * GRACE) == [
        f"removed parked layer {layer.id.short}"]
    # old parked layers go
    (staged / "diff").mkdir(parents=True)
    parking.park(layer, str(staged), "lease")
    assert parking.expire() == []
    assert parking.expire(now=time.time() + MAX_AGE + 1) == [
        f"removed parked layer {layer.id.short}"]
    assert os.listdir(parked) == []


def test_a_park_whose_pull_died_is_not_used_and_goes(tmp_path):
    """A park is recorded incomplete with the pull's lease before its dir
    moves in: when the pull died there, the next pull neither uses it nor
    waits for it, and the store's repair removes it."""
    paths = StorePaths(str(tmp_path / "store"), str(tmp_path / "run"))
    os.makedirs(paths.staging)
    parking = ParkedStore(paths)
    staged = tmp_path / "staging" / "x"
    (staged / "diff").mkdir(parents=True)
    for finder in (lambda x: parking.find(x.id, x.diff_id, None), lambda x: parking.expire()):
        layer = _layer(1)
        parking.park(layer, str(staged), "lease")
        parking.save(layer.id.hex, replace(layer, incomplete=True, lease="dead-lease"))
        assert [p.id for p in parking.all(include_incomplete=True)] == [layer.id]
        assert finder(layer) in (None, [f"removed parked layer {layer.id.short}"])
        assert os.listdir(paths.parked) == []
        (staged / "diff").mkdir(parents=True)


# -- blob-info cache ------------------------------------------------------------------------------

def test_blobinfo_records_merge_and_survive_a_broken_file(tmp_path):
    path = str(tmp_path / "registry" / "blobinfo.json")
    one, two = BlobInfoCache(path), BlobInfoCache(path)
    diff = Digest("d" * 64)
    one.record(Digest("1" * 64), 10, "gz", diff, "reg/a")
    two.record(Digest("1" * 64), 10, "gz", diff, "reg/b")
    two.record(Digest("2" * 64), 20, "zst", diff, "reg/b")
    one.save()
    two.save()
    three = BlobInfoCache(path)
    got = {str(i.digest): i for i in three.by_diff_id(diff)}
    assert set(got) == {f"sha256:{'1' * 64}", f"sha256:{'2' * 64}"}
    assert set(got[f"sha256:{'1' * 64}"].locations) == {"reg/a", "reg/b"}
    with open(path, "w") as f:
        f.write("{broken")
    assert BlobInfoCache(path).by_diff_id(diff) == []


def test_blobinfo_keeps_a_blobs_toc_digest_once_known(tmp_path):
    path = str(tmp_path / "registry" / "blobinfo.json")
    diff, toc, blob = Digest("d" * 64), Digest("7" * 64), Digest("1" * 64)
    pushed = BlobInfoCache(path)
    pushed.record(blob, 10, "gz", diff, "reg/a", toc)
    pushed.save()
    pulled = BlobInfoCache(path)             # a pull of the same blob knows no TOC
    pulled.record(blob, 10, "gz", diff, "reg/b")
    pulled.save()
    unaware = BlobInfoCache(path)            # ... nor does a command that loaded before
    saved = BlobInfoCache(path)
    unaware._entries.clear()
    unaware.record(blob, 10, "gz", diff, "reg/c")
    unaware.save()
    for cache in (pulled, BlobInfoCache(path)):
        [info] = cache.by_diff_id(diff)
        assert info.toc_digest == toc
    assert saved.get(blob).toc_digest == toc


# -- gzip, parallel runs -----------------------------------------------------------------------------

def test_gzip_of_the_same_tar_is_the_same_blob(tmp_path):
    data = os.urandom(300_000) + b"\0" * 300_000
    chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    d1, s1 = gzip_file(iter(chunks), str(tmp_path / "1.gz"), 6)
    d2, s2 = gzip_file(iter([data]), str(tmp_path / "2.gz"), 6)
    assert (d1, s1) == (d2, s2)
    raw = (tmp_path / "1.gz").read_bytes()
    assert Digest(hashlib.sha256(raw).hexdigest()) == d1 and len(raw) == s1
    assert gzip.decompress(raw) == data


def test_run_bounded_keeps_order_bounds_and_stops_on_failure():
    running, most = 0, 0
    lock = threading.Lock()

    def work(i):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return i * i

    assert run_bounded(3, [lambda i=i: work(i) for i in range(10)]) == [i * i for i in range(10)]
    assert most == 3
    abort = threading.Event()
    started = []

    def slow(i):
        started.append(i)
        if i == 1:
            raise ValueError("boom")
        abort.wait(5)
        if abort.is_set():
            raise Aborted()

    t0 = time.monotonic()
    with pytest.raises(ValueError, match="boom"):
        run_bounded(2, [lambda i=i: slow(i) for i in range(8)], abort)
    assert abort.is_set() and time.monotonic() - t0 < 2 and len(started) < 8


# -- the client against a registry double -------------------------------------------------------------

class Double:
    """A registry double: one blob, served in full, cut halfway once, or
    longer than it should be; Basic auth when `users` is set; `fail` 5xx
    answers first."""

    def __init__(self):
        self.blob = os.urandom(200_000)
        self.digest = Digest(hashlib.sha256(self.blob).hexdigest())
        self.cut_once = False
        self.extra = b""
        self.users: dict[str, str] | None = None
        self.fail: list[int] = []
        self.seen: list[tuple[str, str, str]] = []     # method, path, Range
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                double.handle(self)

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reply(self, h, status, body=b"", headers=()):
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def handle(self, h):
        self.seen.append((h.command, h.path, h.headers.get("Range", "")))
        if self.fail:
            return self.reply(h, self.fail.pop(0), b"{}", [("Retry-After", "0")])
        if self.users is not None:
            want = {"Basic " + _b64(f"{u}:{p}") for u, p in self.users.items()}
            if h.headers.get("Authorization") not in want:
                return self.reply(h, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                                  [("WWW-Authenticate", 'Basic realm="double"')])
        if h.path == "/v2/":
            return self.reply(h, 200, b"{}")
        if h.path != f"/v2/repo/blobs/{self.digest}":
            return self.reply(h, 404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"nope"}]}')
        start = 0
        rng = h.headers.get("Range", "")
        if rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
        body = (self.blob + self.extra)[start:]
        status = 206 if start else 200
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(self.blob) - 1}/{len(self.blob)}")
        h.end_headers()
        if self.cut_once:
            self.cut_once = False
            h.wfile.write(body[:len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        h.wfile.write(body)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def double():
    d = Double()
    yield d
    d.close()


def _client(double, creds=None, **kw) -> RegistryClient:
    opts = ClientOptions(tls_verify=False, retries=kw.pop("retries", 2), backoff=0.01, timeout=5)
    return RegistryClient(double.host, opts, lambda repo: creds, insecure=True)


def _read_all(stream) -> bytes:
    out = bytearray()
    while chunk := stream.read(7000):
        out += chunk
    return bytes(out)


def test_blob_stream_resumes_with_range_after_a_cut(double):
    double.cut_once = True
    counted = []
    with _client(double) as c, c.open_blob("repo", double.digest, len(double.blob),
                                           counted.append) as s:
        assert _read_all(s) == double.blob
    gets = [x for x in double.seen if x[1].startswith("/v2/repo/blobs/")]
    assert len(gets) == 2 and gets[0][2] == "" and gets[1][2].startswith("bytes=")
    assert sum(counted) == len(double.blob)


def test_blob_longer_or_shorter_than_its_descriptor_is_refused(double):
    double.extra = b"more"
    with _client(double) as c, c.open_blob("repo", double.digest, len(double.blob)) as s:
        with pytest.raises(BadArchive, match="longer than the 200000 bytes its descriptor"):
            _read_all(s)
    double.extra = b""
    with _client(double) as c, c.open_blob("repo", double.digest, len(double.blob) + 1) as s:
        with pytest.raises(BadArchive, match="ended after 200000 of the 200001 bytes"):
            _read_all(s)


def test_retries_then_a_clear_failure(double):
    double.fail = [503, 429]
    with _client(double) as c:
        assert c.blob_size("repo", double.digest) == len(double.blob)
    double.fail = [500] * 10
    with _client(double, retries=1) as c:
        with pytest.raises(RegistryUnavailable) as e:
            c.blob_size("repo", double.digest)
    assert str(e.value) == (f"registry {double.host}: GET /v2/: 500 Internal Server Error "
                            "after 2 attempts")


def test_basic_auth_and_its_401_messages(double):
    double.users = {"u": "pw"}
    with _client(double) as c:
        with pytest.raises(RegistryAuthError) as e:
            c.get_blob("repo", double.digest, 1 << 20)
    assert str(e.value) == (
        f"registry {double.host}: blob {double.digest} of repo: authentication required "
        f"(401) and no credentials for {double.host} were found; log in (podman/docker "
        "login writes them) or pass --creds or --authfile")
    with _client(double, Credentials("u", "wrong", "auth.json")) as c:
        with pytest.raises(RegistryAuthError) as e:
            c.get_blob("repo", double.digest, 1 << 20)
    assert "the credentials of 'u' from auth.json were rejected (401)" in str(e.value)
    assert "wrong" not in str(e.value)
    with _client(double, Credentials("u", "pw", "auth.json")) as c:
        assert c.get_blob("repo", double.digest, 1 << 20) == double.blob
        assert c.blob_size("repo", Digest("0" * 64)) is None


def test_abort_stops_a_stream(double):
    with _client(double) as c, c.open_blob("repo", double.digest, len(double.blob)) as s:
        s.read(10)
        c.abort.set()
        with pytest.raises(Aborted):
            _read_all(s)


def test_opening_the_store_removes_a_park_whose_pull_died(store_env, tmp_path):
    store = store_env.open()
    staged = tmp_path / "x"
    (staged / "diff").mkdir(parents=True)
    layer = _layer(1)
    store.parked.park(layer, str(staged), "lease")
    store.parked.save(layer.id.hex, replace(layer, incomplete=True, lease="dead-lease"))
    again = store_env.open()
    assert f"removed interrupted parked layer {layer.id.short}" in again.repaired
    assert os.listdir(store.paths.parked) == []


def test_a_blob_range_other_than_the_one_asked_is_refused(double):
    # the double answers any Range with everything from its start on
    with _client(double) as c:
        with pytest.raises(RegistryError) as e:
            c.get_blob_range("repo", double.digest, 10, 20)
        assert str(e.value) == (f"registry {double.host}: bytes [10, 20) of blob "
                                f"{double.digest} of repo: the registry sent another range "
                                f"(bytes 10-199999/200000)")
        assert c.get_blob_range("repo", double.digest, 100, 200000) == double.blob[100:]
        with pytest.raises(ValueError):
            c.get_blob_range("repo", double.digest, 20, 20)


def test_connect_learns_the_scheme_ahead_and_leaves_failures_to_the_request(double):
    """The fetcher connects while it reads a layer's index, so that its first
    range does not wait for the HTTPS probe and `GET /v2/`."""
    with _client(double) as c:
        c.connect()
        pings = [x for x in double.seen if x[1] == "/v2/"]
        assert len(pings) == 1
        assert c.blob_size("repo", double.digest) == len(double.blob)
        assert [x for x in double.seen if x[1] == "/v2/"] == pings
    double.fail = [500] * 10
    with _client(double, retries=0) as c:
        c.connect()                               # no exception here...
        with pytest.raises(RegistryUnavailable):  # ...the request says it
            c.blob_size("repo", double.digest)
