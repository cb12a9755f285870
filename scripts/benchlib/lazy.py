"""`scripts/bench-lazy`: a container started from a lazily pulled image against
one started after a full pull, over a shaped network (issue 17).

    scripts/bench-lazy [--reps N] [--small] [--json FILE] [--timeout S] [--max-load L]
                       [--only MODE...] [--no-podman] [--delay MS] [--rate MBIT]

A command of its own rather than a section of scripts/bench: scripts/bench
compares mount implementations (kernel, fuse-overlayfs, fsd) on the same
lower directories, and its tables have one column per implementation; this
one compares ways of getting an image from a registry into the store, needs
a registry, a shaped network and pushed images, and reports seconds and
bytes. Sharing the run would bend both tables; the pieces that fit are
shared (machine.py's quiet check, data.py's cache, podman.py's image).

Set-up, untimed, once per run: Debian's docker-registry on 127.0.0.1
(tests/support/registryd.py); the two images of lazyimage.py imported into a
seed store and pushed to it directly, once with gzip layers and once with
eStargz ones (`layers push --compression-format`); then a ShapedProxy
(shaper.py: every request delayed, one link capped) in front of it, which
every timed client goes through.

Each repetition runs these, in an order that rotates, each on a fresh store
(the fuse driver) that is removed after it:
  full gzip      `layers pull` of the first image (gzip) + create + mount +
                 the command (lazyimage.COMMAND, chroot into the mount) to
                 its first output; then the second image pulled into the
                 same store (whole layers: it shares files, no layer)
  full estargz   the same from the eStargz push; the second pull is a
                 partial pull by content (only what the store lacks)
  lazy           `layers pull --lazy` of the first image (eStargz) + create +
                 mount + the command to its first output; then until the
                 background fetch has completed every layer (no layer root
                 carries `user.strata.lazy` and no layer record says `lazy`
                 any more: each was checked against its diffID, LAZY-CONTRACT)
Every figure is from the pull's start; bytes are those the proxy sent the
client (answers' heads and bodies), read at the instant. A command whose
output differs from the expected one (the data file's sha256) fails its run.

In the same rotation, unless --no-podman, podman's two ways (lazypodman.py):
`podman pull` of the gzip image, against the store's lazy pull served to
podman as its additional layer store; both to the end of `podman run` of the
command.

Exit status: 0 all ran; 3 a step failed (listed; timings never fail
anything); 2 bad usage or an environment it cannot run in; 130 interrupted.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import platform
import select
import shutil
import subprocess
import sys
import time
import traceback
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import data as datamod
from . import lazyimage, lazypodman
from .machine import Quiet, rotate
from .lazypodman import MODES as PODMAN_MODES
from .lazypodman import PODMAN_ALS, PODMAN_PULL
from .lazystore import LAYERS, StepError, Store
from .mounts import interrupt_on_term, unmount_leftovers
from .cli import say
from .report import markdown_table, median_of, two_places, whole_number
from .shaper import Counters, ShapedProxy

REPO = Path(__file__).resolve().parents[2]

LAZY_XATTR = "user.strata.lazy"   # LAZY-CONTRACT 2: on a layer's diff/ while a file is incomplete
FULL_GZIP, FULL_ESTARGZ, LAZY = "full gzip", "full estargz", "lazy"
MODES = (FULL_GZIP, FULL_ESTARGZ, LAZY)
SLUGS = {FULL_GZIP: "fg", FULL_ESTARGZ: "fe", LAZY: "lz", PODMAN_PULL: "pp", PODMAN_ALS: "pa"}  # --only, scratch dirs
TARGET_SOONER = 5.0     # first output at least 5x sooner than a full pull
TARGET_FRACTION = 0.10  # under 10% of the image's bytes fetched by then
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json, "
                  "application/vnd.docker.distribution.manifest.v2+json")


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="scripts/bench-lazy",
        description="Lazy pull + create + mount + first output of a command against a full pull, "
                    "over a shaped network (issue 17). Needs root. The images' layers are built once "
                    "under .cache/bench/.")
    ap.add_argument("--reps", type=int, default=3, metavar="N", help="repetitions (default 3)")
    ap.add_argument("--small", action="store_true", help="a busybox image of a few MB (a smoke test, "
                    "not a benchmark)")
    ap.add_argument("--json", metavar="FILE", help="also write every run and the medians as JSON to FILE")
    ap.add_argument("--timeout", type=float, metavar="S",
                    help="a step still running after S seconds fails (default 600, 120 with --small)")
    ap.add_argument("--max-load", type=float, default=0.5 * (os.cpu_count() or 1), metavar="L",
                    help="a load average above L at the start makes the run busy: no target is judged "
                         "(default: half the CPUs)")
    ap.add_argument("--no-podman", action="store_true", help="without the podman runs")
    ap.add_argument("--only", nargs="+", metavar="MODE", choices=list(SLUGS.values()),
                    help="run only these: " + ", ".join(f"{slug} ({mode})" for mode, slug in SLUGS.items())
                         + " (the ratios need fg and lz, or pp and pa)")
    ap.add_argument("--delay", type=float, default=20.0, metavar="MS",
                    help="milliseconds added to every request (default 20)")
    ap.add_argument("--rate", type=float, default=100.0, metavar="MBIT",
                    help="the link's capacity in Mbit/s (default 100)")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    if args.delay < 0 or args.rate <= 0:
        ap.error("--delay must be at least 0 and --rate more than 0")
    if args.timeout is None:
        args.timeout = 120.0 if args.small else 600.0
    return args


# -- the registry and its images --------------------------------------------------------------

@dataclass
class Images:
    """The pushed images: references by (image, format) on the registry
    itself, and their layers' blob bytes (what a full pull fetches)."""
    refs: dict[tuple[str, str], str] = field(default_factory=dict)
    layer_bytes: dict[tuple[str, str], int] = field(default_factory=dict)
    tar_bytes: dict[str, int] = field(default_factory=dict)

    def via(self, proxy: ShapedProxy, image: str, fmt: str) -> str:
        path = self.refs[image, fmt].partition("/")[2]
        return f"{proxy.host}/{path}"


