"""Strata fsd: a FUSE overlay daemon, drop-in for fuse-overlayfs.

`LEVELS` is the one table of fsd's modules: a module imports only from modules
of lower levels (enforced by tests/fsd/test_levels.py).  Where to look for a
mechanism: the module named in the table.
"""

LEVELS = {
    # 0: mount options as frozen params; the one OSError -> FUSEError boundary;
    #    the watchdog of requests in flight; the daemon's start (what trio's
    #    import may skip)
    "params": 0, "errors": 0, "watchdog": 0, "startup": 0,
    # 1: one layer directory as a dirfd; every real-fs call, relative, O_NOFOLLOW
    "layer": 1,
    # 2: every on-disk format (markers, private xattrs, work-area layout) and
    #    the probe of the upper; usage limits of the upper
    "ondisk": 2, "quota": 2,
    # 3: owners as shown and as stored; nodes and the inode table: every
    #    numbering rule, lookup counts, forget; the write gate that freezes the
    #    upper; lazy layers: a file's content fetched before it is opened
    "idmap": 3, "inode": 3, "freeze": 3, "lazy": 3,
    # 4: the work area: scratch names, hard-link index, directory-move journal
    "workarea": 4,
    # 5: Overlay, the per-mount object every mechanism takes (the kernel's ovl_fs)
    "overlay": 5,
    # 6: merged directory contents: lower indexes, upper listings, the merge
    "dircache": 6,
    # 7: lookup of one name through the stack
    "namei": 7,
    # 8: copy-up, built in the work area and renamed into place
    "copy_up": 8,
    # 9: the operations: attributes and xattrs; name changes; open files
    "attr": 9, "dir": 9, "file": 9,
    # 10: listings of merged directories, by directory (no handles)
    "readdir": 10,
    # 11: what happens after a crash: the work area put right at mount
    "recovery": 11,
    # 12: the pyfuse3 Operations, thin; the only caller of pyfuse3, the only lookup counter
    "ops": 12,
    # 13: the mount's life: build, recover, mount, serve, signals, daemonize
    "mount": 13,
    # 14: the fuse-overlayfs command line
    "cli": 14, "__main__": 15,
}
