"""`scripts/bench`: fsd against the kernel overlay and fuse-overlayfs (issues 9, 15).

    scripts/bench [--reps N] [--only W...] [--small] [--json FILE] [--timeout S]
                  [--max-load L] [--no-rootless] [--podman-image TAR] [--profile DIR]

Repetition by repetition, each workload group runs on a fresh mount of each
implementation in turn (the order rotates every repetition), on the same
cached data (data.py) with a fresh upper and workdir: the kernel overlay,
fuse-overlayfs and fsd as root, the pyfuse3 floor as root (floorfs.py: a
bare passthrough on fsd's pyfuse3, serving a linked copy of the lowers: what
any Python filesystem costs per request), and fuse-overlayfs and fsd run by an
unprivileged user (rootless, on a copy of the data the user owns). Every
mount's start and unmount are timed too (rows `mount`, `umount`). Then the
podman section (podman.py) runs p1..p3 with each daemon as podman's mount
program, interleaved the same way. It prints markdown tables of medians and
ratios on stdout, then why: FUSE requests by operation and daemon CPU per
request (progress goes to stderr) and, with --json, the same with every
single run. Before each repetition it checks that the machine is quiet
(machine.py); when it was not, no target is called ("busy, not judged").

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
from .machine import Quiet, rotate
from .mounts import AsUser, Implementation, MountError, cleanup_all, interrupt_on_term, unmount_leftovers
from .report import (FLOOR, FSD, FUSE_OVERLAYFS, IMPORT_IMPLS, KERNEL, RL_FSD, RL_FUSE_OVERLAYFS, Results, document,
                     render_profiles, render_table, summarize)
from .trace import RequestTrace
from .workloads import GROUPS, PODMAN, WORKLOAD_GROUP, Context, WorkloadError

REPO = Path(__file__).resolve().parents[2]


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Time fsd against the kernel overlay and fuse-overlayfs on the same data "
                    "(issue 9). Needs root. Test data is built once under .cache/bench/.",
        epilog="workloads: " + ", ".join(f"{w.id} ({w.title})" for g in GROUPS.values() for w in g.workloads))
    ap.add_argument("--reps", type=int, default=5, metavar="N", help="repetitions (default 5)")
    ap.add_argument("--only", nargs="+", metavar="W", help="run only these workloads (w1 also times w1w, "
                    "w3 also w3r: they share a mount; p1, p2, p3 run together)")
    ap.add_argument("--max-load", type=float, default=0.5 * (os.cpu_count() or 1), metavar="L",
                    help="a load average above L at the start makes the run busy: no target is judged "
                         "(default: half the CPUs)")
    ap.add_argument("--no-rootless", action="store_true", help="without the rootless columns")
    ap.add_argument("--podman-image", metavar="TAR", help="the root filesystem tar of the podman section's "
                    "image (default: Debian 12 minbase, debootstrapped once into /var/cache/strata-bench; "
                    "with --small the podman tests' busybox tree)")
    ap.add_argument("--small", action="store_true", help="tiny data set (a smoke test, not a benchmark)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--profile", metavar="DIR",
                    help="sample the rootful daemons with py-spy during each step (installed into the venv "
                         "by scripts/bench): their CPU by component and request handler, printed after the "
                         "tables, the folded stacks kept in DIR; the times of such a run are not the benchmark's")
    ap.add_argument("--timeout", type=float, metavar="S",
                    help="a step still running after S seconds fails (default 900, 120 with --small)")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    if args.only:
        known = [*WORKLOAD_GROUP, *(w.id for w in PODMAN)]
        unknown = [w for w in args.only if w not in known]
        if unknown:
            ap.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
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
    # what any filesystem on pyfuse3 and trio costs per request (floorfs.py)
    impls[FLOOR] = Implementation(FLOOR, str(Path(__file__).with_name("floorfs.py")),
                                  interpreter=str(REPO / ".venv" / "bin" / "python"), serves_copy=True)
    versions[FLOOR] = versions[FSD]
    return impls, skipped, versions


def open_rootless() -> tuple[AsUser | None, str | None]:
    """The unprivileged user of the tests (tests/support/rootless.py), in an
    agent's namespace where it can mount FUSE; (None, why) when it cannot be."""
    sys.path.insert(0, str(REPO / "tests"))
    from support import rootless
    user, why = rootless.fsd_user()
    if why:
        return None, why
    box = rootless.Sandbox(user, prefix="strata-bench-rootless-")
    try:
        agent = rootless.Agent(box, userns=False)
    except (OSError, RuntimeError, TimeoutError) as exc:
        box.cleanup()
        return None, f"no agent for user {user.name}: {exc}"
    return AsUser(user, agent, box), None