def _manifest_layer_bytes(registry: str, repo_tag: str) -> int:
    repo, _, tag = repo_tag.rpartition(":")
    req = urllib.request.Request(f"http://{registry}/v2/{repo}/manifests/{tag}",
                                 headers={"Accept": MANIFEST_TYPES})
    with urllib.request.urlopen(req, timeout=60) as r:
        manifest = json.load(r)
    return sum(layer["size"] for layer in manifest["layers"])


def push_images(seed: Store, registry, component: Path, formats: list[str]) -> Images:
    images = Images()
    layer_tars = {"first": [lazyimage.base_of(component), component / "data.tar"],
                  "second": [component / "second.tar"]}
    for image, tars in layer_tars.items():
        seed("import", "-q", "--name", f"bench/{image}:local", *map(str, tars))
        images.tar_bytes[image] = sum(t.stat().st_size for t in tars)
        for fmt in formats:
            repo_tag = f"bench/{image}:{fmt}"
            say(f"bench-lazy: pushing {image} as {fmt} (untimed, straight to the registry)")
            seed("push", "-q", "--tls-verify=false", "--compression-format", fmt, f"bench/{image}:local",
                 f"{registry.host}/{repo_tag}")
            images.refs[image, fmt] = f"{registry.host}/{repo_tag}"
            images.layer_bytes[image, fmt] = _manifest_layer_bytes(registry.host, repo_tag)
    return images


# -- one run ------------------------------------------------------------------------------------

