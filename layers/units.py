"""Sizes and ages as people read them, in podman's style; the one formatter
of each, for tables, progress, summaries and error messages alike.

- `size(n)`: decimal units of 1000 (B, kB, MB, GB, TB, PB) with three
  significant digits and no space, as podman and docker print sizes
  (go-units' `HumanSizeWithPrecision(n, 3)`): `0B`, `999B`, `1kB`, `1.1MB`,
  `52.4MB`.  Limits given in binary units (`size = "50M"` is 50 MiB, as in
  containers-storage) are shown the same way: one unit style everywhere.
- `ago(t)`: how long ago the time `t` was, with podman's steps (seconds up
  to a minute, minutes up to an hour, hours up to two days, then days,
  weeks, months, years) and a plural only for more than one.
"""

from __future__ import annotations

import time

_SIZE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
# (unit, its length in seconds, shown up to this many seconds)
_AGE_STEPS = (("second", 1, 60), ("minute", 60, 3600), ("hour", 3600, 48 * 3600),
              ("day", 86400, 14 * 86400), ("week", 7 * 86400, 60 * 86400),
              ("month", 30 * 86400, 730 * 86400), ("year", 365 * 86400, None))


def size(n: float) -> str:
    value, i = float(n), 0
    while i < len(_SIZE_UNITS) - 1 and abs(float(f"{value:.3g}")) >= 1000:
        value /= 1000
        i += 1
    return f"{value:.3g}{_SIZE_UNITS[i]}"


def ago(t: float, now: float | None = None) -> str:
    seconds = max(0.0, (time.time() if now is None else now) - t)
    if seconds < 1:
        return "less than a second ago"
    for unit, length, below in _AGE_STEPS:
        if below is None or seconds < below:
            count = int(seconds // length)
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    raise AssertionError("the last step has no bound")
