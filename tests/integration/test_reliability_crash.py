"""fsd killed (SIGKILL) at many seeded points of a mixed workload, and what a
process sees on a mount whose daemon died.

Also: the daemon killed right before each of the calls by which one operation
changes the upper (strace fault injection), one kill point per call.

Crash points: a worker process runs a seeded plan of operations on the mount -
appends that copy up big and small lower files, pwrite, O_TRUNC writes, creates
(also over whiteouts), unlink, renames of files and of merged directories,
mkdir over whiteouts, rmdir of emptied lower directories, hard links,
symlinks, chmod - and sends SIGKILL to the daemon at a seeded moment: after a
delay into an operation, as soon as a copy-up is seen in the work area, or
between two operations. The dead mount is detached (fusermount3 -uz) and fsd
mounted again on the same upper. Then:

- WORKDIR/fsd/tmp is empty (nothing half-built is kept),
- the operation cut short left its paths in the old state, the new state, or a
  state a process can see between its syscalls (a file created but not yet
  written); never a partial copy (support/faults.py: CrashModel),
- every other path is what the completed operations made it,
- at the end of each epoch (a fresh upper every few crash points), fsd's view
  equals the kernel overlay's view of the same lowers with fsd's upper on top.

The stack is kernel-format (converted by support/convert.py) so that the
kernel can mount it. Rerun one seed: STRATA_CRASH_SEED=N.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from support import layergen, mounts
from support.convert import convert_layers
from support.faults import (DEAD, MUTATING, NAMESPACE, CrashModel, Strace, daemon_pids, detach_dead, drop_caches,
                            entries_below, kill_before, kill_points, names_of, observe, probe, run_op)
from support.snapshot import compare, snapshot
from support.upper_ops import write_big

TESTS = Path(__file__).resolve().parents[1]
MiB = 1 << 20
SEED = int(os.environ.get("STRATA_CRASH_SEED", "7001"))
ROUNDS_PER_EPOCH = 10
PLAN = 8
MAX_PROBLEMS = 5


class _Resync(Exception):
    """A problem was recorded: take the model from the mount and go on."""


@pytest.fixture(scope="module")
def crash_stack(tmp_path_factory) -> list[Path]:
    """A seeded stack in the kernel's marker forms, with a few big lower files
    (their copy-up takes long enough to be killed in the middle)."""
    root = tmp_path_factory.mktemp("crash-stack")
    stack = layergen.generate_stack(root / "gen", SEED, nlayers=3, size=0.5, big_files=1)
    layers = convert_layers(stack.layers, root / "k")
    bottom, top = layers[-1], layers[0]
    (bottom / "big").mkdir()
    for i in range(3):
        write_big(bottom / "big" / f"b{i}", 12 * MiB + i * 4099, tag=b"crash%d" % i)
    (top / "big").mkdir()
    write_big(top / "big" / "t0", 6 * MiB + 7, tag=b"top")
    for i in range(6):
        (bottom / "big" / f"small{i}").write_bytes(os.urandom(1000 * i))
    return layers


def _work_tmp(work: Path) -> Path:
    return work / "fsd" / "tmp"


def _kill_spec(rng: random.Random, plan: list, model: CrashModel, work: Path) -> dict:
    how = rng.choices(("delay", "copy-up", "between"), (5, 3, 2))[0]
    at = rng.randrange(len(plan))
    if how == "copy-up":
        scratch = model.copy()
        windows = []
        for i, op in enumerate(plan):
            o = scratch.paths.get(op[1]) if len(op) > 1 else None
            if (op[0] in ("append", "trunc_write") and o is not None and o.lower_big) or \
                    (op[0] == "rename" and o is not None and o.kind == "dir"):
                windows.append(i)
            scratch.apply(op)
        if windows:
            at = rng.choice(windows)
        else:
            how = "delay"
    return {"how": how, "at": at, "delay": rng.choice((0.0, 0.0005, 0.002, 0.01, 0.03)) if how != "copy-up"
            else rng.choice((0.0, 0.0, 0.001, 0.005)), "tmpdir": str(_work_tmp(work))}


def _mount_error(e: AssertionError) -> str:
    """The fsd error line in a failed mount_fsd's message."""
    return next((line for line in str(e).splitlines() if line.startswith("fsd: ")), str(e)[-300:])


