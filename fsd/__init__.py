"""Strata fsd: a FUSE overlay daemon, drop-in for fuse-overlayfs."""
