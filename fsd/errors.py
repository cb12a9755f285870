"""The one error boundary between fsd's modules and the kernel.

Below `ops.py`, code raises `OSError` (from the real filesystem, or built with the
errno the kernel overlay would give).  `translate` turns it into
`pyfuse3.FUSEError(errno)`.  Anything else is a bug: it is logged with its
traceback and answered EIO, because a daemon that dies on one request leaves a
container with a hung mount.
"""

from __future__ import annotations

import errno
import functools
import logging
import os

import pyfuse3

log = logging.getLogger("fsd")


def fail(code: int, what: str | bytes = "") -> OSError:
    """An OSError with `code`, to raise where the kernel overlay returns -code."""
    return OSError(code, os.strerror(code), what)


def translate(handler):
    """Decorate an async Operations method so that only FUSEError leaves it."""
    name = handler.__name__

    @functools.wraps(handler)
    async def wrapper(*args):
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s%r", name, args[1:])
        try:
            return await handler(*args)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            if exc.errno is None:
                log.error("%s: OSError without errno", name, exc_info=True)
                raise pyfuse3.FUSEError(errno.EIO) from None
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception:
            log.error("%s%r failed", name, args[1:], exc_info=True)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper
