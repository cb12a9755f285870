"""Strata fsd: a FUSE overlay daemon, drop-in for fuse-overlayfs.

Modules by level; a module imports only from lower levels (tests/fsd/test_levels.py):

0  params, errors     mount options; the OSError -> FUSEError boundary
1  layer, idmap, quota    dirfd-relative access to one layer dir and the stack;
                      owners as shown/stored; usage limits of the upper
2  whiteout, inode    on-disk markers; nodes and the inode table
3  namei              lookup through the stack from per-directory indexes
4  copy_up            copy-up, built in the work area and renamed into place
5  attr, dir, file    attributes/xattrs; name operations; open files
6  readdir            directory handles over merged listings
7  ops                the pyfuse3 Operations, thin
8  mount              lifecycle: work area, probing, mount, serve, signals
9  cli                the fuse-overlayfs command line
"""
