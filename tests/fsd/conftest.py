"""Fixtures of fsd's in-process tests (see harness.py)."""

from harness import overlay  # noqa: F401  (fixture)
