"""`layers push`: an image to a registry."""

from __future__ import annotations

import functools
import time

from .errors import UsageError
from .export import config_sent, layer_tar
from .progress import Progress
from .records import Image
from .registry.blobinfo import BlobInfoCache
from .registry.parallel import run_bounded
from .registry.reference import split_registry
from .registry.session import PushReport, RegistryOptions, open_push
from .registry.upload import PushedBlob
from .storecore import StoreCore


def push(store: StoreCore, ref: str, dest: str | None, options: RegistryOptions,
         progress: Progress | None = None) -> PushReport:
    """Push the image `ref` to `dest` (default: its first name that names a
    registry, see `_push_destination`): only the blobs the registry lacks
    are uploaded (`registry/upload.py`), `options.jobs` at a time; layers are rebuilt from their tar-splits
    (as `save` does), so the config — the image id — is the one pulled
    or imported.  The layers are pinned meanwhile."""
    image = store.images.resolve(ref)
    if dest is None:
        dest = _push_destination(ref, image)
    started = time.monotonic()
    warnings: list[str] = []
    cache = BlobInfoCache(store.paths.blobinfo)
    with store.lease() as lease, store.pinned(image.layers, lease), \
            open_push(dest, options, cache) as pusher:
        layers = [store.layers.get(lid) for lid in image.layers]

        def one(i: int) -> PushedBlob:
            layer = layers[i]
            if progress:
                progress.layer_start(i, len(layers), str(layer.diff_id), None)
            blob = pusher.push_layer(
                layer.diff_id, layer.tar_size,
                lambda: layer_tar(store, layer, lease, warnings), lease.path, progress)
            if progress:
                progress.layer_done(layer if blob.status == "uploaded" else None)
            return blob

        blobs = run_bounded(options.jobs, [functools.partial(one, i)
                                           for i in range(len(layers))],
                            pusher.client.abort)
        config = config_sent(image, [str(b.diff_id) for b in blobs], "pushed", warnings)
        config_blob = pusher.push_config(config)
        manifest_digest, _ = pusher.push_manifest(config_blob, blobs)
        destination = str(pusher.ref)
    cache.save()
    return PushReport(destination=destination, image_id=image.id,
                      manifest_digest=manifest_digest, layers=blobs, config=config_blob,
                      sent=pusher.bytes_sent, seconds=time.monotonic() - started,
                      warnings=warnings)


def _push_destination(ref: str, image: Image) -> str:
    """The first of the image's names that names a registry (`localhost/x`,
    `reg.example:5000/x`: the first component has a dot or a colon or is
    localhost, as containers/image decides).  A name like `demo:1` would
    mean docker.io; nobody who named an image so meant to push it there,
    so that is refused (UsageError) rather than guessed."""
    for name in image.names:
        if split_registry(name)[0] is not None:
            return name
    said = f" ({', '.join(image.names)})" if image.names else ""
    raise UsageError(f"image {ref} has no name that names a registry{said}; say where "
                     f"to push it: layers push {ref} REGISTRY/REPOSITORY[:TAG]")
