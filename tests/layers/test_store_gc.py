"""df and prune: sizes are allocated bytes that agree with du, sharing is
counted once, prune removes exactly what nothing uses — also while another
command is at work — and says what it freed."""

import os
import subprocess
from pathlib import Path

import pytest

from layers import fsutil

from storetools import directory, file, hardlink, oci_layout, tar_bytes

BASE = tar_bytes([directory("usr/lib")] +
                 [file(f"usr/lib/f{i}", os.urandom(30_000 + i)) for i in range(40)] +
                 [hardlink("usr/lib/link", "usr/lib/f0"), file("etc/.wh.x")])
APP1 = tar_bytes([file("app/one", os.urandom(200_000))])
APP2 = tar_bytes([file("app/two", os.urandom(100_000))])


def du(*paths) -> int:
    out = subprocess.run(["du", "-sxc", "--block-size=1"] + [str(p) for p in paths],
                         capture_output=True, text=True, check=True).stdout
    return int(out.splitlines()[-1].split()[0])


def close(a: int, b: int) -> bool:
    return abs(a - b) <= 0.01 * max(a, b)


@pytest.fixture
def store(store_env, tmp_path):
    s = store_env.open()
    s.import_path(str(oci_layout(tmp_path / "a", [BASE, APP1]).path), name="app:1")
    s.import_path(str(oci_layout(tmp_path / "b", [BASE, APP2]).path), name="app:2")
    return s


def usage(store):
    return {u.kind: u for u in store.df()}


def test_df_agrees_with_du_and_counts_shared_layers_once(store):
    layer_dirs = [os.path.join(store.paths.layers, n) for n in os.listdir(store.paths.layers)
                  if not n.endswith(".json")]
    u = usage(store)
    assert len(layer_dirs) == 3
    assert close(u["images"].size, du(*layer_dirs))
    assert (u["images"].total, u["images"].active) == (2, 0)
    assert u["images"].reclaimable == u["images"].size
    one, two = sorted(u["images"].items, key=lambda i: i["names"])
    assert one["shared"] == two["shared"] > 1_000_000          # BASE
    assert one["size"] == one["shared"] + one["unique"]
    assert one["size"] + two["unique"] == u["images"].size

    c = store.create("app:1", name="c", volumes=["data:/data"])
    mp = store.mount("c")
    Path(mp, "big").write_bytes(os.urandom(500_000))
    Path(store.volumes.data_dir("data"), "rows").write_bytes(os.urandom(300_000))
    store.umount("c")
    u = usage(store)
    assert (u["images"].active, u["containers"].total, u["volumes"].active) == (1, 1, 1)
    assert u["images"].reclaimable == two["unique"]
    assert close(u["containers"].size, du(store.containers.container_dir(c.id)))
    assert close(u["volumes"].size, du(store.paths.volume_dir("data")))
    assert u["containers"].reclaimable == u["containers"].size     # not mounted
    assert u["volumes"].reclaimable == 0


def test_prune_removes_exactly_what_is_unused(store, tmp_path):
    keep = store.create("app:1", name="keep", volumes=["kept:/k", "/anon-kept"])
    store.mount("keep")
    store.create("app:2", name="gone", volumes=["/anon-gone", "named:/n"])
    # a dangling image: its name moved to another image
    store.import_path(str(oci_layout(tmp_path / "c", [APP2]).path), name="dangling")
    store.tag("app:2", ["dangling"])
    dry = store.prune(dry_run=True)
    assert [label for label, _ in dry][:1] == ["container gone"]
    before = {n for n in os.listdir(store.paths.layers)}
    done = store.prune()
    assert [label for label, _ in done] == [label for label, _ in dry]
    labels = [label for label, _ in done]
    assert labels[0] == "container gone"
    assert any(label.startswith("image ") for label in labels)
    anon_gone = [v.name for v in store.list_volumes() if v.anonymous]
    assert store.volume("named") and store.volume("kept")           # named volumes stay
    assert anon_gone == [keep.mounts[1].source]                      # the used one stays
    assert [s.container.name for s in store.list_containers()] == ["keep"]
    assert {i.names for i in store.list_images()} == {("app:1",), ("app:2", "dangling:latest")}
    freed = sum(size or 0 for _, size in done)
    assert freed > 0
    assert before - set(os.listdir(store.paths.layers)) == {
        n for n in before if n.startswith(tuple(label.split()[1] for label in labels
                                                if label.startswith("layer ")))}
    store.umount("keep")
    assert [label for label, _ in store.prune(("containers",))] == ["container keep"]
    done = store.prune(("images",), all=True)
    assert store.list_images() == [] and os.listdir(store.paths.layers) == []
    assert sum(1 for label, _ in done if label.startswith("layer ")) == 3
    done = store.prune(("volumes",), all=True)
    assert store.list_volumes() == []


def test_prune_spares_what_an_import_in_flight_uses(store, tmp_path):
    """An import in flight records its image incomplete, with its layers, first:
    prune leaves those layers, even the ones no complete image has."""
    (image,) = [i for i in store.list_images() if "app:2" in i.names]
    store.rmi("app:2")
    assert store.layers.get(image.layers[0]) is not None        # shared with app:1
    with fsutil.Lease(store.paths.staging) as lease:
        with store.pinned(image.layers[:1], lease):
            store.rmi("app:1")
            done = store.prune(("images",), all=True)
            assert done == []
            assert store.layers.get(image.layers[0]) is not None
    assert [label for label, _ in store.prune()] == [f"layer {image.layers[0].short}"]


def test_stale_lock_files_are_debris(store):
    held = os.path.join(store.paths.staging, "a" * 64 + ".lock")
    left_by_imports = [n for n in os.listdir(store.paths.staging) if n.endswith(".lock")]
    assert len(left_by_imports) == 5            # one per layer and image imported
    stale = os.path.join(store.paths.staging, "b" * 64 + ".lock")
    open(stale, "w").close()
    with fsutil.exclusive_flock(held):
        removed = store.remove_stale_locks()
    assert sorted(removed) == sorted(left_by_imports + [os.path.basename(stale)])
    assert os.listdir(store.paths.staging) == [os.path.basename(held)]
