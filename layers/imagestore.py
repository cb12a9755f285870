"""Image records: an ordered stack of layers, the config, the names.

`committed_config` makes the config of an image made by `commit`.

An image's id is the hex of its config digest.  Names (`name:tag`) are
unique across images: `claim_names` moves a name from its old image.
References (`resolve`) are a name, a full id, or an unambiguous id prefix
of at least 4 hex digits.
"""

from __future__ import annotations

import json
import time

from .digest import Digest
from .errors import AmbiguousReference, BadReference, ImageUnknown
from .layout import StorePaths
from .records import Image, parse_image_name, replace
from .recordstore import RecordStore


class ImageStore(RecordStore[Image]):
    kind = Image

    def __init__(self, paths: StorePaths):
        super().__init__(paths.images)

    def get(self, image_id: str) -> Image | None:
        image = self.load(image_id)
        return image if image is not None and not image.incomplete else None

    def resolve(self, ref: str) -> Image:
        """The complete image `ref` names; ImageUnknown or AmbiguousReference."""
        images = list(self.all())
        try:
            name = parse_image_name(ref)
        except BadReference:
            name = None
        if name is not None:
            for image in images:
                if name in image.names:
                    return image
        ref_hex = ref[7:] if ref.startswith("sha256:") else ref
        if len(ref_hex) >= 4 and all(c in "0123456789abcdef" for c in ref_hex):
            matches = [i for i in images if i.id.startswith(ref_hex)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise AmbiguousReference(ref, [m.id[:12] for m in matches])
        raise ImageUnknown(ref)

    def claim_names(self, image: Image, names: list[str]) -> Image:
        """Give `names` to `image` (saved), taking them from other images."""
        wanted = set(names)
        for other in self.all():
            if other.id != image.id and wanted & set(other.names):
                self.save(other.id, replace(other, names=tuple(
                    n for n in other.names if n not in wanted)))
        merged = tuple(dict.fromkeys(image.names + tuple(names)))
        image = replace(image, names=merged)
        self.save(image.id, image)
        return image


def committed_config(base: str, diff_id: Digest, created: float) -> bytes:
    """The config of an image made by committing a container of the image whose
    config is `base`: one more diffID, a new creation time, one more history
    entry when the base has a history.  Compact and key-sorted, so that the
    same commit gives the same image id."""
    doc = json.loads(base)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
    rootfs = doc.get("rootfs") if isinstance(doc.get("rootfs"), dict) else {}
    diff_ids = list(rootfs.get("diff_ids") or [])
    doc["rootfs"] = {**rootfs, "type": "layers", "diff_ids": diff_ids + [str(diff_id)]}
    doc["created"] = stamp
    if isinstance(doc.get("history"), list):
        doc["history"] = doc["history"] + [{"created": stamp,
                                            "created_by": "layers commit"}]
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
