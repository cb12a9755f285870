"""Fixtures of the layer-store unit tests (see storetools.py)."""

from storetools import store_env  # noqa: F401  (fixture)