def close_rootless(as_user: AsUser) -> list[str]:
    return as_user.agent.close() + as_user.box.cleanup()


def _clean_old_runs(scratch_root: Path) -> None:
    for d in scratch_root.glob("run-*"):
        pid = d.name.partition("-")[2]
        if pid.isdigit() and os.path.exists(f"/proc/{pid}"):
            continue  # a run still going
        left = unmount_leftovers(d)
        if left:
            say(f"bench: unmounted {len(left)} mount(s) an interrupted run left in {d}")
        shutil.rmtree(d, ignore_errors=True)


def _write_json(path: str, doc: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


class Bench:
    def __init__(self, args, impls, fio, quiet: Quiet):
        self.args = args
        self.impls = impls
        self.fio = fio
        self.quiet = quiet
        self.results = Results()
        self.problems: list[str] = []
        cache = REPO / ".cache" / "bench"
        self.cache = cache
        self.run_dir = cache / "scratch" / f"run-{os.getpid()}"
        self.data: dict[str, Path] = {}
        self.owned: dict[str, Path] = {}  # the same, owned by the rootless user
        self.trace: RequestTrace | None = None

    def groups(self) -> list[str]:
        wanted = {WORKLOAD_GROUP[w] for w in self.args.only if w in WORKLOAD_GROUP} if self.args.only \
            else set(GROUPS)
        return [g for g in GROUPS if g in wanted]

    def wants_podman(self) -> bool:
        return not self.args.only or any(w.id in self.args.only for w in PODMAN)

    def prepare(self) -> None:
        size = "small" if self.args.small else "full"
        datamod.clean_partial(self.cache)
        rootless = [i.as_user for i in self.impls.values() if i.as_user]
        for name in datamod.COMPONENTS:
            if any(name in GROUPS[g].data for g in self.groups()):
                self.data[name] = datamod.ensure(self.cache, size, name, say)
                if rootless and name in ("lower", "stack"):
                    user = rootless[0].user
                    self.owned[name] = datamod.ensure_owned(self.cache, size, name, user.uid, user.gid, say)
        (self.cache / "scratch").mkdir(parents=True, exist_ok=True)
        _clean_old_runs(self.cache / "scratch")
        self.run_dir.mkdir()
        self.trace = RequestTrace.open(self.run_dir)
        if self.trace is None:
            say(f"bench: no request counts: {RequestTrace.why_not}")

    def run(self) -> None:
        for rep in range(self.args.reps):
            if not self.groups():
                break
            say(f"bench: rep {rep + 1}/{self.args.reps}: CPUs {self.quiet.sample_idle():.0%} idle before it")
            for gname in self.groups():
                group = GROUPS[gname]
                names = list(self.impls) if group.lowers else list(IMPORT_IMPLS)
                for impl in rotate(names, rep):
                    self.run_one(rep, gname, impl)

    def _data(self, impl: str) -> dict[str, Path]:
        return {**self.data, **self.owned} if self.impls[impl].as_user else self.data

    def _lowers(self, group, data) -> tuple[list[str], str | None]:
        if group.lowers == "stack":
            layers = data["stack"] / "layers"
            # relative to the layers' dir: 64 absolute paths could outgrow the
            # kernel's one-page limit on mount options
            return sorted((p.name for p in layers.iterdir()), reverse=True), str(layers)
        return [str(data["lower"] / "tree")], None

    def _scratch(self, impl: str, name: str) -> Path:
        as_user = self.impls[impl].as_user
        parent = as_user.box.dir("mounts", owned=False) if as_user else self.run_dir
        return parent / f"{name}-{impl.replace(' ', '-')}"

    def run_one(self, rep: int, gname: str, impl: str) -> None:
        group = GROUPS[gname]
        ctx_dir = self.run_dir / "ctx"
        shutil.rmtree(ctx_dir, ignore_errors=True)
        ctx_dir.mkdir()
        data = self._data(impl) if group.lowers else self.data
        profile = (str(REPO / ".venv" / "bin" / "py-spy"), Path(self.args.profile), f"r{rep}") \
            if self.args.profile else None
        ctx = Context(impl, None, data, ctx_dir, self.args.small, self.args.timeout, self.fio,
                      str(REPO / ".venv" / "bin" / "layers"), self.trace, profile)
        error = None
        mount = None
        try:
            if group.lowers:
                lowers, cwd = self._lowers(group, data)
                deadline = self.args.timeout * (len(group.workloads) + 1)
                # the floor's copy of the lower: what w4 appends to is copied, not linked
                private = tuple(datamod.load_spec(data["lower"])["w4_files"]) \
                    if self.impls[impl].serves_copy and group.lowers == "lower" else ()
                mount = self.impls[impl].open_mount(lowers, self._scratch(impl, f"r{rep}-{gname}"),
                                                    volatile=group.volatile, cwd=cwd, deadline=deadline,
                                                    private=private)
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
        if mount is not None:
            if mount.live_seconds is not None:
                self.results.add("mount", impl, rep, mount.live_seconds)
                shown.append(f"mount {mount.live_seconds:.3f}s")
            if mount.unmount_seconds is not None:
                # the command alone, apart: a slow umount(2) is the kernel's, not the daemon's exit
                info = {"command_seconds": mount.unmount_command_seconds}
                if mount.slow_exit is not None:
                    info["slow_exit"] = mount.slow_exit
                self.results.add("umount", impl, rep, mount.unmount_seconds, info=info)
                shown.append(f"umount {mount.unmount_seconds:.3f}s (command {mount.unmount_command_seconds:.3f}s"
                             + (f"; the daemon waited: {mount.slow_exit}" if mount.slow_exit else "") + ")")
        for w in group.workloads:
            step = ctx.steps.get(w.id)
            if step is not None:
                self.results.add(w.id, impl, rep, step.seconds, step.cpu, step.info, requests=step.requests,
                                 lost=step.lost)
                cpu = f" (cpu {step.cpu:.2f})" if step.cpu is not None else ""
                reqs = f" ({sum(step.requests.values())} requests)" if step.requests is not None else ""
                shown.append(f"{w.id} {step.seconds:.3f}s{cpu}{reqs}")
            elif error is not None:
                self.results.add(w.id, impl, rep, error=error)
        if error is not None and all(w.id in ctx.steps for w in group.workloads):
            self.problems.append(f"{gname} {impl} rep {rep}: {error}")  # e.g. the unmount
        say(f"bench: rep {rep + 1}/{self.args.reps} {gname:<4} {impl:<23} "
            + " ".join(shown) + (f" ERROR {error}" if error else ""))

    def run_podman(self, skipped: dict[str, str], versions: dict[str, str]) -> None:
        """The podman section, with each daemon as podman's mount program."""
        from . import podman
        programs = {name: impl.executable for name, impl in self.impls.items()
                    if name in (FUSE_OVERLAYFS, FSD)}
        why = podman.podman_support.ensure_podman()
        if why:
            skipped["podman"] = why
            say(f"bench: without the podman section: {why}")
            return
        versions["podman"] = _first_line(["podman", "--version"]) or "?"
        box = None
        try:
            if self.args.podman_image:
                image = Path(self.args.podman_image)
            elif self.args.small:
                box = podman.Sandbox(None, prefix="strata-bench-image-")
                image = podman.tiny_image(box)
            else:
                image = podman.debootstrap_image(say)
            section = podman.PodmanSection(programs, image, self.args.small, self.trace, say, self.args.timeout)
        except (podman.PodmanError, OSError, RuntimeError, AssertionError, subprocess.SubprocessError) as exc:
            self.problems.append(f"podman section: {exc}")
            say(f"bench: podman section: {exc}")
            return
        finally:
            if box is not None:
                box.cleanup()
        try:
            for rep in range(self.args.reps):
                say(f"bench: podman rep {rep + 1}/{self.args.reps}: "
                    f"CPUs {self.quiet.sample_idle():.0%} idle before it")
                for name in rotate(list(programs), rep):
                    section.run_one(name, rep, self.results)
        finally:
            self.problems += section.close()

    def close(self) -> None:
        self.problems += cleanup_all()
        if self.trace is not None:
            self.trace.close()
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
    quiet = Quiet(args.max_load)
    load = quiet.load_start
    say(f"bench: load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {quiet.cpus} CPUs"
        + (f" (more than {args.max_load:g}: busy, no target will be judged)" if load[0] > args.max_load else ""))
    impls, skipped, versions = find_implementations()
    if not os.access(impls[FSD].executable, os.X_OK):
        say(f"bench: no fsd at {impls[FSD].executable} (run scripts/install)")
        return 2
    as_user = None
    if args.no_rootless:
        skipped["rootless"] = "--no-rootless"
    else:
        as_user, why = open_rootless()
        if why:
            skipped["rootless"] = why
        else:
            for name, rl_name in ((FUSE_OVERLAYFS, RL_FUSE_OVERLAYFS), (FSD, RL_FSD)):
                if name in impls:
                    impls[rl_name] = Implementation(rl_name, impls[name].executable, as_user)
    for name, why in skipped.items():
        say(f"bench: without {name}: {why}")
    fio = shutil.which("fio")
    interrupt_on_term()
    atexit.register(cleanup_all)
    bench = Bench(args, impls, fio, quiet)
    started = time.time()
    interrupted = False
    try:
        bench.prepare()
        bench.run()
        if bench.wants_podman():
            bench.run_podman(skipped, versions)
    except KeyboardInterrupt:
        interrupted = True
        say("bench: interrupted; everything is unmounted, here is what was measured")
    finally:
        bench.close()
        if as_user is not None:
            bench.problems += close_rootless(as_user)
    quiet.finish()
    busy = quiet.reasons()
    summary = summarize(bench.results, busy=bool(busy))
    errors = bench.results.errors() + bench.problems
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "interrupted": interrupted,
        "options": {"reps": args.reps, "only": args.only, "small": args.small, "timeout": args.timeout},
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(),
                 "loadavg_start": list(load), "loadavg_end": list(os.getloadavg())},
        "machine": quiet.describe(),
        "implementations": versions,
        "skipped": skipped,
        "requests": "fuse:fuse_request_send" if bench.trace else RequestTrace.why_not,
        "random_reads": "fio" if fio else "python pread loop",
        "data": {name: {k: v for k, v in (datamod.load_spec(p) or {}).items() if k != "w4_files"}
                 for name, p in bench.data.items()},
    }
    if args.small:
        print("(--small: toy data, the sizes in the titles do not apply; a smoke test, not a benchmark)")
    print(f"load average at the start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {quiet.cpus} CPUs; "
          f"idle before each repetition: {', '.join(f'{s:.0%}' for s in quiet.idle_samples) or '-'}; "
          f"steal {quiet.steal:.1%}")
    if busy:
        print("busy, not judged: " + "; ".join(busy) + ". The ratios below are from a shared machine.")
    print(render_table(summary), end="")
    if args.profile:
        print(f"\nprofiles (py-spy, {args.profile}): busy samples by component and handler")
        print(render_profiles(summary), end="")
    if errors:
        print("\nerrors:")
        for e in errors:
            print(f"- {e}")
    if args.json:
        _write_json(args.json, document(summary, meta, errors))
    if interrupted:
        return 130
    return 3 if errors else 0
