"""podman 4.3 taking an image's layers from the store's additional layer
store (`layers als`, layers/als.py) instead of pulling their blobs, with
fsd as its mount_program, rootful and rootless.

Per mode, one sandbox: a Strata store and a podman store, both run through
the same agent (root, or the test user), and Debian's docker-registry on
loopback behind a counting proxy (tests/support/registryd.py).  The image is
the busybox rootfs of the podman tests, imported and pushed by the store,
then pulled back into it and served; podman pulls it from the proxy, which
sees every blob podman asks for.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers"))

from storetools import LAYERS_EXE  # noqa: E402

from support import mounts, rootless  # noqa: E402
from support import podman as podman_support  # noqa: E402
from support.podman import RUN_OPTS, PodmanStore  # noqa: E402
from support.registryd import Proxy, Registry  # noqa: E402
from support.rootless import Sandbox  # noqa: E402

INSECURE = "--tls-verify=false"


@pytest.fixture(scope="module")
def podman_ready():
    reason = rootless.why_no_rootless() or podman_support.ensure_podman()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, podman_ready):
    reg = Registry(tmp_path_factory.mktemp("registry")).start()
    proxy = Proxy(reg.host).start()
    yield proxy
    proxy.stop()
    reg.stop()


class Served:
    """A Strata store and a podman store reading its additional layer store,
    in one sandbox, run by one agent."""

    def __init__(self, box: Sandbox, rootless: bool):
        self.box = box
        self.strata_root = box.dir("strata/graph", owned=rootless, mode=0o700)
        self.strata_run = box.dir("strata/run", owned=rootless, mode=0o700)
        conf = box.file("strata/storage.conf", "", owned=False)
        regconf = box.file("strata/registries.conf", "", owned=False)
        self.strata_env = {"STRATA_STORAGE_CONF": str(conf),
                           "STRATA_REGISTRIES_CONF": str(regconf)}
        self.als = self.strata_root / "als"
        self.podman = PodmanStore(box, rootless=rootless, layer_stores=(str(self.als),))

    def layers(self, *args: str) -> str:
        argv = [LAYERS_EXE, "--root", self.strata_root, "--runroot", self.strata_run,
                "--driver", "fuse", *args]
        r = self.podman.agent.run(argv, timeout=120, env=self.strata_env)
        assert r.returncode == 0, f"layers {' '.join(args)} failed:\n{r.describe()}"
        return r.stdout

    def close(self) -> list[str]:
        return self.podman.close()


@pytest.fixture(scope="module", params=["rootful", "rootless"])
def served(request, podman_ready):
    user = None
    if request.param == "rootless":
        user = rootless.ensure_user()
        reason = rootless.why_user_cannot_run_fsd(user)
        if reason:
            pytest.skip(reason)
    box = Sandbox(user, prefix=f"strata-als-{request.param}-")
    try:
        s = Served(box, rootless=user is not None)
    except Exception:
        box.cleanup()
        raise
    problems = []
    try:
        yield s
    finally:
        problems += s.close()
        problems += box.cleanup()
    assert not problems, f"{request.param} clean-up: " + "; ".join(problems)


@pytest.fixture(autouse=True)
def podman_logs(request, fsd_log):
    yield
    if "served" in request.fixturenames:
        request.getfixturevalue("served").podman.collect_logs(fsd_log)


def publish(served: Served, registry: Proxy, name: str) -> str:
    """The busybox image pushed to the registry by the store, then pulled back
    (so its layer records carry their blob digests) and served: its reference."""
    tar = podman_support.busybox_rootfs(served.box)
    ref = f"{registry.host}/als/{name}:1"
    served.layers("import", "-q", str(tar), "--name", f"localhost/{name}:1")
    served.layers("push", f"localhost/{name}:1", ref, INSECURE)
    served.layers("rmi", f"localhost/{name}:1")
    served.layers("pull", "-q", ref, INSECURE)
    served.layers("als", "add", ref)
    return ref


def layer_blobs(served: Served, ref: str) -> list[str]:
    image = json.loads(served.layers("inspect", ref))
    return [json.loads(served.layers("inspect", cid))["compressed_digest"]
            for cid in image["layers"]]


def test_podman_runs_an_image_whose_layer_it_did_not_pull(served, registry):
    ref = publish(served, registry, "busybox")
    blobs = layer_blobs(served, ref)
    assert sorted(p.name for p in served.als.iterdir()) == sorted(blobs)

    registry.reset()
    served.podman("pull", INSECURE, ref)
    fetched = registry.blob_gets()
    assert not set(fetched) & set(blobs), f"podman pulled a served layer: {fetched}"
    assert len(fetched) == 1, f"podman fetched more than the config: {fetched}"

    out = served.podman("run", *RUN_OPTS, "--rm", ref, "sh", "-c",
                        "cat /lower/keep.txt && ls /lower && "
                        "awk '$2 == \"/\" {print \"root:\" $3}' /proc/mounts").stdout.split()
    assert out[0] == "keep"
    assert out[-1] == f"root:{mounts.FSD_FSTYPE}", out
    assert "delete-dir" in out[1:-1], out
    assert registry.blob_gets() == fetched, "podman run fetched blobs"