def _first_output(argv: list[str], deadline: float, proxy: ShapedProxy, errfile: Path
                  ) -> tuple[float, Counters, float, str]:
    """Run argv: (instant of its first output byte, the proxy's counters at
    that instant, instant it ended, all it printed)."""
    with open(errfile, "wb") as err:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                             process_group=0)
    fd = p.stdout.fileno()
    out = bytearray()
    first = fetched = None
    try:
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise StepError(f"{' '.join(argv[-3:])}: no end of output within the step's time")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            data = os.read(fd, 65536)
            if data and first is None:
                first = time.perf_counter()
                fetched = proxy.counters()
            if not data:
                break
            out += data
        end = time.perf_counter()
        code = p.wait(timeout=max(1.0, deadline - time.perf_counter()))
    finally:
        if p.poll() is None:
            os.killpg(p.pid, 9)
            p.wait()
        p.stdout.close()
    if code:
        tail = errfile.read_text(errors="replace").strip().splitlines()[-3:]
        raise StepError(f"the command exited {code}: {' | '.join(tail)}")
    if first is None:
        raise StepError("the command printed nothing")
    return first, fetched, end, out.decode(errors="replace")


def _wait_complete(diffs: list[Path], deadline: float) -> float:
    """The instant no layer is lazy any more (polled)."""
    while True:
        now = time.perf_counter()
        if not any(_is_lazy(d) for d in diffs):
            return now
        if now > deadline:
            left = [d.parent.name[:12] for d in diffs if _is_lazy(d)]
            raise StepError(f"the background fetch had not completed layer(s) {', '.join(left)} "
                            f"within the step's time")
        time.sleep(0.05)


def _lazy_record(diff: Path) -> dict | None:
    """The `lazy` field of the layer's record (`layers/<chainid>.json`,
    LAZY-CONTRACT 2): where its content still is and how much has come;
    None once the layer is an ordinary one."""
    return json.loads((diff.parents[1] / f"{diff.parent.name}.json").read_text()).get("lazy")


def _is_lazy(diff: Path) -> bool:
    """Its root still carries the lazy xattr (a file is incomplete), or its
    record still says it is lazy (not yet checked against its diffID)."""
    try:
        os.getxattr(diff, LAZY_XATTR, follow_symlinks=False)
        return True
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise
    return _lazy_record(diff) is not None


def _traffic(c: Counters) -> dict:
    """Why the bytes are what they are: how many requests, connections,
    ranged requests, and connections that did not start with HTTP (a TLS
    attempt before plain HTTP)."""
    return {"bytes": c.down, "bytes_up": c.up, "requests": len(c.requests), "connections": c.connections,
            "ranged": len(c.ranged), "not_http": sum(r.method == "(not HTTP)" for r in c.requests)}


