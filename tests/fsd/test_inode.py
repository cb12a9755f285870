"""The inode table's numbering: no two live nodes ever share a number, also
when numbers recorded in xattrs at earlier mounts come back (the kernel makes
an inode bad, and every call on it EIO, when one number names two types)."""

from __future__ import annotations

import stat
from types import SimpleNamespace

from fsd.inode import InodeTable
from fsd.ondisk import Markers


def table_of(*devs: int) -> InodeTable:
    """A table for lowers on filesystems `devs`, top first, with no upper."""
    return InodeTable([SimpleNamespace(dev=d) for d in devs], None, Markers("chardev", None, None, False))


def test_a_fresh_number_never_repeats_one_recorded_at_an_earlier_mount():
    table = table_of(1)
    recorded = table.fresh_key()  # what an earlier mount wrote into an xattr
    table = table_of(1)  # the next mount: its counter starts over
    kept = table.add(recorded, stat.S_IFDIR)  # the object that carries it, looked up first
    held = table.add(7, stat.S_IFREG)
    held.lookups = 1  # the kernel still holds number 7 ...
    table.retire(held)  # ... for an object that is gone
    newcomer = table.add(7, stat.S_IFREG)  # a new object on the freed inode
    assert len({kept.ino, held.ino, newcomer.ino}) == 3
    assert table[kept.ino] is kept and table[newcomer.ino] is newcomer
    assert table.fresh_key() not in (kept.ino, newcomer.ino)


def test_filesystems_are_numbered_in_stack_order():
    first = table_of(10, 20, 30)
    first.key_for(30, 5)  # whatever is looked up first
    second = table_of(10, 20, 30)
    assert first.key_for(20, 5) == second.key_for(20, 5)
    assert len({second.key_for(d, 5) for d in (10, 20, 30)}) == 3


def test_a_lower_object_numbered_by_its_layer_index_gets_the_number_of_its_device():
    table = table_of(10, 20, 10)  # two lowers on one filesystem: st_ino is what tells them apart
    for index, dev in enumerate((10, 20, 10)):
        for st_ino in (1, 2, 12345, (1 << 48) - 1, 1 << 48, 1 << 63):
            assert table.lower_key(index, st_ino) == table.key_for(dev, st_ino), (index, st_ino)
    assert table.lower_key(0, 1) != 1, "never the root's number"
