"""A bounded fuzz run: random operation sequences on fsd and on the kernel
overlay, for a fixed time, one fresh seeded stack after another.

Each round: a random stack (tests/support/layergen.py, 2-5 layers), the
kernel overlay on its kernel-format copy and fsd on the original, each with its
own upper; the seeded generator of tests/support/upper_ops.py picks the
operations (kernel-safe: no rename of directories with lower parts, no copy-up
of lower hard links). Every result is compared as it happens; the whole trees
are compared every few operations, after the kernel was made to forget its
dentries (FORGETs, fresh LOOKUPs) and after a remount of fsd.

Default: about 12 seconds; the long variant runs 5 minutes. Seeds come from
STRATA_FUZZ_SEED (default 9000); a failure names the seed and the operation,
and `STRATA_FUZZ_SEED=<seed> pytest -k fuzz` reruns that sequence first.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from support import layergen
from support.convert import convert_layers
from support.faults import drop_caches
from support.snapshot import compare, invariant_problems, snapshot
from support.upper_ops import OpGenerator, dir_times_dropped, run_sequence, show_op, times_settled, walk

BASE_SEED = int(os.environ.get("STRATA_FUZZ_SEED", "9000"))
KERNEL_OPTS = ("redirect_dir=off", "index=off", "metacopy=off")
STRETCH = 20  # operations between two whole-tree comparisons


class Round:
    def __init__(self, tmp: Path, seed: int, mount_fsd, mount_kernel_overlay):
        rng = random.Random(seed)
        self.seed = seed
        self.tmp = tmp
        stack = layergen.generate_stack(tmp / "stack", seed, nlayers=rng.randint(2, 5),
                                        size=rng.choice((0.2, 0.3, 0.5)), big_files=0)
        self.lowers = stack.layers
        for d in ("kup", "kwork", "fup", "fwork"):
            (tmp / d).mkdir()
            os.utime(tmp / d, ns=(1_400_000_000 * 10**9,) * 2)
        self.t0 = time.time_ns() - 10**9
        self.k = mount_kernel_overlay(convert_layers(self.lowers, tmp / "k"), tmp / "kup", tmp / "kwork",
                                      KERNEL_OPTS)
        self.mount_fsd = mount_fsd
        self.fm = mount_fsd(self.lowers, tmp / "fup", tmp / "fwork")
        self.gen = OpGenerator(seed)
        self.log: list = []
        self.ops = 0

    def fail(self, what: str):
        recent = "\n".join(f"  #{i} {show_op(o)} -> {r['kernel'][0]}" for i, o, r in self.log[-10:])
        pytest.fail(f"fuzz seed {self.seed} (rerun: STRATA_FUZZ_SEED={self.seed}): {what}\n"
                    f"operations before:\n{recent}", pytrace=False)

    def stretch(self, count: int):
        soft: list = []
        bad = run_sequence(self.gen, {"kernel": self.k, "fsd": self.fm.mnt}, lambda: walk(self.k, self.tmp / "kup"),
                           count, self.log, soft)
        self.ops += count
        if bad:
            i, op, res = bad[0]
            self.fail(f"op {show_op(op)} differs\n  kernel: {res['kernel']!r}\n  fsd:    {res['fsd']!r}")

    def compare_trees(self, when: str):
        got = snapshot(self.fm.mnt)
        problems = invariant_problems(got)
        if problems:
            self.fail(f"{when}: fsd's tree is inconsistent:\n" + "\n".join(problems[:20]))
        diffs = compare(dir_times_dropped(times_settled(snapshot(self.k), self.t0)),
                        dir_times_dropped(times_settled(got, self.t0)), "kernel", "fsd")
        if diffs:
            self.fail(f"{when}: the trees differ:\n" + "\n".join(diffs[:30]))

    def remount(self):
        self.fm.unmount()
        self.fm = self.mount_fsd(self.lowers, self.tmp / "fup", self.tmp / "fwork")


def _fuzz(seconds: float, tmp_path, mount_fsd, mount_kernel_overlay):
    end = time.monotonic() + seconds
    seeds, ops = [], 0
    seed = BASE_SEED
    while time.monotonic() < end or not seeds:
        r = Round(tmp_path / f"seed{seed}", seed, mount_fsd, mount_kernel_overlay)
        rng = random.Random(seed ^ 0x5EED)
        for step in range(rng.randint(3, 6)):
            r.stretch(STRETCH)
            what = rng.choice(("compare", "forget", "remount"))
            if what == "forget":
                drop_caches()
            elif what == "remount":
                r.remount()
            r.compare_trees(f"after {r.ops} operations and a {what}")
            if time.monotonic() > end:
                break
        r.fm.unmount()
        mount_kernel_overlay.umount(r.k)
        seeds.append(seed)
        ops += r.ops
        seed += 1
    # (how many operations fit in the time depends on the machine: no assertion on it)
    print(f"fuzz: {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}), {ops} operations on each mount")


@pytest.mark.fuse_deadline(120)
def test_fuzz_against_the_kernel(tmp_path, mount_fsd, mount_kernel_overlay):
    _fuzz(12, tmp_path, mount_fsd, mount_kernel_overlay)


@pytest.mark.long
@pytest.mark.fuse_deadline(600)
def test_fuzz_against_the_kernel_long(tmp_path, mount_fsd, mount_kernel_overlay):
    _fuzz(300, tmp_path, mount_fsd, mount_kernel_overlay)
