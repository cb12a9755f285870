"""scripts/bench: fsd against the kernel overlay and fuse-overlayfs (issues 9, 15).

Layers, each importing only those above it in this list:
  worker     the timed loops, run as their own process (imports nothing of ours)
  floorfs    the pyfuse3 floor, run as a FUSE daemon (imports nothing of ours)
  machine    is the machine quiet enough to judge a result
  trace      FUSE requests by operation, from the kernel's tracepoint
  profile    --profile: a daemon's CPU by component, sampled by py-spy
  mounts     mounting and always unmounting the implementations, rootful and
             rootless; mount and unmount timings; daemon CPU
  data       the cached test data (and the rootless user's copies)
  workloads  what is timed on each mount (mounts)
  podman     the podman section: each daemon as podman's mount_program (mounts)
  report     medians, ratios, why (requests, CPU per request), tables, JSON (workloads)
  cli        the command line and the run (all of them)

scripts/bench-lazy (issue 17) is a second command on the same package:
  shaper     a delaying, rate-capping, counting HTTP proxy (imports nothing of ours)
  lazyimage  the lazy benchmark's images' layer tars (data, podman)
  lazystore  a private layer store driven through the CLI (mounts)
  lazypodman podman pulling against podman on the additional layer store (lazystore)
  lazy       its command line and run (all of the above; machine, report's table)
"""
