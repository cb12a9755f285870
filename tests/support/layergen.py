"""Seeded random layer stacks, in the forms fsd must read.

generate_stack(root, seed) writes N layer directories under root and returns a
Stack whose .layers are in lowerdir order (top first). The same seed always
gives the same tree (names, contents, modes, owners, xattrs, markers), so a
failing seed can be rerun alone.

What a stack holds, bottom layer first, every layer on top of the ones below:
- nested directories, regular files of many sizes (empty, small, a few
  multi-MiB, one sparse), symlinks (relative, absolute, dangling, long),
  hard links inside a layer, fifos, character devices, user.* and a few
  trusted.* xattrs, odd names (spaces, UTF-8, bytes that are not UTF-8,
  newlines, backslashes, colons, dot files, names that start like a marker but
  are not one, 255-byte names), seeded times;
- in every layer above the bottom: whiteouts of names that exist below, in
  both formats (char dev 0/0 made with mknod, and an empty `.wh.NAME` file),
  opaque directories over directories that have content below, in every marker
  form (trusted.overlay.opaque=y, user.overlay.opaque=y,
  user.fuseoverlayfs.opaque=y, a `.wh..wh..opq` file), a directory replaced
  by a file, a file replaced by a directory, files shadowed by new content;
- some noise: overlay-private xattrs that must stay hidden, whiteouts of names
  that exist nowhere, an opaque marker in the bottom layer.

The generator keeps a model of the merged namespace only to choose meaningful
targets; the expected merged view is never computed here - the kernel overlay
decides it (see convert.py).
"""

from __future__ import annotations

import os
import random
import stat
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

WHITEOUT_FORMATS = ("chardev", "whfile")
OPAQUE_FORMATS = ("trusted", "user", "fuseoverlayfs", "whfile")
OPAQUE_XATTRS = {
    "trusted": "trusted.overlay.opaque",
    "user": "user.overlay.opaque",
    "fuseoverlayfs": "user.fuseoverlayfs.opaque",
}
WH_PREFIX = ".wh."
OPQ_NAME = ".wh..wh..opq"
PRIVATE_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.", "user.fuseoverlayfs.")
# Private names with no meaning to any overlay: present in layers, never visible.
NOISE_XATTRS = ("user.overlay.strata_noise", "user.fuseoverlayfs.strata_noise",
                "trusted.overlay.strata_noise")

MiB = 1 << 20

_WORDS = ("etc bin usr lib share doc conf data cache log tmp var opt srv home app "
          "node site include man src build dist pkg www run db img font local").split()
_EXTS = ("", "", "", ".txt", ".conf", ".so", ".py", ".json", ".gz", ".1")
_FILE_MODES = (0o644, 0o644, 0o644, 0o600, 0o755, 0o755, 0o444, 0o640, 0o4755, 0o2755, 0o000, 0o1644)
_DIR_MODES = (0o755, 0o755, 0o755, 0o700, 0o1777, 0o750, 0o555, 0o2775)
_OWNERS = ((0, 0),) * 6 + ((1000, 1000), (65534, 65534), (12345, 54321), (0, 100))


@dataclass
class Stack:
    seed: int
    root: Path
    layers: list[Path]  # lowerdir order: top first
    features: dict[str, list[str]] = field(default_factory=dict)  # kind -> ["L<k>:<rel>", ...]

    @property
    def bottom_first(self) -> list[Path]:
        return list(reversed(self.layers))