def _show(op) -> str:
    return "(" + ", ".join(repr(x) if not isinstance(x, int) or x < 1000 else str(x) for x in op) + ")"


class CrashRun:
    def __init__(self, tmp_path: Path, layers: list[Path], mount_fsd, mount_kernel_overlay, seed: int):
        self.tmp = tmp_path
        self.layers = layers
        self.mount_fsd = mount_fsd
        self.mount_kernel = mount_kernel_overlay
        self.rng = random.Random(seed)
        self.seed = seed
        self.reasons: Counter = Counter()
        self.cut: Counter = Counter()  # kind of the operation cut short -> count
        self.states: Counter = Counter()
        self.history: list[str] = []
        self.oplog: list[str] = []  # this epoch's operations and their results
        self.problems: list[str] = []
        self.initial_links: list[list[str]] = []

    def fail(self, what: str, paths=(), resync: bool = True):
        """Record a problem (the round goes on from what the mount shows now);
        the test fails at the end with every problem met."""
        paths = {p for p in paths if isinstance(p, str)}  # an op's arguments: paths, modes, sizes
        for group in self.initial_links:  # hard links of the epoch's start
            if paths.intersection(group):
                paths |= set(group)
        names = {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 2)}
        related = [line for line in self.oplog if any(repr(n)[1:-1] in line for n in names)]
        log = self.tmp / f"oplog-{len(self.problems)}.txt"
        log.write_text("\n".join(self.oplog) + "\n")
        self.problems.append(f"seed {self.seed}: {what}\n" +
                             "".join(f"  (hard links at the epoch's start: {g})\n" for g in self.initial_links
                                     if paths.intersection(g)) +
                             "last rounds:\n" + "\n".join(self.history[-4:]) +
                             "\noperations of this epoch on those paths and their parents:\n" + "\n".join(related[-40:]) +
                             f"\n(all operations of the epoch: {log})")
        if len(self.problems) >= MAX_PROBLEMS:
            self.report()
        if resync:
            raise _Resync()

    def report(self):
        if self.problems:
            pytest.fail(f"{len(self.problems)} problem(s):\n\n" + "\n\n".join(self.problems), pytrace=False)

    def epoch(self, e: int, rounds: int):
        upper, work = self.tmp / f"e{e}-upper", self.tmp / f"e{e}-work"
        upper.mkdir()
        work.mkdir()
        m = self.live = self.mount_fsd(self.layers, upper, work)
        model = CrashModel.read(m.mnt, self.seed * 1000 + e)
        self.oplog = []
        self.initial_links = model.groups()
        dirty: set[str] = set()  # every path the epoch's operations touched
        for r in range(rounds):
            fresh: set[str] = set()
            try:
                m, model = self.round(f"epoch {e} round {r}", m, model, upper, work, fresh)
            except _Resync:
                m = self.live
                model = CrashModel.read(m.mnt, self.seed * 1000 + e + 100 * r)
                dirty.clear()
            dirty |= fresh
        try:
            self.check_model(f"end of epoch {e}", m, model, dirty)
            self.compare_with_kernel(m, upper, f"epoch {e}")
        except _Resync:
            pass
        m.unmount()

    def round(self, where: str, m, model: CrashModel, upper: Path, work: Path, dirty: set[str]):
        """One crash point; dirty gets the paths it touched, which are checked."""
        plan = model.plan(PLAN)
        kill = _kill_spec(self.rng, plan, model, work)
        spec = self.tmp / "spec.json"
        spec.write_text(json.dumps({"root": str(m.mnt), "plan": plan, "kill": kill, "pids": daemon_pids(m)}))
        worker = subprocess.Popen([sys.executable, "-m", "support.faults", "crash-worker", str(spec)], cwd=TESTS,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = worker.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, err = worker.communicate()
            self.fail(f"{where}: the worker hung (the daemon was to be killed at {kill}); output so far:\n{out}",
                      resync=False)
            self.report()
        assert worker.returncode == 0, f"{where}: worker failed: {err}"
        lines = [json.loads(line) for line in out.splitlines()]
        reason = lines[-1]["kill"]
        self.reasons[reason] += 1
        detach_dead(m)

        cut = None
        unexpected = False
        for i, res in lines[:-1]:
            op = plan[i]
            self.oplog.append(f"  {where} #{i} {_show(op)} -> {res}")
            if res == "ok":
                dirty |= model.touched(op)
                model.apply(op)
            elif res in DEAD:
                cut = op
                break
            else:
                self.fail(f"{where}: {_show(op)} failed with {res} before the kill (the model expected success)",
                          op[1:3], resync=False)
                unexpected = True
                break
        self.history.append(f"{where}: ran {len(lines) - 1} of {len(plan)} ops; killed {reason}; "
                            f"cut short: {_show(cut) if cut else 'none'}")

        try:
            m = self.live = self.mount_fsd(self.layers, upper, work)
        except AssertionError as e:
            self.fail(f"{where}: fsd does not mount again after the crash: {_mount_error(e)}", resync=False)
            self.report()
        left = entries_below(_work_tmp(work))
        if left:
            self.fail(f"{where}: {_work_tmp(work)} not empty after the remount: {left[:10]}")
        if unexpected:
            raise _Resync()
        if cut is not None:
            self.cut[cut[0]] += 1
            touched = model.touched(cut)
            cands = model.candidates(cut)
            for _, c in cands:
                touched |= c.touched(cut) if cut[0] != "rename" else set()
            seen = {p: observe(m.mnt, p) for p in sorted(touched)}
            for name, c in cands:
                if all(c.expect(p) == seen[p] for p in touched):
                    model = c
                    self.states[name] += 1
                    break
            else:
                lines_ = [f"  {p!r}: got {seen[p]!r}; " + "; ".join(f"{n} {c.expect(p)!r}" for n, c in cands)
                          for p in sorted(touched) if any(c.expect(p) != seen[p] for _, c in cands)]
                self.fail(f"{where}: after SIGKILL during {_show(cut)} ({reason}), neither the old nor the new "
                          f"state is visible:\n" + "\n".join(lines_[:20]), touched)
            dirty |= touched
        self.check_model(where, m, model, dirty)
        return m, model

    def check_model(self, where: str, m, model: CrashModel, dirty: set[str]):
        got = names_of(m.mnt)
        want = {p: o.kind for p, o in model.paths.items()}
        if got != want:
            missing = sorted(set(want) - set(got))
            extra = sorted(set(got) - set(want))
            kinds = sorted(p for p in set(got) & set(want) if got[p] != want[p])
            self.fail(f"{where}: the merged tree is not what the operations made: missing {missing[:10]}, "
                      f"unexpected {extra[:10]}, other type {[(p, want[p], got[p]) for p in kinds[:10]]}",
                      missing[:5] + extra[:5] + kinds[:5])
        bad = [(p, model.expect(p), observe(m.mnt, p)) for p in sorted(dirty)]
        bad = [b for b in bad if b[1] != b[2]]
        if bad:
            self.fail(f"{where}: paths not in the state the operations left:\n" +
                      "\n".join(f"  {p!r}: want {w!r} got {g!r}" for p, w, g in bad[:15]), [b[0] for b in bad])
        for group in model.groups():
            if dirty.intersection(group):
                inos = {p: os.lstat(m.mnt / p).st_ino for p in group}
                if len(set(inos.values())) != 1:
                    self.fail(f"{where}: hard links no longer one file: {inos}", group)

    def compare_with_kernel(self, m, upper: Path, what: str):
        k = self.mount_kernel([upper, *self.layers])
        try:
            diffs = compare(snapshot(k), snapshot(m.mnt), "kernel", "fsd")
        finally:
            self.mount_kernel.umount(k)
        if diffs:
            self.fail(f"{what}: fsd's view differs from the kernel overlay's on the same upper:\n" +
                      "\n".join(diffs[:30]), [p for d in diffs for p in re.findall(r"'([^']+)'", d)])


def _run(kills: int, tmp_path, crash_stack, mount_fsd, mount_kernel_overlay, seed: int):
    run = CrashRun(tmp_path, crash_stack, mount_fsd, mount_kernel_overlay, seed)
    e = 0
    done = 0
    while done < kills:
        n = min(ROUNDS_PER_EPOCH, kills - done)
        run.epoch(e, n)
        done += n
        e += 1
    run.report()
    print(f"kills: {dict(run.reasons)}; cut short: {dict(run.cut)}; states after a cut: {dict(run.states)}")
    assert sum(run.reasons.values()) == kills
    assert run.reasons["copy-up in progress"] >= max(2, kills // 20), \
        f"too few kills landed in a copy-up: {dict(run.reasons)}"
    assert sum(run.cut.values()) >= kills // 2, f"too few operations were cut short: {dict(run.cut)}"


@pytest.mark.fuse_deadline(150)
def test_sigkill_at_50_points_of_a_mixed_workload(tmp_path, crash_stack, mount_fsd, mount_kernel_overlay):
    _run(50, tmp_path, crash_stack, mount_fsd, mount_kernel_overlay, SEED)


@pytest.mark.long
@pytest.mark.fuse_deadline(1200)
def test_sigkill_at_400_points_of_a_mixed_workload(tmp_path, crash_stack, mount_fsd, mount_kernel_overlay):
    _run(400, tmp_path, crash_stack, mount_fsd, mount_kernel_overlay, SEED + 1)


# -- a dead daemon ------------------------------------------------------------------------------

_HOLDER = r"""
import os, sys, time
path, mode = sys.argv[1], sys.argv[2]
if mode == "cwd":
    os.chdir(path)
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        os.listdir("."); print("ok")
    except OSError as e:
        import errno; print(errno.errorcode[e.errno])
elif mode == "fd":
    fd = os.open(path, os.O_RDWR)
    os.read(fd, 1)
    print("ready", flush=True)
    sys.stdin.readline()
    out = []
    for call in (lambda: os.pread(fd, 10, 0), lambda: os.pwrite(fd, b"x", 0), lambda: os.fstat(fd),
                 lambda: os.fsync(fd)):
        try:
            call(); out.append("ok")
        except OSError as e:
            import errno; out.append(errno.errorcode[e.errno])
    try:
        os.close(fd); out.append("ok")
    except OSError as e:
        import errno; out.append(errno.errorcode[e.errno])
    print(" ".join(out))
"""


def _holder(path: Path, mode: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), mode], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    return p


def _finish(p: subprocess.Popen, timeout: float = 10) -> str:
    try:
        out, err = p.communicate("go\n", timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        return "HUNG"
    return out.strip() or err.strip()[-200:]


@pytest.mark.fuse_deadline(60)
def test_a_dead_daemon_gives_enotconn_not_a_hang(tmp_path, mount_fsd):
    lower, upper, work = tmp_path / "lower", tmp_path / "upper", tmp_path / "work"
    for d in (lower, upper, work):
        d.mkdir()
    layergen.write(lower, "dir/file", "lower data")
    layergen.write(lower, "dir/other", "other")
    m = mount_fsd([lower], upper, work)
    in_cwd = _holder(m.mnt / "dir", "cwd")
    with_fd = _holder(m.mnt / "dir/file", "fd")
    pids = daemon_pids(m)

    # a request in flight when the daemon dies: stop the daemon, start a lookup, kill
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    pending = subprocess.Popen([sys.executable, "-c", "import os, sys, errno\ntry:\n    os.stat(sys.argv[1]); print('ok')\n"
                                "except OSError as e:\n    print(errno.errorcode[e.errno])", str(m.mnt / "never-seen")],
                               stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    assert pending.poll() is None, "the lookup did not wait for the stopped daemon"
    for p in pids:
        os.kill(p, signal.SIGKILL)
    assert not mounts.wait_exited(pids, 10), "the daemon survived SIGKILL"
    try:
        out, _ = pending.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        pending.kill()
        pending.wait()
        pytest.fail("a lookup pending when the daemon died hangs")
    assert out.strip() in ("ECONNABORTED", "ENOTCONN"), f"a pending lookup ended with {out.strip()}"

    # still mounted, nobody serving it
    assert mounts.is_mounted(m.mnt), "the dead mount vanished by itself"
    got = {f"{op} {path or '.'}": probe(m.mnt / path, op) for op, path in (
        ("stat", "dir/file"), ("stat", "new-name"), ("listdir", "dir"), ("read", "dir/other"),
        ("write", "dir/file"), ("create", "dir/new"), ("mkdir", "d2"), ("statvfs", ""))}
    got["kept cwd: listdir ."] = _finish(in_cwd)
    got["kept fd: pread pwrite fstat fsync close"] = _finish(with_fd)
    df = subprocess.run(["timeout", "10", "df", "-a"], capture_output=True, text=True)
    got["df -a (exit)"] = str(df.returncode)
    want = {k: {"ENOTCONN"} for k in got}
    # what the kernel still has cached may be served (pread from the page cache, fstat from
    # cached attributes, a close whose FLUSH is not sent); nothing may reach the disk
    fd_ok = [("ok", "ENOTCONN"), ("ENOTCONN",), ("ok", "ENOTCONN"), ("ENOTCONN",), ("ok", "ENOTCONN")]
    want["kept fd: pread pwrite fstat fsync close"] = {
        " ".join(c) for c in itertools.product(*fd_ok)}
    want["df -a (exit)"] = {"1"}  # df reports the dead mount and goes on
    bad = {k: (v, sorted(want[k])[:2]) for k, v in got.items() if v not in want[k]}
    assert not bad, "on a dead mount (got, want): " + repr(bad)
    assert str(m.mnt) in df.stderr, df.stderr

    # detach and mount again: the data is there
    detach_dead(m)
    assert probe(m.mnt / "dir", "stat") == "ENOENT"
    m2 = mount_fsd([lower], upper, work)
    assert (m2.mnt / "dir/file").read_text() == "lower data"
    assert entries_below(_work_tmp(work)) == []


# -- kill points at the daemon's own syscalls ------------------------------------------------------
# A clean run of one operation, traced, lists the syscalls by which fsd changes the upper and the
# work area; then, for each, the same operation from the same state with the daemon killed right
# before that call (strace -e inject=CALL:signal=SIGKILL -P PATH). After the remount the whole
# tree must be the one before the operation or the one after it (times aside), the work area
# empty, and the kernel overlay must read the upper as fsd shows it.

def _lower_links(root: Path) -> list[Path]:
    """a/x, b/y, c/z: one lower file with three names; d/ an empty lower dir."""
    (top,) = layergen.make_layers(root, 1)
    layergen.write(top, "a/x", os.urandom(100_000))
    for n in ("b/y", "c/z"):
        (top / n).parent.mkdir()
        os.link(top / "a/x", top / n)
    (top / "d").mkdir()
    layergen.write(top, "a/other", "other")
    return [top]


def _merged_tree(root: Path) -> list[Path]:
    """dir/ merged from two layers, with a whiteout, a subdir, and a file whose
    other name (other/y) is outside dir."""
    top, bottom = layergen.make_layers(root, 2)
    for i in range(4):
        layergen.write(bottom, f"dir/f{i}", f"file {i}" * 100)
    layergen.write(bottom, "dir/sub/g", "g")
    layergen.write(bottom, "dir/x", "linked")
    (bottom / "other").mkdir()
    os.link(bottom / "dir/x", bottom / "other/y")
    layergen.write(top, "dir/t", "top")
    layergen.whiteout(top, "dir/f3", "chardev")
    return [top, bottom]


def _lower_dir(root: Path) -> list[Path]:
    top, bottom = layergen.make_layers(root, 2)
    layergen.write(bottom, "d/a", "a")
    layergen.write(bottom, "d/b", "b")
    layergen.write(top, "d/c", "c")
    layergen.write(bottom, "f", "f" * 5000)
    layergen.write(top, "g", "g" * 7000)
    return [top, bottom]


# name: (layers, operations done first through the mount, the operation cut short, in the default run)
POINT_SCENARIOS = {
    "append to a lower file with three names": (_lower_links, [], ["append", "a/x", 100, "t"], True),
    "hard link to a lower file with three names": (_lower_links, [], ["link", "a/x", "d/new"], True),
    "rename of a merged dir with a hard link leaving it": (_merged_tree, [], ["rename", "dir", "moved"], True),
    "mkdir over a whiteout": (_lower_dir, [["unlink", "d/a"], ["unlink", "d/b"], ["unlink", "d/c"],
                                           ["rmdir", "d"]], ["mkdir", "d"], True),
    "rmdir of an emptied merged dir": (_lower_dir, [["unlink", "d/a"], ["unlink", "d/b"], ["unlink", "d/c"]],
                                       ["rmdir", "d"], False),
    "unlink of a lower file": (_lower_dir, [], ["unlink", "d/a"], False),
    "rename of a lower file over another": (_lower_dir, [], ["rename", "f", "g"], False),
    "rename of a lower file into a merged dir": (_lower_dir, [], ["rename", "f", "d/f"], False),
}


def _timeless(snap):
    out = dataclasses.replace(snap, entries=dict(snap.entries))
    for p, e in snap.entries.items():
        out.entries[p] = dataclasses.replace(e, mtime_ns=None)
    return out


def _op_in_child(root: Path, op: list) -> str:
    p = subprocess.run([sys.executable, "-m", "support.faults", "run-op", str(root), json.dumps(op)], cwd=TESTS,
                       capture_output=True, text=True, timeout=60)
    return p.stdout.strip() or p.stderr.strip()[-300:]


class Points:
    def __init__(self, tmp_path: Path, mount_fsd, mount_kernel_overlay, name: str):
        build, self.pre, self.op, _ = POINT_SCENARIOS[name]
        self.tmp = tmp_path / re.sub(r"\W+", "-", name)
        self.lowers = build(self.tmp / "layers")
        self.mount_fsd = mount_fsd
        self.mount_kernel = mount_kernel_overlay
        self.name = name
        self._n = 0

    def fresh(self):
        """A new upper with the operations before the one cut short done, and the
        tree then; mounted again for the operation, so that the kernel has no
        dentry below the root cached when it starts.  Its path walk then looks
        up every name on its paths, in every run: fsd copies up a file with
        several names by the name it was last looked up by, and which dentries
        the kernel still has is no part of a run (other tests drop them at any
        time: drop_caches), so the kill points of the clean run, which name
        that path, would otherwise not be those of every run."""
        self._n += 1
        upper, work = self.tmp / f"upper{self._n}", self.tmp / f"work{self._n}"
        upper.mkdir()
        work.mkdir()
        m = self.mount_fsd(self.lowers, upper, work)
        for op in self.pre:
            run_op(str(m.mnt), op)
        before = _timeless(snapshot(m.mnt))
        m.unmount()
        return self.mount_fsd(self.lowers, upper, work), upper, work, before

    def clean_run(self):
        m, upper, work, self.old = self.fresh()
        trace = Strace(daemon_pids(m)[0], ",".join(MUTATING), self.tmp / "clean.trace", options=())
        res = _op_in_child(m.mnt, self.op)
        trace.stop()
        assert res == "ok", f"{self.name}: {self.op} failed without a crash: {res}"
        m.unmount()
        m = self.mount_fsd(self.lowers, upper, work)
        self.new = _timeless(snapshot(m.mnt))
        m.unmount()
        assert compare(self.old, self.new), f"{self.name}: the operation changed nothing"
        return trace.calls()

    def kill_at(self, point, before_op=lambda: None) -> list[str]:
        """Problems after a kill at point; [] when there are none.  before_op:
        what else happens on the machine right before the operation."""
        m, upper, work, _ = self.fresh()
        before_op()
        trace = kill_before(daemon_pids(m)[0], point, self.tmp / f"kill{self._n}.trace")
        res = _op_in_child(m.mnt, self.op)
        trace.stop()
        if not trace.killed():
            m.unmount()
            return [f"kill point {point} was not reached (the operation gave {res})"]
        detach_dead(m)
        problems = []
        if res not in DEAD:
            problems.append(f"the operation, cut short by the kill, returned {res}")
        try:
            m = self.mount_fsd(self.lowers, upper, work)
        except AssertionError as e:
            return problems + [f"fsd does not mount again: {_mount_error(e)}"]
        left = entries_below(_work_tmp(work))
        if left:
            problems.append(f"work area not empty after the remount: {left[:8]}")
        got = snapshot(m.mnt)
        now = _timeless(got)
        vs_old, vs_new = compare(self.old, now, "before", "after the crash"), compare(self.new, now, "done", "after the crash")
        if vs_old and vs_new:
            problems.append("neither the state before the operation nor the one after it:\n    " +
                            "\n    ".join(vs_old[:6]) + "\n    --- against the completed operation:\n    " +
                            "\n    ".join(vs_new[:6]))
        k = self.mount_kernel([upper, *self.lowers])
        try:
            kdiff = compare(snapshot(k), got, "kernel", "fsd")
        finally:
            self.mount_kernel.umount(k)
        if kdiff:
            problems.append("the kernel overlay reads the upper differently:\n    " + "\n    ".join(kdiff[:8]))
        m.unmount()
        return problems


def _spread(items: list, k: int | None) -> list:
    """k items spread evenly over items, first and last included (all if k is None)."""
    if k is None or len(items) <= k:
        return items
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def _kill_points(tmp_path, mount_fsd, mount_kernel_overlay, names, kinds, per_scenario=None):
    report = []
    total = 0
    for name in names:
        pts = Points(tmp_path, mount_fsd, mount_kernel_overlay, name)
        points = _spread(kill_points(pts.clean_run(), kinds), per_scenario)
        assert points, f"{name}: no kill point found in the trace"
        for point in points:
            total += 1
            for problem in pts.kill_at(point):
                report.append(f"{name} {pts.op}: SIGKILL before {point[0]}(... {point[1]!r} ...) "
                              f"#{point[2]}: {problem}")
    if report:
        pytest.fail(f"{len(report)} problem(s) at {total} kill points:\n" + "\n".join(report), pytrace=False)


@pytest.mark.fuse_deadline(150)
def test_sigkill_before_namespace_changes_of_an_operation(tmp_path, mount_fsd, mount_kernel_overlay):
    names = [n for n, s in POINT_SCENARIOS.items() if s[3]]
    _kill_points(tmp_path, mount_fsd, mount_kernel_overlay, names, NAMESPACE)


def test_kill_point_in_a_copy_up_is_reached_after_the_kernel_dropped_its_dentries(
        tmp_path, mount_fsd, mount_kernel_overlay):
    """Other tests on the machine drop the kernel's dentries at any time
    (drop_caches); fsd copies up a file with several names by the name it was
    last looked up by, so the kill run must make the lookups of the clean run
    whatever the kernel still has cached."""
    pts = Points(tmp_path, mount_fsd, mount_kernel_overlay, "append to a lower file with three names")
    # the rename that publishes the copied-up file under one of its names
    point = next(p for p in kill_points(pts.clean_run(), NAMESPACE)
                 if p[0] == "renameat2" and p[1] in ("a/x", "b/y", "c/z"))
    assert pts.kill_at(point, before_op=drop_caches) == []


@pytest.mark.long
@pytest.mark.fuse_deadline(900)
def test_sigkill_before_each_change_of_an_operation(tmp_path, mount_fsd, mount_kernel_overlay):
    _kill_points(tmp_path, mount_fsd, mount_kernel_overlay, list(POINT_SCENARIOS), MUTATING)