class Run:
    """One mode once, on a store of its own: `go()` puts every figure into
    `result`; a StepError ends it; `close()` removes the store."""

    def __init__(self, mode: str, rep: int, top: Path, proxy: ShapedProxy, images: Images, spec: dict,
                 timeout: float):
        self.mode, self.rep = mode, rep
        self.store, self.proxy, self.images = Store(top, timeout), proxy, images
        self.spec = spec
        self.timeout = timeout
        self.result: dict = {"rep": rep}

    def close(self) -> list[str]:
        return self.store.close()

    def go(self) -> None:
        fmt = "gzip" if self.mode == FULL_GZIP else "estargz"
        ref = self.images.via(self.proxy, "first", fmt)
        deadline = time.perf_counter() + self.timeout
        r = self.result
        os.sync()                       # the last run's writeback is not this one's
        self.proxy.reset()
        t0 = time.perf_counter()
        self.store("pull", "-q", "--tls-verify=false", *(["--lazy"] if self.mode == LAZY else []), ref)
        r["pull_s"] = time.perf_counter() - t0
        after_pull = self.proxy.counters()
        r["fetched_after_pull"] = after_pull.down
        r["traffic_after_pull"] = _traffic(after_pull)
        self.store("create", "--name", "c", ref)
        mnt = self.store("mount", "c").strip()
        r["create_mount_s"] = time.perf_counter() - t0 - r["pull_s"]
        argv = ["chroot", mnt, *lazyimage.COMMAND[self.spec["kind"]]]
        first, fetched, end, out = _first_output(argv, deadline, self.proxy, self.store.top / "command.err")
        r["first_output_s"] = first - t0
        r["command_s"] = end - t0
        r["fetched_first_output"] = fetched.down
        r["traffic_first_output"] = _traffic(fetched)
        if out != self.spec["expected_output"]:
            raise StepError(f"the command printed {out[:200]!r}, not {self.spec['expected_output']!r}")
        if self.mode == LAZY:
            diffs = self.store.layer_diffs(ref)
            records = [_lazy_record(d) for d in diffs]
            # the store's own count: blob bytes fetched (footers and TOCs included)
            r["store_fetched_at_first_output"] = sum(rec["fetched"] for rec in records if rec)
            r["lazy_layers_at_first_output"] = sum(rec is not None for rec in records)
            r["background_done_s"] = _wait_complete(diffs, deadline) - t0
        total = self.proxy.counters()
        r["fetched_total"] = total.down
        r["traffic_total"] = _traffic(total)
        # the requests in order, seconds from the pull's start (the proxy was reset just before it)
        r["requests"] = [[round(q.at, 3), q.method, q.target.rsplit("/", 1)[-1][:19], q.range]
                         for q in total.requests]
        if self.mode != LAZY:
            self.partial(fmt)

    def partial(self, fmt: str) -> None:
        """The second image into the store that holds the first."""
        ref = self.images.via(self.proxy, "second", fmt)
        os.sync()
        self.proxy.reset()
        t0 = time.perf_counter()
        report = json.loads(self.store("pull", "--tls-verify=false", "--format", "json", ref))
        self.result["second_pull_s"] = time.perf_counter() - t0
        second = self.proxy.counters()
        self.result["second_fetched"] = second.down
        self.result["traffic_second"] = _traffic(second)
        self.result["second_report"] = report
        self.result["second_requests"] = len(second.requests)
        self.result["second_saved"] = report.get("saved")     # the pull's own count of bytes not fetched


# -- the report -------------------------------------------------------------------------------

def summarize(runs: dict[str, list[dict]], images: Images | None, busy: bool) -> dict:
    keys = ("pull_s", "fetched_after_pull", "create_mount_s", "first_output_s", "command_s", "fetched_first_output",
            "background_done_s", "fetched_total", "second_pull_s", "second_fetched",
            "run_s", "done_s", "fetched_done", "second_requests", "second_saved")
    medians = {mode: {k: median_of([r.get(k) for r in rs if "error" not in r]) for k in keys}
               for mode, rs in runs.items()}
    full = medians.get(FULL_GZIP, {}).get("first_output_s")
    lazy = medians.get(LAZY, {}).get("first_output_s")
    sooner = full / lazy if full and lazy else None
    image_bytes = images.layer_bytes.get(("first", "estargz")) if images else None
    lazy_fetched = medians.get(LAZY, {}).get("fetched_first_output")
    fraction = lazy_fetched / image_bytes if lazy_fetched is not None and image_bytes else None

    def verdict(value, ok) -> str:
        if value is None:
            return "?"
        if busy:
            return "busy, not judged"
        return "ok" if ok(value) else "MISS"
    podman_plain = medians.get(PODMAN_PULL, {}).get("done_s")
    podman_als = medians.get(PODMAN_ALS, {}).get("done_s")
    podman_sooner = podman_plain / podman_als if podman_plain and podman_als else None
    targets = {
        "first_output_sooner": {"value": sooner, "target": f">= {TARGET_SOONER:g}x",
                                "verdict": verdict(sooner, lambda v: v >= TARGET_SOONER)},
        "podman_done_sooner": {"value": podman_sooner, "target": f">= {TARGET_SOONER:g}x",
                               "verdict": verdict(podman_sooner, lambda v: v >= TARGET_SOONER)},
        "fetched_fraction_by_first_output": {"value": fraction, "target": f"< {TARGET_FRACTION:.0%}",
                                             "verdict": verdict(fraction, lambda v: v < TARGET_FRACTION)},
    }
    return {"medians": medians, "targets": targets}


def _mb(v) -> str:
    return "-" if v is None else f"{v / 1e6:.1f} MB"


