"""Storage drivers: one interface (`base.Driver`), three implementations.

`fuse` runs fsd as a mount program, `overlay` mounts the kernel's overlayfs,
`vfs` keeps a full copy per container.  The store facade picks one by name
(`store.DRIVERS`); drivers never import each other.
"""
