"""Test support for real-mount tests of fsd.

layergen   seeded random layer stacks with every on-disk marker form
convert    copy a stack into the kernel overlay's marker forms
snapshot   record a mounted tree and compare two records
mounts     /proc/self/mountinfo, starting fsd, unmounting, daemon processes
dirent     opendir/readdir/telldir/seekdir through libc, for offset tests
fsck       the upper and work area checked against fsd's on-disk formats
fixtures   the objects behind tests/conftest.py's mount_fsd, mount_kernel_overlay,
           fsd_log and fuse_deadline fixtures

$STRATA_FSD (and $STRATA_FSD_FSTYPE) run the same tests against another
executable, e.g. a checkout of fsd or fuse-overlayfs behind a small wrapper.

Nothing here imports fsd: the tests drive fsd through its command line only,
so the same scenario can run on a plain dir, the kernel overlay and fsd.
"""
