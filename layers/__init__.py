"""Strata layers: the content-addressed layer store.

Levels (a module imports only from lower ones; tests/layers/test_store_levels.py
checks it):

0  units, progress,               sizes and ages for people; progress on a terminal;
   errors, digest, layout          kinds of failure, identity, the on-disk tree
1  fsutil, records, config,        atomic writes, locks, leases; records; storage.conf;
   fsprobe                         the filesystem under the store (mounts, xattrs, d_type)
   tarsplit                        what rebuilds a layer's exact tar from its dir
2  archive, recordstore,           layer tars in and out; record files; reading
   changelist, tarentries,         layer stacks and A/C/D lists; a dir as tar entries;
   ociwriter, bundle               writing OCI image layouts; runtime bundles
   source, drivers.base            what an import reads; the driver interface
   quota                           container limits and the per-user quota
3  layerstore, imagestore,         one kind of record each; siblings never import
   containerstore, volumes,        each other
   mounts, drivers.fuse/overlay/vfs
4  gc, check                       df and prune by reachability; check and repair
5  store                           the facade: lock, rules across records, mounting
6  cli                             `layers …`

The package never imports fsd: it runs it as a mount program.
"""
