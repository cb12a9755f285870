"""A directory of records of one kind: `<key>.json` files, read and written whole.

The caller holds the store lock for every write.  Reads need no lock: a
record file is replaced by rename, never rewritten in place.  `all()` skips
temp files of interrupted writes; `corrupt` collects records that failed to
parse (reported by `check`, never silently used).
"""

from __future__ import annotations

import os
from typing import Generic, Iterator, Type

from . import fsutil
from .layout import record_file
from .errors import BadReference, CorruptRecord
from .records import R, decode, encode


class RecordStore(Generic[R]):
    kind: Type[R]

    def __init__(self, directory: str):
        self.dir = directory
        self.corrupt: list[CorruptRecord] = []

    def _path(self, key: str) -> str:
        return record_file(self.dir, key)

    def load(self, key: str) -> R | None:
        """The record at `key` (incomplete ones included), None when absent."""
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        return decode(self.kind, raw, path)

    def save(self, key: str, record: R) -> None:
        fsutil.atomic_write(self._path(key), encode(record))

    def delete(self, key: str) -> None:
        fsutil.remove_file(self._path(key))

    def all(self, include_incomplete: bool = False) -> Iterator[R]:
        self.corrupt = []
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return
        for name in names:
            if not name.endswith(".json") or fsutil.is_tmp_name(name):
                continue
            try:
                record = self.load(name[:-5])
            except CorruptRecord as e:
                self.corrupt.append(e)
                continue
            except BadReference as e:     # a file name no record has
                self.corrupt.append(CorruptRecord(os.path.join(self.dir, name), e.message))
                continue
            if record is not None and (include_incomplete or not record.incomplete):
                yield record

    def leftover_tmp_files(self) -> list[str]:
        try:
            return [os.path.join(self.dir, n) for n in os.listdir(self.dir)
                    if fsutil.is_tmp_name(n)]
        except FileNotFoundError:
            return []
