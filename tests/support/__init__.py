"""Test support for real-mount tests of fsd.

layergen   seeded random layer stacks with every on-disk marker form
convert    copy a stack into the kernel overlay's marker forms
snapshot   record a mounted tree and compare two records
mounts     /proc/self/mountinfo, starting fsd, unmounting, daemon processes
dirent     opendir/readdir/telldir/seekdir through libc, for offset tests

Nothing here imports fsd: the tests drive fsd through its command line only,
so the same scenario can run on a plain dir, the kernel overlay and fsd.
"""
