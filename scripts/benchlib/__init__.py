"""scripts/bench: fsd against the kernel overlay and fuse-overlayfs (issue 9).

Layers, each importing only those above it in this list:
  worker     the timed loops, run as their own process (imports nothing of ours)
  mounts     mounting and always unmounting the three implementations
  data       the cached test data
  workloads  what is timed on each mount (mounts)
  report     medians, ratios, table, JSON (workloads)
  cli        the command line and the run (all of them)
"""
