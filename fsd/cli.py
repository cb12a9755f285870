"""fsd's command line, that of fuse-overlayfs:
`fsd [-f] [-d] -o OPTS MOUNTPOINT` or `fsd SOURCE MOUNTPOINT -o OPTS`."""

from __future__ import annotations

import gc
import os
import sys

from .params import ParamError, parse_options
from .startup import close_start_cache, trimmed

USAGE = """usage: fsd [-f] [-d] -o lowerdir=TOP:...:BOTTOM[,upperdir=UPPER,workdir=WORK][,OPTS] MOUNTPOINT
       fsd SOURCE MOUNTPOINT -o OPTS      (as run by mount -t fuse.fsd)

Mounts the merged view of the lower directories (read-only without upperdir).
  -f           stay in the foreground
  -d           log every request (implies -f)
  -o OPTS      comma-separated mount options; \\: escapes a colon in a path
  --version    print the version
Options (-o):
  lowerdir=TOP:...:BOTTOM    read-only layers, leftmost on top
  upperdir=DIR, workdir=DIR  the writable layer and scratch space (same filesystem)
  volatile, fsync=0|1        fsync becomes a no-op (volatile, fsync=0)
  whiteout=chardev|file      whiteout format written to the upper (default: probed)
  metacopy=on|off            metadata changes copy up only metadata
  uidmapping=C:H:N[:...], gidmapping=   disk id C+i shows as host id H+i
  squash_to_root, squash_to_uid=N, squash_to_gid=N   every object shows that owner
  xattr_permissions=0|1|2    owner/mode kept in an xattr (1: security., 2: user.)
  quota_bytes=N[KMG], quota_inodes=N   limits of the upper (fsd): EDQUOT past them
  timeout=SECONDS            kernel entry/attribute cache time (default 3600)
  logfile=PATH, debug        where messages go once detached; log every request
  noatime, nodiratime        reads (of directories) change no atime in the upper;
                             atime, relatime, norelatime, strictatime, diratime undo them
  upper_passthrough          the kernel reads and writes open upper files itself
                             (rootful, Linux 6.9); a freeze then holds back no
                             write through a file already open
  ro, allow_other, static_nlink, noacl, and the generic nosuid nodev noexec ...
"""


def version() -> str:
    # imported here: importlib.metadata costs a mount's start ~20 ms for a line
    # only --version prints
    from importlib import metadata
    try:
        return metadata.version("strata")
    except metadata.PackageNotFoundError:
        return "unknown"


def parse_argv(argv: list[str]) -> tuple[list[str], list[str], bool, bool]:
    """(option strings, positional args, foreground, debug); raises ParamError."""
    options, positional = [], []
    foreground = debug = False
    args = iter(argv)
    for arg in args:
        if arg == "-o":
            try:
                options.append(next(args))
            except StopIteration:
                raise ParamError("option -o needs a value") from None
        elif arg.startswith("-o"):
            options.append(arg[2:])
        elif arg == "-f":
            foreground = True
        elif arg == "-d":
            foreground = debug = True
        elif arg in ("-s", "--"):
            continue
        elif arg.startswith("-") and arg != "-":
            raise ParamError(f"unknown argument '{arg}' (see fsd -h)")
        else:
            positional.append(arg)
    return options, positional, foreground, debug


def import_daemon():
    """fsd.mount.run, imported as a start wants it: trio trimmed (startup.py),
    and no cyclic garbage collection until the daemon serves (mount.py's
    _collect_less enables it): the imports would run ~50 collections, ~6 ms
    of their ~65 ms of CPU.  The imports end the start cache's use."""
    gc.disable()
    with trimmed():
        from .mount import run
    close_start_cache()
    return run


def _print_all(text: str) -> None:
    """Write text to stdout; a reader that stops early (`fsd --version | head
    -1`) ends it quietly, as SIGPIPE ends fuse-overlayfs, not with a traceback."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # nothing more reaches the reader; stdout's flush at exit must not fail again
        sys.stdout = open(os.devnull, "w")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        _print_all(USAGE)
        return 0
    if "--version" in argv or "-V" in argv:
        _print_all(f"fsd {version()}\nfuse-overlayfs: compatible (fsd {version()})\n")
        return 0
    try:
        options, positional, foreground, debug = parse_argv(argv)
        if len(positional) not in (1, 2):
            raise ParamError("expected one MOUNTPOINT (or SOURCE MOUNTPOINT); see fsd -h")
        if debug:
            options.append("debug")
        params = parse_options(options, positional[-1])
    except ParamError as exc:
        print(f"fsd: {exc}", file=sys.stderr)
        return 1
    for warning in params.warnings:
        print(f"fsd: warning: {warning}", file=sys.stderr)
    return import_daemon()(params, foreground)


if __name__ == "__main__":
    sys.exit(main())
