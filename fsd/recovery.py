"""What happens after a crash: the work area is put right before a mount goes live.

fsd changes the upper so that a crash between two steps loses nothing (see the
headers of copy_up.py and dir.py); what a crash can leave is in the work area
(workarea.py), and the next mount finishes or drops it, in this order:

1. Half-built objects in the scratch directory: removed when the work area is
   taken (`WorkArea.open`).  The upper never saw them.
2. A directory move cut short (the journal): if the moved tree was installed
   at its destination (it carries the moved tree's origin number), what is left
   at the source is removed; otherwise the old tree stands as it was.
3. Copy-ups of lower files with several names (the hard-link index): an entry
   that is the copy's only name was never published, so the lower file stands
   and the entry goes; one whose copy was published is linked at every name
   still showing the lower file, so that the names are one file again.
"""

from __future__ import annotations

import logging

from .copy_up import CopyUp
from .dir import DirOps
from .namei import Namei
from .ondisk import format_origin
from .overlay import Overlay

log = logging.getLogger("fsd")


async def recover(ovl: Overlay, namei: Namei, dirs: DirOps, copyup: CopyUp) -> None:
    finish_interrupted_move(ovl, namei, dirs)
    await finish_interrupted_links(ovl, copyup)


def finish_interrupted_move(ovl: Overlay, namei: Namei, dirs: DirOps) -> None:
    journal = ovl.work.read_journal()
    if journal is None:
        return
    src, dst, key = journal
    origin = ovl.markers.origin_xattr
    placed = (origin is not None and ovl.upper.try_lstat(dst) is not None
              and ovl.upper.try_getxattr(dst, origin) == format_origin(key))
    if placed:
        parent, name = namei.find_path(src)
        node = namei.find(parent, name) if parent is not None and parent.upper else None
        if node is not None and node.is_dir and node.key == key:
            dirs.remove_moved_source(parent, name, node)
    ovl.work.clear_journal()


async def finish_interrupted_links(ovl: Overlay, copyup: CopyUp) -> None:
    work = ovl.work.layer
    for rel, which, published in list(ovl.work.index_entries()):
        if which is None:
            log.warning("work area: unknown index entry %r removed", rel)
        elif 0 <= which[0] < len(ovl.lowers) and published:
            await copyup.link_other_names(which[0], which[1], work, rel)
        work.unlink(rel)
