"""opendir/readdir/telldir/seekdir from libc, for readdir offset tests.

Python has no telldir/seekdir; these go through ctypes so a test can list a
directory in many getdents calls, remember positions, seek back and check the
rest of the listing is the same.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os


class _Dirent(ctypes.Structure):  # glibc x86_64/aarch64 struct dirent (== dirent64)
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.opendir.restype = ctypes.c_void_p
_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.readdir64.restype = ctypes.POINTER(_Dirent)
_libc.readdir64.argtypes = [ctypes.c_void_p]
_libc.telldir.restype = ctypes.c_long
_libc.telldir.argtypes = [ctypes.c_void_p]
_libc.seekdir.restype = None
_libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
_libc.rewinddir.restype = None
_libc.rewinddir.argtypes = [ctypes.c_void_p]
_libc.closedir.argtypes = [ctypes.c_void_p]


class Dir:
    """A libc DIR stream; entries are (name: str, d_ino: int)."""

    def __init__(self, path):
        self._d = _libc.opendir(os.fsencode(path))
        if not self._d:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), os.fspath(path))

    def read(self) -> tuple[str, int] | None:
        ctypes.set_errno(0)
        p = _libc.readdir64(self._d)
        if not p:
            e = ctypes.get_errno()
            if e:
                raise OSError(e, os.strerror(e))
            return None
        return os.fsdecode(p.contents.d_name), p.contents.d_ino

    def read_all(self) -> list[tuple[str, int]]:
        out = []
        while (e := self.read()) is not None:
            out.append(e)
        return out

    def tell(self) -> int:
        return _libc.telldir(self._d)

    def seek(self, pos: int):
        _libc.seekdir(self._d, pos)

    def rewind(self):
        _libc.rewinddir(self._d)

    def close(self):
        if self._d:
            _libc.closedir(self._d)
            self._d = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
