"""Content identity: the `Digest` value type, hashing streams, OCI ChainIDs.

A digest is `sha256:` followed by exactly 64 lowercase hex digits; nothing
else is accepted, so a `Digest`'s `hex` is always safe to use as a file name.
Ids of images and containers are bare 64-hex strings (`check_id`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable

from .errors import BadReference

_HEX64 = re.compile(r"[0-9a-f]{64}")
ALGORITHM = "sha256"


@dataclass(frozen=True, order=True)
class Digest:
    hex: str

    def __post_init__(self) -> None:
        if not isinstance(self.hex, str) or not _HEX64.fullmatch(self.hex):
            raise BadReference(str(self.hex), "sha256 hex")

    @classmethod
    def parse(cls, text: str) -> "Digest":
        """`sha256:<64 lowercase hex>` → Digest; anything else → BadReference."""
        if not isinstance(text, str) or not text.startswith("sha256:") \
                or not _HEX64.fullmatch(text[7:]):
            raise BadReference(str(text), "digest")
        # checked: made without __init__'s second check (a TOC parses 10,000)
        d = object.__new__(cls)
        object.__setattr__(d, "hex", text[7:])
        return d

    @classmethod
    def of_bytes(cls, data: bytes) -> "Digest":
        return cls(hashlib.sha256(data).hexdigest())

    def __str__(self) -> str:
        return f"sha256:{self.hex}"

    @property
    def short(self) -> str:
        return self.hex[:12]


def check_id(text: str) -> str:
    """A record id (64 lowercase hex) or BadReference; safe as a file name."""
    if not isinstance(text, str) or not _HEX64.fullmatch(text):
        raise BadReference(str(text), "id")
    return text


def chain_ids(diff_ids: Iterable[Digest]) -> list[Digest]:
    """OCI ChainIDs: ChainID(L0) = DiffID(L0); ChainID(Ln) =
    sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    out: list[Digest] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append(Digest.of_bytes(f"{out[-1]} {diff_id}".encode()))
    return out


class HashingReader:
    """Wraps a binary reader; hashes and counts every byte read through it.

    `on_progress(nbytes)` is called with the running total after each read.
    """

    def __init__(self, raw: BinaryIO, on_progress: Callable[[int], None] | None = None):
        self._raw = raw
        self._hash = hashlib.sha256()
        self.count = 0
        self._on_progress = on_progress

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data:
            self._hash.update(data)
            self.count += len(data)
            if self._on_progress is not None:
                self._on_progress(self.count)
        return data

    def readinto(self, buf) -> int:
        n = self._raw.readinto(buf)
        if n:
            view = memoryview(buf)[:n]
            self._hash.update(view)
            self.count += n
            if self._on_progress is not None:
                self._on_progress(self.count)
        return n

    def drain(self, chunk: int = 1 << 20) -> None:
        """Read to the end, so the digest covers trailing bytes too."""
        while self.read(chunk):
            pass

    def digest(self) -> Digest:
        return Digest(self._hash.hexdigest())
