"""What we know about blobs we pulled or pushed, so a push can reuse them.

One JSON file (`StorePaths.blobinfo`): for each compressed blob digest, its
size, media type, the diffID it decompresses to, the repositories
(`registry/repository`) known to hold it, and for a seekable (eStargz) blob
its TOC digest (once known, kept: a blob does not stop being seekable).  A push looks a layer's diffID up
to find blobs it may not need to make or upload: one the destination has
(skipped), or one another repository of the same registry has (mounted).

A cache: a lost or unreadable file only costs work.  Loaded once per command;
what the command learned is merged into the file at the end, under a flock,
written atomically; at most `MAX_BLOBS` blobs, `MAX_LOCATIONS` each, the
most recently used kept.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass

from .. import fsutil
from ..digest import Digest

MAX_BLOBS = 10_000
MAX_LOCATIONS = 16


@dataclass(frozen=True)
class BlobInfo:
    digest: Digest
    size: int
    media_type: str
    diff_id: Digest
    locations: tuple[str, ...]
    toc_digest: Digest | None = None     # a seekable blob's (estargz.py)


class BlobInfoCache:
    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = self._load()
        self._learned: dict[str, dict] = {}

    def _load(self) -> dict[str, dict]:
        try:
            with open(self.path, "rb") as f:
                doc = json.loads(f.read())
            blobs = doc.get("blobs", {})
            return blobs if isinstance(blobs, dict) else {}
        except (OSError, ValueError, AttributeError):
            return {}

    @staticmethod
    def _info(key: str, e: dict) -> BlobInfo | None:
        try:
            toc = e.get("toc_digest")
            return BlobInfo(Digest.parse(key), int(e["size"]), str(e["media_type"]),
                            Digest.parse(e["diff_id"]), tuple(e.get("locations", ())),
                            Digest.parse(toc) if toc is not None else None)
        except Exception:
            return None

    def by_diff_id(self, diff_id: Digest) -> list[BlobInfo]:
        """Blobs known to decompress to `diff_id`, most recently used first."""
        with self._lock:
            merged = {**self._entries, **self._learned}
            out = [(e.get("used", 0), self._info(k, e)) for k, e in merged.items()
                   if e.get("diff_id") == str(diff_id)]
        return [info for _, info in sorted(out, key=lambda x: -x[0]) if info is not None]

    def get(self, digest: Digest) -> BlobInfo | None:
        with self._lock:
            e = self._learned.get(str(digest)) or self._entries.get(str(digest))
        return self._info(str(digest), e) if e else None

    def record(self, digest: Digest, size: int, media_type: str, diff_id: Digest,
               location: str, toc_digest: Digest | None = None) -> None:
        with self._lock:
            key = str(digest)
            old = self._learned.get(key) or self._entries.get(key) or {}
            locations = [location] + [x for x in old.get("locations", []) if x != location]
            self._learned[key] = {"size": size, "media_type": media_type,
                                  "diff_id": str(diff_id),
                                  "locations": locations[:MAX_LOCATIONS], "used": time.time()}
            toc = str(toc_digest) if toc_digest is not None else old.get("toc_digest")
            if toc is not None:
                self._learned[key]["toc_digest"] = toc

    def save(self) -> None:
        """Merge what this command learned into the file."""
        with self._lock:
            if not self._learned:
                return
            learned = dict(self._learned)
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        with fsutil.exclusive_flock(self.path + ".lock"):
            entries = self._load()
            for key, e in learned.items():
                old = entries.get(key, {})
                locs = e["locations"] + [x for x in old.get("locations", [])
                                         if x not in e["locations"]]
                entries[key] = {**old, **e, "locations": locs[:MAX_LOCATIONS]}
            if len(entries) > MAX_BLOBS:
                keep = sorted(entries, key=lambda k: -entries[k].get("used", 0))[:MAX_BLOBS]
                entries = {k: entries[k] for k in keep}
            fsutil.atomic_write(self.path, json.dumps({"blobs": entries}).encode(), 0o600)
