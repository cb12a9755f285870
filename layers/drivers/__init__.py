"""Storage drivers: one interface (`base.Driver`), four implementations.

`fuse` runs fsd as a mount program, `overlay` mounts the kernel's overlayfs,
`vfs` keeps a full copy per container, `btrfs` snapshots subvolumes (it
borrows `vfs.apply_layer`, the only import between drivers).  `storecore` picks one by name
(`store.DRIVERS`); drivers never import each other.
"""
