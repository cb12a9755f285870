"""Layer efficiency of an image: what each layer adds, changes and deletes,
and the bytes a later layer made useless (the report `dive` gives).

`analyze(layers)` takes the image's layers BOTTOM first, as (id, content
dir, allocated size) and reads them with `changes` (the one reader of layer
stacks and their markers):

- a layer's A/C/D list is `changelist.upper_changes(its dir, the dirs below)`:
  the layer read as the upper of the image below it;
- a regular file a layer holds is *wasted* when it is not what the whole
  image shows at its path: a later layer replaced it (C), deleted it or a
  dir above it (D), or made a dir above it opaque.  The test is identity:
  the merged lookup of the path through every layer is not this very file.
  Bytes are file sizes (st_size), a hard-linked file counted once per layer;
- `efficiency` = 1 − wasted / all file bytes of all layers (1.0 for an
  image with no file bytes);
- `wasted_paths`: per path, the bytes and the number of copies wasted,
  largest first.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from . import changelist, layout


@dataclass(frozen=True)
class LayerReport:
    id: str
    size: int                                  # allocated bytes (the record's)
    file_bytes: int                            # st_size of its regular files
    changes: list[tuple[str, str]]             # (A|C|D, path), sorted by path
    wasted_bytes: int

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.changes if k == kind)


@dataclass(frozen=True)
class WastedPath:
    path: str
    bytes: int
    copies: int                                # layers whose copy is wasted


@dataclass(frozen=True)
class Report:
    layers: list[LayerReport]
    total_bytes: int                           # file bytes of all layers
    wasted_bytes: int
    efficiency: float
    wasted_paths: list[WastedPath] = field(default_factory=list)

    def to_json(self, top: int) -> dict:
        return {"layers": [{"id": lr.id, "size": lr.size, "file_bytes": lr.file_bytes,
                            "added": lr.count(changelist.ADDED),
                            "changed": lr.count(changelist.CHANGED),
                            "deleted": lr.count(changelist.DELETED),
                            "wasted_bytes": lr.wasted_bytes,
                            "changes": [{"kind": k, "path": p} for k, p in lr.changes]}
                           for lr in self.layers],
                "total_bytes": self.total_bytes, "wasted_bytes": self.wasted_bytes,
                "efficiency": self.efficiency,
                "wasted_paths": [{"path": w.path, "bytes": w.bytes, "copies": w.copies}
                                 for w in self.wasted_paths[:top]]}


def _own_files(layer: str):
    """(parts, lstat) of each regular file in the layer dir, markers left out."""
    for dirpath, dirnames, filenames in os.walk(layer):
        rel = os.path.relpath(dirpath, layer)
        parts = [] if rel == "." else rel.split(os.sep)
        for name in filenames:
            if name.startswith(layout.META_PREFIX) or layout.whiteout_target(name) is not None:
                continue
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                yield parts + [name], st


def analyze(layers: list[tuple[str, str, int]]) -> Report:
    """The report for an image whose layers are (id, dir, size), BOTTOM first."""
    dirs = [d for _, d, _ in layers]
    stack = list(reversed(dirs))                # TOP first, as `changes` reads it
    reports: list[LayerReport] = []
    per_path: dict[str, list[int]] = {}
    total = wasted_all = 0
    for i, (lid, d, size) in enumerate(layers):
        below = list(reversed(dirs[:i]))
        found = changelist.upper_changes(d, below)
        seen: set[int] = set()
        file_bytes = wasted = 0
        for parts, st in _own_files(d):
            if st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            file_bytes += st.st_size
            shown = changelist.lookup(stack, parts)
            if shown is not None and (shown.st_dev, shown.st_ino) == (st.st_dev, st.st_ino):
                continue
            wasted += st.st_size
            entry = per_path.setdefault("/" + "/".join(parts), [0, 0])
            entry[0] += st.st_size
            entry[1] += 1
        reports.append(LayerReport(lid, size, file_bytes, found, wasted))
        total += file_bytes
        wasted_all += wasted
    paths = sorted((WastedPath(p, b, n) for p, (b, n) in per_path.items()),
                   key=lambda w: (-w.bytes, w.path))
    efficiency = 1.0 if total == 0 else 1.0 - wasted_all / total
    return Report(reports, total, wasted_all, efficiency, paths)
