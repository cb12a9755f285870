"""`scripts/bench`: fsd against the kernel overlay and fuse-overlayfs (issue 9).

    scripts/bench [--reps N] [--only W...] [--small] [--json FILE] [--timeout S]

Repetition by repetition, each workload group runs on a fresh mount of each
implementation in turn (the order rotates every repetition), on the same
cached data (data.py) with a fresh upper and workdir. It prints a markdown
table of medians and ratios on stdout (progress goes to stderr) and, with
--json, the same with every single run.

Exit status: 0 all ran; 3 some step failed (ERR in the table, the reasons
listed below it; timings never fail anything); 2 bad usage or an
environment it cannot run in (not root, no fsd); 130 interrupted, after
unmounting everything and printing what was measured so far.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

from . import data as datamod
from .mounts import Implementation, MountError, cleanup_all, interrupt_on_term, unmount_leftovers
from .report import FSD, FUSE_OVERLAYFS, IMPORT_IMPLS, KERNEL, Results, document, render_table, summarize
from .workloads import GROUPS, WORKLOAD_GROUP, Context, WorkloadError

REPO = Path(__file__).resolve().parents[2]


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Time fsd against the kernel overlay and fuse-overlayfs on the same data "
                    "(issue 9). Needs root. Test data is built once under .cache/bench/.",
        epilog="workloads: " + ", ".join(f"{w.id} ({w.title})" for g in GROUPS.values() for w in g.workloads))
    ap.add_argument("--reps", type=int, default=3, metavar="N", help="repetitions (default 3)")
    ap.add_argument("--only", nargs="+", metavar="W", help="run only these workloads (w1 also times w1w, "
                    "w3 also w3r: they share a mount)")
    ap.add_argument("--small", action="store_true", help="tiny data set (a smoke test, not a benchmark)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--timeout", type=float, metavar="S",
                    help="a step still running after S seconds fails (default 900, 120 with --small)")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    if args.only:
        unknown = [w for w in args.only if w not in WORKLOAD_GROUP]
        if unknown:
            ap.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOAD_GROUP)}")
    if args.timeout is None:
        args.timeout = 120.0 if args.small else 900.0
    return args


def _first_line(argv) -> str | None:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    for line in lines:
        if "version" in line and "fuse-overlayfs" in line or line.startswith("fio-"):
            return line.strip()
    return lines[0].strip() if lines else None


def _kernel_overlay_missing() -> str | None:
    def has():
        with open("/proc/filesystems") as f:
            return any(line.split()[-1] == "overlay" for line in f if line.strip())
    if not has():
        subprocess.run(["modprobe", "overlay"], capture_output=True)
        if not has():
            return "the kernel has no overlay filesystem"
    return None


def find_implementations() -> tuple[dict[str, Implementation], dict[str, str], dict[str, str]]:
    """(available implementations, skipped ones with the reason, versions)."""
    impls, skipped, versions = {}, {}, {}
    why = _kernel_overlay_missing()
    if why:
        skipped[KERNEL] = why
    else:
        impls[KERNEL] = Implementation(KERNEL, None)
        versions[KERNEL] = platform.release()
    fo = shutil.which("fuse-overlayfs")
    if fo:
        impls[FUSE_OVERLAYFS] = Implementation(FUSE_OVERLAYFS, fo)
        versions[FUSE_OVERLAYFS] = _first_line([fo, "--version"]) or "?"
    else:
        skipped[FUSE_OVERLAYFS] = "not installed (apt-get install fuse-overlayfs)"
    impls[FSD] = Implementation(FSD, str(REPO / ".venv" / "bin" / "fsd"))
    versions[FSD] = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                                   capture_output=True, text=True).stdout.strip() or "?"
    return impls, skipped, versions


def _clean_old_runs(scratch_root: Path) -> None:
    for d in scratch_root.glob("run-*"):
        pid = d.name.partition("-")[2]
        if pid.isdigit() and os.path.exists(f"/proc/{pid}"):
            continue  # a run still going
        left = unmount_leftovers(d)
        if left:
            say(f"bench: unmounted {len(left)} mount(s) an interrupted run left in {d}")
        shutil.rmtree(d, ignore_errors=True)


def _rotate(items: list, k: int) -> list:
    k %= len(items)
    return items[k:] + items[:k]


def _write_json(path: str, doc: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


class Bench:
    def __init__(self, args, impls, fio):
        self.args = args
        self.impls = impls
        self.fio = fio
        self.results = Results()
        self.problems: list[str] = []
        cache = REPO / ".cache" / "bench"
        self.cache = cache
        self.run_dir = cache / "scratch" / f"run-{os.getpid()}"
        self.data: dict[str, Path] = {}

    def groups(self) -> list[str]:
        wanted = {WORKLOAD_GROUP[w] for w in self.args.only} if self.args.only else set(GROUPS)
        return [g for g in GROUPS if g in wanted]

    def prepare(self) -> None:
        size = "small" if self.args.small else "full"
        datamod.clean_partial(self.cache)
        for name in datamod.COMPONENTS:
            if any(name in GROUPS[g].data for g in self.groups()):
                self.data[name] = datamod.ensure(self.cache, size, name, say)
        (self.cache / "scratch").mkdir(parents=True, exist_ok=True)
        _clean_old_runs(self.cache / "scratch")
        self.run_dir.mkdir()

    def run(self) -> None:
        for rep in range(self.args.reps):
            for gname in self.groups():
                group = GROUPS[gname]
                names = list(self.impls) if group.lowers else list(IMPORT_IMPLS)
                for impl in _rotate(names, rep):
                    self.run_one(rep, gname, impl)

    def _lowers(self, group) -> tuple[list[str], str | None]:
        if group.lowers == "stack":
            layers = self.data["stack"] / "layers"
            # relative to the layers' dir: 64 absolute paths could outgrow the
            # kernel's one-page limit on mount options
            return sorted((p.name for p in layers.iterdir()), reverse=True), str(layers)
        return [str(self.data["lower"] / "tree")], None

    def run_one(self, rep: int, gname: str, impl: str) -> None:
        group = GROUPS[gname]
        ctx_dir = self.run_dir / "ctx"
        shutil.rmtree(ctx_dir, ignore_errors=True)
        ctx_dir.mkdir()
        ctx = Context(impl, None, self.data, ctx_dir, self.args.small, self.args.timeout, self.fio,
                      str(REPO / ".venv" / "bin" / "layers"))
        error = None
        mount = None
        try:
            if group.lowers:
                lowers, cwd = self._lowers(group)
                deadline = self.args.timeout * (len(group.workloads) + 1)
                mount = self.impls[impl].open_mount(lowers, self.run_dir / f"r{rep}-{gname}-{impl}",
                                                    volatile=group.volatile, cwd=cwd, deadline=deadline)
                with mount:
                    ctx.mount = mount
                    group.run(ctx)
            else:
                group.run(ctx)
        except (WorkloadError, MountError) as exc:
            error = str(exc)
        except (OSError, subprocess.SubprocessError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            if mount is not None and mount.expired:
                error = f"hung: connection aborted after {mount.deadline:.0f}s; then {error}"
        except Exception as exc:  # a bug of the bench: report it, keep the others' results
            error = f"{type(exc).__name__}: {exc}"
            say(traceback.format_exc())
        shown = []
        for w in group.workloads:
            step = ctx.steps.get(w.id)
            if step is not None:
                self.results.add(w.id, impl, rep, step.seconds, step.cpu, step.info)
                cpu = f" (cpu {step.cpu:.2f})" if step.cpu is not None else ""
                shown.append(f"{w.id} {step.seconds:.3f}s{cpu}")
            elif error is not None:
                self.results.add(w.id, impl, rep, error=error)
        if error is not None and all(w.id in ctx.steps for w in group.workloads):
            self.problems.append(f"{gname} {impl} rep {rep}: {error}")  # e.g. the unmount
        say(f"bench: rep {rep + 1}/{self.args.reps} {gname:<4} {impl:<18} "
            + " ".join(shown) + (f" ERROR {error}" if error else ""))

    def close(self) -> None:
        self.problems += cleanup_all()
        left = unmount_leftovers(self.run_dir)
        if left:
            self.problems.append(f"left mounted and now unmounted: {left}")
        shutil.rmtree(self.run_dir, ignore_errors=True)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        say("bench: needs root (it mounts the kernel overlay and drops caches)")
        return 2
    if not os.path.exists("/dev/fuse"):
        say("bench: needs /dev/fuse")
        return 2
    impls, skipped, versions = find_implementations()
    if not os.access(impls[FSD].executable, os.X_OK):
        say(f"bench: no fsd at {impls[FSD].executable} (run scripts/install)")
        return 2
    for name, why in skipped.items():
        say(f"bench: without {name}: {why}")
    fio = shutil.which("fio")
    interrupt_on_term()
    atexit.register(cleanup_all)
    bench = Bench(args, impls, fio)
    started = time.time()
    load = [os.getloadavg()]
    interrupted = False
    try:
        bench.prepare()
        bench.run()
    except KeyboardInterrupt:
        interrupted = True
        say("bench: interrupted; everything is unmounted, here is what was measured")
    finally:
        bench.close()
    load.append(os.getloadavg())
    summary = summarize(bench.results)
    errors = bench.results.errors() + bench.problems
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "interrupted": interrupted,
        "options": {"reps": args.reps, "only": args.only, "small": args.small, "timeout": args.timeout},
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(),
                 "loadavg_start": load[0], "loadavg_end": load[1]},
        "implementations": versions,
        "skipped": skipped,
        "random_reads": "fio" if fio else "python pread loop",
        "data": {name: {k: v for k, v in (datamod.load_spec(p) or {}).items() if k != "w4_files"}
                 for name, p in bench.data.items()},
    }
    if args.small:
        print("(--small: toy data, the sizes in the titles do not apply; a smoke test, not a benchmark)")
    print(render_table(summary), end="")
    if errors:
        print("\nerrors:")
        for e in errors:
            print(f"- {e}")
    if args.json:
        _write_json(args.json, document(summary, meta, errors))
    if interrupted:
        return 130
    return 3 if errors else 0