def _pct(part, whole) -> str:
    return f" ({part / whole:.1%})" if part is not None and whole else ""


def render(summary: dict, runs: dict[str, list[dict]], images: Images | None, podman_skipped: str | None) -> str:
    med = summary["medians"]
    image = {mode: images.layer_bytes.get(("first", "gzip" if mode == FULL_GZIP else "estargz"))
             for mode in MODES} if images else {}
    rows = []
    for mode in (m for m in MODES if m in runs):
        m, rs = med.get(mode, {}), runs.get(mode, [])
        failed = sum("error" in r for r in rs)
        rows.append([mode, two_places(m.get("pull_s")), two_places(m.get("create_mount_s")), two_places(m.get("first_output_s")),
                     _mb(m.get("fetched_first_output")) + _pct(m.get("fetched_first_output"), image.get(mode)),
                     two_places(m.get("background_done_s")) if mode == LAZY else "-",
                     _mb(m.get("fetched_total")) + _pct(m.get("fetched_total"), image.get(mode)),
                     f"{failed} of {len(rs)} runs failed" if failed else ""])
    out = markdown_table(["first image", "pull s", "create + mount s", "first output s", "fetched by first output",
                  "background fetch done s", "fetched in all", "note"], rows)
    t = summary["targets"]
    first = t["first_output_sooner"]
    frac = t["fetched_fraction_by_first_output"]
    out += ["",
            f"first output, full gzip pull / lazy pull: "
            f"{'-' if first['value'] is None else format(first['value'], '.1f') + 'x'} "
            f"(target {first['target']}: {first['verdict']})",
            f"fetched by the lazy run's first output: "
            f"{'-' if frac['value'] is None else format(frac['value'], '.1%')} of the image's "
            f"{_mb(images.layer_bytes.get(('first', 'estargz')) if images else None)} of eStargz layers "
            f"(target {frac['target']}: {frac['verdict']})"]
    lazy = med.get(LAZY, {})
    if lazy.get("fetched_after_pull") is not None:
        requests = [r["traffic_first_output"]["requests"] for r in runs[LAZY] if "traffic_first_output" in r]
        out.append(f"the lazy pull itself (tables of contents) fetched {_mb(lazy['fetched_after_pull'])}; "
                   f"{median_of(requests):.0f} requests by the first output")
    rows = []
    for mode, what in ((FULL_GZIP, "gzip: whole layers"), (FULL_ESTARGZ, "estargz: partial pull by content")):
        if mode not in runs:
            continue
        m = med.get(mode, {})
        fmt = "gzip" if mode == FULL_GZIP else "estargz"
        whole = images.layer_bytes.get(("second", fmt)) if images else None
        rs = runs.get(mode, [])
        failed = sum("error" in r for r in rs)
        rows.append([what, two_places(m.get("second_pull_s")), _mb(m.get("second_fetched")) + _pct(m.get("second_fetched"), whole),
                     _mb(whole), whole_number(m.get("second_requests")), f"{failed} of {len(rs)} runs failed" if failed else ""])
    if rows:
        out += ["", *markdown_table(["second image, into the store holding the first", "pull s", "fetched",
                             "its layers' blobs", "requests", "note"], rows)]
    g, e = med.get(FULL_GZIP, {}).get("second_fetched"), med.get(FULL_ESTARGZ, {}).get("second_fetched")
    if g and e:
        saved = med[FULL_ESTARGZ].get("second_saved")
        out.append((f"partial pull by content: {_mb(g - e)} ({1 - e / g:.0%}) fewer than the gzip pull's {_mb(g)}"
                    if e < g else f"partial pull by content saved nothing: {_mb(e)} against the gzip pull's {_mb(g)}")
                   + (f"; the pull reported {_mb(saved)} saved" if saved is not None else ""))
    out += [""]
    if podman_skipped:
        out.append(f"podman (its own pull against the additional layer store): not run: {podman_skipped}")
    else:
        rows = []
        for mode, what in ((PODMAN_PULL, "podman pull (gzip)"), (PODMAN_ALS, "layers pull --lazy + als add + podman pull (eStargz)")):
            if mode not in runs:
                continue
            m, rs = med.get(mode, {}), runs.get(mode, [])
            failed = sum("error" in r for r in rs)
            rows.append([what, two_places(m.get("pull_s")), two_places(m.get("run_s")), two_places(m.get("done_s")),
                         _mb(m.get("fetched_done")) + _pct(m.get("fetched_done"), image.get(FULL_GZIP if mode == PODMAN_PULL else LAZY)),
                         f"{failed} of {len(rs)} runs failed" if failed else ""])
        out += markdown_table(["podman run of the first image", "pull s", "podman run s", "command done s", "fetched by then",
                       "note"], rows)
        p = t["podman_done_sooner"]
        out.append(f"command done, podman pull / podman on the additional layer store: "
                   f"{'-' if p['value'] is None else format(p['value'], '.1f') + 'x'} "
                   f"(target {p['target']}: {p['verdict']})")
    return "\n".join(out) + "\n"