def generate_stack(root: Path, seed: int, nlayers: int | None = None,
                   size: float = 1.0, big_files: int = 2) -> Stack:
    """Write a random stack under root (created if needed); see module doc.

    size scales the number of entries; big_files bounds the multi-MiB files.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return _Generator(root, seed, nlayers, size, big_files).run()


def rel_join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _parent(rel: str) -> str:
    return rel.rpartition("/")[0]


def _base(rel: str) -> str:
    return rel.rpartition("/")[2]


def _ancestors(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


class _Generator:
    def __init__(self, root: Path, seed: int, nlayers: int | None, size: float, big_files: int):
        self.root = root
        self.seed = seed
        self.rng = random.Random(seed)
        self.nlayers = nlayers if nlayers is not None else self.rng.randint(3, 6)
        self.size = size
        self.big_budget = big_files
        self.model: dict[str, str] = {"": "d"}  # merged view: rel -> 'd','f','l','p','c'
        self.features: dict[str, list[str]] = defaultdict(list)
        self._opaque_cycle = 0
        self._wh_cycle = 0
        self._uniq = 0

    # -- driver ----------------------------------------------------------
    def run(self) -> Stack:
        layers = []
        for k in range(self.nlayers):
            path = self.root / f"layer{k:02d}"
            path.mkdir()
            self.k, self.lroot = k, path
            self.lp: dict[str, str] = {"": "d"}  # this layer: rel -> kind ('w' whiteout)
            self.lfiles: list[str] = []
            if k == 0:
                self._bottom_layer()
            else:
                self._upper_layer()
            self._maybe_xattrs(path, is_dir=True, p=0.3)
            if self.rng.random() < 0.5:  # the merged root takes the top layer's
                self._owner(path)
                os.chmod(path, self.rng.choice(_DIR_MODES))
            _set_times(path, f"{self.seed}/{k}")
            layers.append(path)
        return Stack(self.seed, self.root, list(reversed(layers)), dict(self.features))

    def _bottom_layer(self):
        for _ in range(int(self.rng.randint(60, 90) * self.size)):
            self._new_entry()
        # one of each kind that must exist somewhere
        for kind in ("symlink_rel", "symlink_abs", "symlink_dangling", "fifo", "sparse", "hardlink",
                     "big", "empty"):
            self._new_entry(kind)
        if self.rng.random() < 0.5:  # opaque marker where nothing is below: no effect
            self._opaque(self.rng.choice(OPAQUE_FORMATS), require_content=False)
        if self.rng.random() < 0.5:  # a whiteout in the bottom layer hides nothing
            self._whiteout(self.rng.choice(WHITEOUT_FORMATS), existing=False)

    def _upper_layer(self):
        rng = self.rng
        ops = []
        for _ in range(2):
            ops.append(("opaque", OPAQUE_FORMATS[self._opaque_cycle % 4]))
            self._opaque_cycle += 1
        for _ in range(4):
            ops.append(("whiteout", WHITEOUT_FORMATS[self._wh_cycle % 2]))
            self._wh_cycle += 1
        ops += [("dir2file", None), ("file2dir", None), ("shadow", None), ("shadow", None),
                ("shadow", None), ("new", "hardlink"), ("whiteout_nothing", None)]
        rng.shuffle(ops)
        ops.insert(0, ops.pop(ops.index(("dir2file", None))))
        news = [("new", None)] * int(rng.randint(15, 35) * self.size)
        ops = [op for pair in zip(ops, news) for op in pair] + ops[len(news):] + news[len(ops):]
        for op, arg in ops:
            if op == "opaque":
                self._opaque(arg)
            elif op == "whiteout":
                self._whiteout(arg)
            elif op == "whiteout_nothing":
                self._whiteout(rng.choice(WHITEOUT_FORMATS), existing=False)
            elif op == "dir2file":
                self._replace(want_dir=True)
            elif op == "file2dir":
                self._replace(want_dir=False)
            elif op == "shadow":
                self._shadow()
            else:
                self._new_entry(arg)

    # -- model -------------------------------------------------------------
    def _model_remove_below(self, rel: str):
        pre = rel + "/" if rel else ""
        for key in [k for k in self.model if k.startswith(pre) and k != rel]:
            del self.model[key]

    def _model_set(self, rel: str, kind: str):
        old = self.model.get(rel)
        if kind != "d" or (old is not None and old != "d"):
            self._model_remove_below(rel)
        self.model[rel] = kind

    def _model_remove(self, rel: str):
        self._model_remove_below(rel)
        self.model.pop(rel, None)

    def _free(self, rel: str) -> bool:
        """rel is untouched in this layer, and so is everything below it."""
        if rel in self.lp:
            return False
        pre = rel + "/"
        return not any(k.startswith(pre) for k in self.lp)

    def _ensure_dirs(self, rel: str) -> bool:
        """Make rel's ancestors directories in this layer; False if one can't be."""
        ancestors = _ancestors(rel)
        if any(a in self.lp and self.lp[a] != "d" for a in ancestors):
            return False
        for a in ancestors:
            if a in self.lp:
                continue
            old = self.model.get(a)
            if old is not None and old != "d":
                self.features["file_replaced_by_dir_as_parent"].append(self._tag(a))
            mode = 0o755 if self.rng.random() < 0.8 else self.rng.choice(_DIR_MODES)
            self._mkdir(a, mode)
            self._model_set(a, "d")
        return True

    def _pick(self, kinds: str, exclude_root=True, prefer_content=False) -> str | None:
        cands = [k for k, v in self.model.items() if v in kinds and (k or not exclude_root)
                 and k.count("/") < 6]
        if not cands:
            return None
        cands.sort()
        if prefer_content:
            with_content = [c for c in cands if any(k.startswith(c + "/") for k in self.model)]
            if with_content:
                cands = with_content
        for _ in range(20):
            rel = self.rng.choice(cands)
            if self._free(rel) and not any(a in self.lp and self.lp[a] != "d" for a in _ancestors(rel)):
                return rel
        return None

    def _tag(self, rel: str) -> str:
        return f"L{self.k}:{rel}"

    # -- names -------------------------------------------------------------
    def _name(self) -> str:
        rng = self.rng
        self._uniq += 1
        word = rng.choice(_WORDS)
        r = rng.random()
        if r < 0.04:
            return f"sp ace {word}{self._uniq}"
        if r < 0.08:
            return f"ünï-{word}-日本{self._uniq}"
        if r < 0.10:
            return f"col:on{self._uniq}"
        if r < 0.14:
            return f".{word}{self._uniq}"
        if r < 0.16:
            return f".wh{word}{self._uniq}"  # looks like a marker, is not one
        if r < 0.17:
            return f".whiteout.{self._uniq}"
        if r < 0.18:
            stem = f"long{self._uniq}-"
            return stem + "n" * (255 - len(stem))
        if r < 0.19:
            return os.fsdecode(b"not-utf8-\xff\xfe-%d" % self._uniq)  # bytes, not text
        if r < 0.20:
            return rng.choice(("new\nline", "tab\there", "back\\slash", "quote'\"", "star*?[x]",
                               "-dash", "~tilde", "percent%s")) + str(self._uniq)
        return f"{word}{self._uniq}{rng.choice(_EXTS)}"

    def _new_rel(self) -> str | None:
        parent = self._pick("d", exclude_root=False)
        if parent is None:
            parent = ""
        if parent.count("/") >= 5:
            parent = _parent(parent)
        return rel_join(parent, self._name())

    # -- primitive writers -------------------------------------------------
    def _p(self, rel: str) -> Path:
        return self.lroot / rel

    def _owner(self, path: Path, follow=True):
        uid, gid = self.rng.choice(_OWNERS)
        os.chown(path, uid, gid, follow_symlinks=follow)

    def _mkdir(self, rel: str, mode: int):
        p = self._p(rel)
        p.mkdir()
        self._maybe_xattrs(p, is_dir=True)
        self._owner(p)
        os.chmod(p, mode)
        self.lp[rel] = "d"

    def _maybe_xattrs(self, path: Path, is_dir: bool, p: float = 0.2):
        rng = self.rng
        if rng.random() < p:
            for _ in range(rng.randint(1, 3)):  # ext4 keeps all of a file's xattrs in one block
                name = "user." + rng.choice(("comment", "mime_type", "app.a", "app.b", "checksum"))
                value = rng.choice((b"", b"y", b"text/plain", rng.randbytes(rng.randint(1, 64)),
                                    rng.randbytes(rng.randint(300, 900))))
                os.setxattr(path, name, value)
        if rng.random() < 0.03:
            os.setxattr(path, "trusted.strata.t", rng.randbytes(8))
        if rng.random() < 0.04:
            name = rng.choice(NOISE_XATTRS)
            os.setxattr(path, name, b"y")
            self.features["private_noise_xattr"].append(f"L{self.k}:{path.relative_to(self.lroot)}")

    def _file_size(self, kind: str | None) -> int:
        rng = self.rng
        if kind == "empty":
            return 0
        if kind == "big" or (rng.random() < 0.01 and self.big_budget > 0):
            if self.big_budget > 0:
                self.big_budget -= 1
                return rng.randint(1, 4) * MiB + rng.randint(0, 4095)
        return rng.choice((0, rng.randint(1, 100), rng.randint(1, 100), rng.randint(100, 8192),
                           rng.randint(100, 8192), rng.randint(8192, 200_000), 4096, 131072))

    def _write_file(self, rel: str, kind: str | None = None):
        p = self._p(rel)
        size = self._file_size(kind)
        with open(p, "wb") as f:
            if kind == "sparse":
                size = 3 * MiB + 17
                f.truncate(size)
                f.seek(MiB + 5)
                f.write(self.rng.randbytes(1000))
            else:
                f.write(self.rng.randbytes(size))
        if size >= MiB:
            self.features["big_file"].append(self._tag(rel))
        self._maybe_xattrs(p, is_dir=False)
        self._owner(p)
        os.chmod(p, self.rng.choice(_FILE_MODES))
        self.lp[rel] = "f"
        self.lfiles.append(rel)
        self._model_set(rel, "f")

    def _symlink(self, rel: str, flavor: str | None = None):
        rng = self.rng
        flavor = flavor or rng.choice(("rel", "rel", "abs", "abs_inside", "dangling", "long", "dir"))
        parent = _parent(rel)
        existing = sorted(k for k in self.model if k)
        if flavor in ("rel", "dir") and existing:
            pool = [k for k in existing if self.model[k] == "d"] if flavor == "dir" else existing
            target = os.path.relpath(rng.choice(pool or existing), parent or ".")
        elif flavor == "abs":
            target = rng.choice(("/etc/hostname", "/usr/bin/env", "/", "/proc/self"))
        elif flavor == "abs_inside" and existing:
            target = "/" + rng.choice(existing)
        elif flavor == "long":
            target = "/".join(["long-symlink-target"] * 50)
            if rng.random() < 0.5:  # the longest a symlink can be
                target = (target * 5)[:4095]
        else:
            target = rng.choice(("does/not/exist", "/nonexistent/at/all", "../../../../../../x"))
            flavor = "dangling"
        p = self._p(rel)
        os.symlink(target, p)
        self._owner(p, follow=False)
        if rng.random() < 0.05:
            os.setxattr(p, "trusted.strata.link", b"L", follow_symlinks=False)
        self.features[f"symlink_{flavor}"].append(self._tag(rel))
        self.lp[rel] = "l"
        self._model_set(rel, "l")

    def _special(self, rel: str, kind: str):
        p = self._p(rel)
        if kind == "fifo":
            os.mkfifo(p, 0o644)
            self.lp[rel] = "p"
        else:
            os.mknod(p, stat.S_IFCHR | 0o644, os.makedev(1, self.rng.choice((3, 5, 7))))
            self.lp[rel] = "c"
        self._owner(p)
        os.chmod(p, self.rng.choice((0o644, 0o600, 0o666)))
        self.features[kind].append(self._tag(rel))
        self._model_set(rel, self.lp[rel])

    def _hardlink(self, rel: str) -> bool:
        srcs = [f for f in self.lfiles if self.lp.get(f) == "f"]
        if not srcs:
            return False
        src = self.rng.choice(srcs)
        os.link(self._p(src), self._p(rel))
        self.lp[rel] = "f"
        self._model_set(rel, "f")
        self.features["hardlink"].append(f"{self._tag(rel)} = {src}")
        return True

    def _dir_with_children(self, rel: str, depth: int = 0):
        self._mkdir(rel, self.rng.choice(_DIR_MODES))
        self._model_set(rel, "d")
        if depth < 3 and rel.count("/") < 6:
            for _ in range(self.rng.randint(0, 4)):
                child = rel_join(rel, self._name())
                self._create(child, None, depth + 1)

    def _create(self, rel: str, kind: str | None, depth: int = 0):
        """Create a new entry of kind (random if None) at rel; parents exist."""
        rng = self.rng
        if kind is None:
            kind = rng.choices(("file", "dir", "symlink", "fifo", "chardev", "hardlink"),
                               (50, 16, 18, 3, 2, 8))[0]
        if kind == "hardlink" and not self._hardlink(rel):
            kind = "file"
        if kind in ("file", "big", "empty", "sparse"):
            self._write_file(rel, None if kind == "file" else kind)
            if kind in ("sparse", "empty"):
                self.features[kind].append(self._tag(rel))
        elif kind == "dir":
            self._dir_with_children(rel, depth)
        elif kind.startswith("symlink"):
            self._symlink(rel, kind.partition("_")[2] or None)
        elif kind in ("fifo", "chardev"):
            self._special(rel, kind)

    # -- operations --------------------------------------------------------
    def _new_entry(self, kind: str | None = None):
        for _ in range(10):
            rel = self._new_rel()
            if rel and self._free(rel) and self._ensure_dirs(rel):
                self._create(rel, kind)
                return

    def _shadow(self):
        rel = self._pick("flpc")
        if rel and self._ensure_dirs(rel):
            self._create(rel, self.rng.choice(("file", "file", "symlink")))
            self.features["shadowed"].append(self._tag(rel))

    def _replace(self, want_dir: bool):
        rel = self._pick("d" if want_dir else "flpc", prefer_content=want_dir)
        if rel is None and want_dir:
            rel = self._pick("d")
        if rel and self._ensure_dirs(rel):
            if want_dir:
                self._write_file(rel)
                self.features["dir_replaced_by_file"].append(self._tag(rel))
            else:
                self._dir_with_children(rel)
                self.features["file_replaced_by_dir"].append(self._tag(rel))

    def _whiteout(self, fmt: str, existing: bool = True):
        if existing:
            rel = self._pick("dflpc")
        else:
            parent = self._pick("d", exclude_root=False) or ""
            rel = rel_join(parent, f"gone{self._uniq}")
            self._uniq += 1
            if rel in self.model or not self._free(rel):
                return
        if not rel or not self._ensure_dirs(rel):
            return
        name = _base(rel)
        if fmt == "whfile" and len(os.fsencode(WH_PREFIX + name)) > 255:
            fmt = "chardev"
        if fmt == "chardev":
            os.mknod(self._p(rel), stat.S_IFCHR | 0o600, os.makedev(0, 0))
        else:
            marker = self._p(_parent(rel)) / (WH_PREFIX + name)
            marker.write_bytes(b"")
            os.chmod(marker, self.rng.choice((0o644, 0o600, 0o000)))
        self.lp[rel] = "w"
        what = self.model.get(rel, "nothing")
        self.features[f"whiteout_{fmt}" + ("" if existing else "_of_nothing")].append(
            f"{self._tag(rel)} (hides {what})")
        self._model_remove(rel)

    def _opaque(self, fmt: str, require_content: bool = True):
        rel = self._pick("d", prefer_content=require_content)
        if rel is None:
            rel = self._new_rel()
            if rel is None or not self._free(rel):
                return
        if not self._ensure_dirs(rel):
            return
        self._mkdir(rel, self.rng.choice(_DIR_MODES))
        p = self._p(rel)
        if fmt == "whfile":
            (p / OPQ_NAME).write_bytes(b"")
        else:
            os.setxattr(p, OPAQUE_XATTRS[fmt], b"y")
        hidden = sum(1 for k in self.model if k.startswith(rel + "/"))
        self._model_set(rel, "d")
        self._model_remove_below(rel)
        self.features[f"opaque_{fmt}"].append(f"{self._tag(rel)} (hides {hidden} below)")
        for _ in range(self.rng.randint(0, 3)):
            self._create(rel_join(rel, self._name()), None, depth=2)
        if self.rng.random() < 0.3:  # a whiteout inside an opaque dir hides nothing
            child = rel_join(rel, f"gone{self._uniq}")
            self._uniq += 1
            os.mknod(self._p(child), stat.S_IFCHR | 0o600, os.makedev(0, 0))
            self.lp[child] = "w"


def _set_times(layer: Path, salt: str):
    """Give every entry of a layer a seeded mtime/atime (with odd nanoseconds),
    children before their directory, so a seed reproduces the layer exactly."""
    for dirpath, dirnames, filenames in os.walk(layer, topdown=False):
        for name in filenames + dirnames + ["."]:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, layer)
            t = 1_500_000_000_000_000_000 + zlib.crc32(os.fsencode(f"{salt}/{rel}")) * 97_003
            os.utime(p, ns=(t, t), follow_symlinks=False)


REQUIRED_FEATURES = (
    "whiteout_chardev", "whiteout_whfile", "opaque_trusted", "opaque_user", "opaque_fuseoverlayfs",
    "opaque_whfile", "dir_replaced_by_file", "file_replaced_by_dir", "hardlink", "fifo", "sparse",
    "big_file", "empty", "symlink_rel", "symlink_abs", "symlink_dangling", "shadowed",
)


def missing_features(stack: Stack) -> list[str]:
    """The REQUIRED_FEATURES a stack lacks (a self-check of the generator)."""
    return [f for f in REQUIRED_FEATURES if not stack.features.get(f)]


# -- small helpers for hand-written scenarios ------------------------------

def make_layers(root: Path, count: int, prefix: str = "l") -> list[Path]:
    """count empty layer dirs under root, returned top first (l0 is the top)."""
    layers = []
    for i in range(count):
        p = Path(root) / f"{prefix}{i}"
        p.mkdir(parents=True)
        layers.append(p)
    return layers


def whiteout(layer: Path, rel: str, fmt: str = "chardev"):
    p = Path(layer) / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "chardev":
        os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(0, 0))
    else:
        (p.parent / (WH_PREFIX + p.name)).write_bytes(b"")


def make_opaque(layer: Path, rel: str, fmt: str = "trusted"):
    p = Path(layer) / rel
    p.mkdir(parents=True, exist_ok=True)
    if fmt == "whfile":
        (p / OPQ_NAME).write_bytes(b"")
    else:
        os.setxattr(p, OPAQUE_XATTRS[fmt], b"y")


def write(layer: Path, rel: str, data: bytes | str = b"", mode: int | None = None) -> Path:
    p = Path(layer) / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        os.chmod(p, mode)
    return p
