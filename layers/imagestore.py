"""Image records: an ordered stack of layers, the config, the names.

Level 3: imports `errors`, `digest`, `layout`, `records`, `recordstore`.

An image's id is the hex of its config digest.  Names (`name:tag`) are
unique across images: `claim_names` moves a name from its old image.
References (`resolve`) are a name, a full id, or an unambiguous id prefix
of at least 4 hex digits.
"""

from __future__ import annotations

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