# -- the run ------------------------------------------------------------------------------------

def _progress(r: dict) -> str:
    if "error" in r:
        return f"ERROR {r['error']}"
    if "done_s" in r:
        return f"command done {r['done_s']:.2f}s, {r['fetched_done'] / 1e6:.1f} MB by then"
    return (f"first output {r['first_output_s']:.2f}s, {r['fetched_first_output'] / 1e6:.1f} MB by then"
            + (f"; complete {r['background_done_s']:.2f}s" if "background_done_s" in r else "")
            + (f"; second image {r['second_pull_s']:.2f}s, {r['second_fetched'] / 1e6:.1f} MB"
               if "second_pull_s" in r else ""))


def _clean_old_runs(scratch_root: Path) -> None:
    for d in scratch_root.glob("lazy-*"):
        pid = d.name.partition("-")[2]
        if pid.isdigit() and os.path.exists(f"/proc/{pid}"):
            continue
        for sub in d.glob("*"):
            if (sub / "root").exists():
                Store(sub, 120).close()
        unmount_leftovers(d)
        shutil.rmtree(d, ignore_errors=True)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        say("bench-lazy: needs root (the stores mount with fsd, the command runs in a chroot)")
        return 2
    if not os.access(LAYERS, os.X_OK):
        say(f"bench-lazy: no layers at {LAYERS} (run scripts/install)")
        return 2
    if shutil.which("docker-registry") is None:
        say("bench-lazy: no docker-registry (apt-get install docker-registry)")
        return 2
    quiet = Quiet(args.max_load)
    load = quiet.load_start
    say(f"bench-lazy: load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {quiet.cpus} CPUs")
    interrupt_on_term()
    cache = REPO / ".cache" / "bench"
    scratch = cache / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    _clean_old_runs(scratch)
    run_dir = scratch / f"lazy-{os.getpid()}"
    run_dir.mkdir()
    size = "small" if args.small else "full"
    chosen = [m for m in (*MODES, *PODMAN_MODES) if not args.only or SLUGS[m] in args.only]
    modes = [m for m in chosen if m in MODES]
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    podman_skipped: str | None = "not reached"
    problems: list[str] = []
    images = registry = proxy = None
    interrupted = False
    started = time.time()
    try:
        if args.small:
            base = None
        else:
            from .podman import debootstrap_image
            base = debootstrap_image(say)
        component = lazyimage.ensure(cache, size, base, say)
        sys.path.insert(0, str(REPO / "tests"))
        from support.registryd import Registry   # imports pytest: not for --help
        registry = Registry(run_dir / "registry").start()
        seed = Store(run_dir / "seed", args.timeout)
        try:
            images = push_images(seed, registry, component,
                                 ["gzip", "estargz"])
        finally:
            problems += seed.close()
        if args.no_podman:
            podman_skipped = "--no-podman"
        elif not set(chosen) & set(PODMAN_MODES):
            podman_skipped = "not in --only"
        else:
            podman_skipped = lazypodman.why_not()
        if podman_skipped:
            say(f"bench-lazy: without podman: {podman_skipped}")
        else:
            modes += [m for m in chosen if m in PODMAN_MODES]
            runs.update({m: [] for m in modes})
        proxy = ShapedProxy(registry.host, delay=args.delay / 1000, rate=args.rate * 1e6 / 8).start()
        spec = datamod.load_spec(component)
        for rep in range(args.reps):
            say(f"bench-lazy: rep {rep + 1}/{args.reps}: CPUs {quiet.sample_idle():.0%} idle before it")
            for mode in rotate(list(modes), rep):
                # short: the store's fetcher listens on a unix socket in its runroot,
                # and a socket's path has room for 107 bytes
                top = run_dir / f"{rep}{SLUGS[mode]}"
                if mode in PODMAN_MODES:
                    run = lazypodman.PodmanRun(mode, rep, top, proxy, images, spec, args.timeout)
                else:
                    run = Run(mode, rep, top, proxy, images, spec, args.timeout)
                try:
                    run.go()
                except StepError as exc:
                    run.result["error"] = str(exc)
                except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
                    run.result["error"] = f"{type(exc).__name__}: {exc}"
                    say(traceback.format_exc())
                finally:
                    problems += [f"{mode} rep {rep}: {p}" for p in run.close()]
                runs[mode].append(run.result)
                say(f"bench-lazy: rep {rep + 1} {mode:<13} {_progress(run.result)}")
    except KeyboardInterrupt:
        interrupted = True
        say("bench-lazy: interrupted; here is what was measured")
    except (StepError, OSError, RuntimeError, subprocess.SubprocessError) as exc:
        problems.append(f"set-up: {exc}")
        say(f"bench-lazy: set-up failed: {exc}")
    finally:
        if proxy is not None:
            proxy.stop()
            problems += [f"proxy: {e}" for e in proxy.errors]
        if registry is not None:
            registry.stop()
        left = unmount_leftovers(run_dir)
        if left:
            problems.append(f"left mounted and now unmounted: {left}")
        shutil.rmtree(run_dir, ignore_errors=True)
    quiet.finish()
    busy = quiet.reasons()
    summary = summarize(runs, images, bool(busy))
    errors = [f"{mode} rep {r['rep']}: {r['error']}" for mode, rs in runs.items() for r in rs if "error" in r]
    errors += problems
    if args.small:
        print("(--small: a busybox image of a few MB; a smoke test, not a benchmark)")
    print(f"network: {args.delay:g} ms added to every request, {args.rate:g} Mbit/s; medians of {args.reps} "
          f"repetition(s); load average at the start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {quiet.cpus} CPUs")
    if images:
        print(f"first image: {images.tar_bytes['first'] / 1e6:.0f} MB of layer tars "
              f"({_mb(images.layer_bytes.get(('first', 'gzip')))} gzip"
              + (f", {_mb(images.layer_bytes[('first', 'estargz')])} estargz" if ('first', 'estargz') in
                 images.layer_bytes else "") + ")")
    if busy:
        print("busy, not judged: " + "; ".join(busy))
    print(render(summary, runs, images, podman_skipped), end="")
    if errors:
        print("\nerrors:")
        for e in errors:
            print(f"- {e}")
    if args.json:
        doc = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
               "seconds": round(time.time() - started, 1), "interrupted": interrupted,
               "options": vars(args), "host": {"kernel": platform.release(), "cpus": os.cpu_count()},
               "machine": quiet.describe(),
               "images": None if images is None else {
                   "refs": {f"{i}:{f}": v for (i, f), v in images.refs.items()},
                   "layer_bytes": {f"{i}:{f}": v for (i, f), v in images.layer_bytes.items()},
                   "tar_bytes": images.tar_bytes},
               "runs": runs, **summary, "podman_skipped": podman_skipped, "errors": errors}
        tmp = f"{args.json}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.rename(tmp, args.json)
    if interrupted:
        return 130
    return 3 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
