"""The one error boundary between fsd's modules and the kernel.

Below `ops.py`, code raises `OSError` (from the real filesystem, or built with the
errno the kernel overlay would give).  `fuse_error` turns it into
`pyfuse3.FUSEError(errno)`.  Anything else is a bug: it is logged with its
traceback and answered EIO, because a daemon that dies on one request leaves a
container with a hung mount.
"""

from __future__ import annotations

import errno
import logging
import os

import pyfuse3

log = logging.getLogger("fsd")


def fail(code: int, what: str | bytes = "") -> OSError:
    """An OSError with `code`, to raise where the kernel overlay returns -code."""
    return OSError(code, os.strerror(code), what)


def fuse_error(name: str, args: tuple, exc: Exception) -> pyfuse3.FUSEError:
    """The FUSEError that answers handler `name` (called with args) which
    raised exc: an OSError's errno; a bug (anything else, or an OSError
    without errno) logged with its traceback and answered EIO.  Called from
    the except clause, so the traceback logged is exc's."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc
    if isinstance(exc, OSError):
        if exc.errno is not None:
            return pyfuse3.FUSEError(exc.errno)
        log.error("%s: OSError without errno", name, exc_info=True)
        return pyfuse3.FUSEError(errno.EIO)
    log.error("%s%r failed", name, args, exc_info=True)
    return pyfuse3.FUSEError(errno.EIO)
