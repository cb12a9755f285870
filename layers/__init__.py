"""Strata layers: the content-addressed layer store.

`LEVELS` below is the one table of the package's layering: a module imports
only modules of lower levels, so two modules of one level never import each
other (tests/layers/test_store_levels.py enforces it, and that every module
is in the table).  The package never imports fsd: it runs it as a mount
program.
"""

LEVELS = {
    # packages (their __init__ imports nothing), and what imports nothing
    "__init__": 0, "drivers": 0, "registry": 0,
    "units": 0, "fsprobe": 0, "registry.auth": 0, "registry.parallel": 0, "elfdeps": 0,
    "registry.choices": 0,
    # kinds of failure; progress on a terminal; how a new store picks its driver
    "errors": 1, "progress": 1, "driverchoice": 1,
    # identity (sha256 digests, ChainIDs); storage.conf; the registry's failures
    "digest": 2, "config": 2, "registry.errors": 2,
    # the on-disk tree and its formats; image references
    "layout": 3, "registry.reference": 3,
    # atomic writes, locks, leases; records; a layer stack read as overlayfs
    # does and A/C/D lists; a dir as layer-tar entries; registries.conf, credentials
    "fsutil": 4, "records": 4, "changelist": 4, "tarentries": 4,
    "registry.regconf": 4, "registry.credentials": 4,
    # record files; the mount table; garbage collection plans; container
    # limits; tar-splits; OCI layouts; runtime bundles; layer efficiency; the
    # driver interface; one registry endpoint; what is known of blobs
    "recordstore": 5, "mounts": 5, "gc": 5, "quota": 5, "tarsplit": 5, "ociwriter": 5,
    "bundle": 5, "analyze": 5, "drivers.base": 5, "registry.client": 5,
    "registry.blobinfo": 5,
    # one record store per kind (parked layers are one); layer tars in and
    # out; three drivers
    "layerstore": 6, "imagestore": 6, "containerstore": 6, "volumestore": 6,
    "parkedstore": 6, "archive": 6,
    "drivers.fuse": 6, "drivers.overlay": 6, "drivers.vfs": 6,
    # what an import reads; btrfs (borrows vfs's layer apply); seekable
    # (eStargz) layer blobs
    "source": 7, "drivers.btrfs": 7, "estargz": 7,
    # the lock, the records and the rules across them; an image in a registry;
    # uploads (plain or seekable); a lazy layer's placeholder tree and its
    # completion
    "storecore": 8, "registry.remote": 8, "registry.upload": 8, "lazylayer": 8,
    # the workflows on a StoreCore (als: images served to podman); a pull or
    # push session
    "containers": 9, "als": 9, "commit": 9, "check": 9, "registry.session": 9,
    # the fetcher of lazy layers
    "ingest": 10, "export": 10, "registry.command": 10, "fetcher": 10,
    # df and prune (prune keeps the images als serves)
    "cleanup": 10,
    "push": 11,
    # the facade: opening, queries, one entry point per command
    "store": 12,
    "cli": 13,
}
