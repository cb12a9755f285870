"""Medians, ratios and target checks of a run, as tables and as JSON.

`Results.add(wid, impl, rep, ...)` collects one measurement;
`summarize(results, busy)` turns them into per-workload medians and ratios,
the same dict that is saved with --json (`document`); `render_table(summary)`
prints it. Ratios are only ever between medians of the same run:
fsd/fuse-overlayfs (rootful and rootless), fsd/kernel, and against the pyfuse3
floor (floorfs.py) fsd/floor and floor/fuse-overlayfs (lower is better),
and for w10 the throughput of `layers import` over that of `tar -x` +
`sha256sum` (higher is better). A target is "ok", "MISS", "?" when a side has
no measurement, or "busy, not judged" when the machine was not quiet
(machine.py): the figures are printed all the same.

Besides the time, each FUSE measurement says why: the requests the daemon got
by operation, its CPU seconds, and CPU microseconds per request (each the
median over the repetitions).
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field

from . import profile
from .workloads import GROUPS, IMPORT_BASELINE, IMPORT_OURS, LIFECYCLE, PODMAN, WORKLOAD_GROUP

KERNEL, FUSE_OVERLAYFS, FSD = "kernel", "fuse-overlayfs", "fsd"
FLOOR = "pyfuse3 floor"  # floorfs.py: a bare passthrough on fsd's pyfuse3, rootful only
RL_FUSE_OVERLAYFS, RL_FSD = "fuse-overlayfs rootless", "fsd rootless"
MOUNT_IMPLS = (KERNEL, FUSE_OVERLAYFS, FSD, FLOOR, RL_FUSE_OVERLAYFS, RL_FSD)
# (ours, theirs) for the ratios; fsd/floor: how much of fsd's time its overlay logic adds
FUSE_PAIRS = ((FSD, FUSE_OVERLAYFS), (RL_FSD, RL_FUSE_OVERLAYFS), (FSD, FLOOR), (FLOOR, FUSE_OVERLAYFS))
WHY_IMPLS = (FUSE_OVERLAYFS, FSD, FLOOR)
IMPORT_IMPLS = (IMPORT_BASELINE, IMPORT_OURS)
BUSY = "busy, not judged"
FORMAT = 2

_TITLES = {w.id: w for w in (*LIFECYCLE, *PODMAN)}


@dataclass
class Results:
    runs: dict = field(default_factory=dict)  # wid -> impl -> [run dicts]

    def add(self, wid: str, impl: str, rep: int, seconds=None, cpu=None, info=None, error=None,
            requests=None, lost=0) -> None:
        run = {"rep": rep, "seconds": seconds, "cpu": cpu}
        if info:
            run["info"] = info
        if requests is not None:
            run["requests"] = requests
            run["requests_lost"] = lost
        if error is not None:
            run["error"] = error
        self.runs.setdefault(wid, {}).setdefault(impl, []).append(run)

    def errors(self) -> list[str]:
        return [f"{wid} {impl} rep {r['rep']}: {r['error']}"
                for wid, by_impl in self.runs.items() for impl, runs in by_impl.items()
                for r in runs if "error" in r]


def median_of(values):
    """The median of the values that are not None (None if none is); lazy.py's too."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ratio(a, b):
    return a / b if a is not None and b else None


def _check(target: str, value, busy: bool) -> str:
    if not target:
        return ""
    if value is None:
        return "?"
    if busy:
        return BUSY
    op, num = target.split()[:2]
    ok = value <= float(num) if op == "<=" else value >= float(num)
    return "ok" if ok else "MISS"


def _why(runs: list[dict]) -> dict:
    """Requests by operation, their total, CPU per request: medians over the runs."""
    counted = [r for r in runs if r.get("requests") is not None]
    if not counted:
        return {}
    ops = sorted({op for r in counted for op in r["requests"]})
    by_op = {op: median_of([r["requests"].get(op, 0) for r in counted]) for op in ops}
    total = median_of([sum(r["requests"].values()) for r in counted])
    per_request = median_of([r["cpu"] / sum(r["requests"].values()) * 1e6 for r in counted
                           if r.get("cpu") is not None and sum(r["requests"].values())])
    return {"requests": total, "requests_by_op": dict(Counter(by_op).most_common()),
            "cpu_us_per_request": per_request, "requests_lost": max(r["requests_lost"] for r in counted)}


def _workload(wid: str):
    if wid in WORKLOAD_GROUP:
        group = GROUPS[WORKLOAD_GROUP[wid]]
        return next(w for w in group.workloads if w.id == wid), WORKLOAD_GROUP[wid], bool(group.lowers)
    w = _TITLES[wid]
    return w, "podman" if w in PODMAN else "lifecycle", True


def summarize(results: Results, busy: bool = False) -> dict:
    """{wid: {title, group, target, runs, median, cpu_median, why, ratios, target_value,
    target_verdict, target_met}} in the order of the workloads."""
    out = {}
    order = [w.id for g in GROUPS.values() for w in g.workloads] + [w.id for w in (*LIFECYCLE, *PODMAN)]
    for wid in order:
        if wid not in results.runs:
            continue
        w, group, mounted = _workload(wid)
        runs = results.runs[wid]
        ok = {impl: [r for r in rs if "error" not in r] for impl, rs in runs.items()}
        median = {impl: median_of([r["seconds"] for r in rs]) for impl, rs in ok.items()}
        cpu = {impl: median_of([r["cpu"] for r in rs]) for impl, rs in ok.items()}
        why = {impl: _why(rs) for impl, rs in ok.items() if _why(rs)}
        if mounted:
            ratios = {f"{a}/{b}": _ratio(median.get(a), median.get(b)) for a, b in FUSE_PAIRS}
            ratios["fsd/kernel"] = _ratio(median.get(FSD), median.get(KERNEL))
            # lifecycle targets are fsd's seconds; the others fsd/fuse-overlayfs
            value = median.get(FSD) if w.target.endswith(" s") else ratios["fsd/fuse-overlayfs"]
        else:
            ratios = {"import/baseline throughput": _ratio(median.get(IMPORT_BASELINE),
                                                           median.get(IMPORT_OURS))}
            value = ratios["import/baseline throughput"]
        verdict = _check(w.target, value, busy)
        out[wid] = {"title": w.title, "group": group, "target": w.target,
                    "runs": runs, "median": median, "cpu_median": cpu, "why": why, "ratios": ratios,
                    "target_value": value, "target_verdict": verdict,
                    "target_met": {"ok": True, "MISS": False}.get(verdict)}
    return out


def document(summary: dict, meta: dict, errors: list[str]) -> dict:
    return {"format": FORMAT, **meta, "workloads": summary, "errors": errors}


def _s(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def two_places(v) -> str:
    """A table cell: v to two places, "-" for no value."""
    return "-" if v is None else f"{v:.2f}"


def whole_number(v) -> str:
    """A table cell: v rounded to a whole number, "-" for no value."""
    return "-" if v is None else f"{v:.0f}"


def _cell(w: dict, impl: str) -> str:
    runs = w["runs"].get(impl)
    if not runs:
        return "-"
    if all("error" in r for r in runs):
        return "ERR"
    text = _s(w["median"].get(impl))
    return text + ("*" if any("error" in r for r in runs) else "")


def _ops(why: dict, top: int = 4) -> str:
    if not why:
        return "-"
    items = list(why["requests_by_op"].items())
    text = " ".join(f"{op} {n:.0f}" for op, n in items[:top])
    if len(items) > top:
        text += f" +{sum(n for _, n in items[top:]):.0f}"
    return text + (f" (lost {why['requests_lost']})" if why["requests_lost"] else "")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a markdown table, columns padded to their widest cell; lazy.py's too."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(n) for c, n in zip(cells, widths)) + " |"  # noqa: E731
    return [line(header), "|" + "|".join("-" * (n + 2) for n in widths) + "|", *map(line, rows)]


def _target(w: dict) -> str:
    return f"{w['target']} {w['target_verdict']}".strip() or "-"


def render_table(summary: dict) -> str:
    """The run as markdown tables: seconds are medians; then, for the same
    workloads, why: requests, daemon CPU, CPU per request; then podman."""
    mount_rows, why_rows, import_rows, podman_rows = [], [], [], []
    for wid, w in summary.items():
        if w["group"] == "podman":
            podman_rows.append([wid, w["title"], _cell(w, FUSE_OVERLAYFS), _cell(w, FSD),
                                two_places(w["ratios"]["fsd/fuse-overlayfs"]), _s(w["cpu_median"].get(FUSE_OVERLAYFS)),
                                _s(w["cpu_median"].get(FSD)), _target(w)])
        elif GROUPS.get(w["group"]) is None or GROUPS[w["group"]].lowers:
            mount_rows.append([wid, w["title"], *(_cell(w, i) for i in (KERNEL, FUSE_OVERLAYFS, FSD)),
                               two_places(w["ratios"]["fsd/fuse-overlayfs"]), two_places(w["ratios"]["fsd/kernel"]),
                               _cell(w, FLOOR), two_places(w["ratios"][f"{FSD}/{FLOOR}"]),
                               *(_cell(w, i) for i in (RL_FUSE_OVERLAYFS, RL_FSD)),
                               two_places(w["ratios"][f"{RL_FSD}/{RL_FUSE_OVERLAYFS}"]), _target(w)])
        else:
            import_rows.append([wid, w["title"], *(_cell(w, i) for i in IMPORT_IMPLS),
                                two_places(w["ratios"]["import/baseline throughput"]),
                                _s(w["cpu_median"].get(IMPORT_OURS)), _target(w)])
        if w["group"] != "lifecycle" and (w["why"] or any(w["cpu_median"].get(i) is not None
                                                          for i in WHY_IMPLS)):
            why = w["why"]
            why_rows.append([wid, *(whole_number(why.get(i, {}).get("requests")) for i in WHY_IMPLS),
                             *(_s(w["cpu_median"].get(i)) for i in WHY_IMPLS),
                             *(whole_number(why.get(i, {}).get("cpu_us_per_request"))
                               for i in (*WHY_IMPLS, RL_FUSE_OVERLAYFS, RL_FSD)),
                             *(_ops(why.get(i)) for i in WHY_IMPLS)])
    out = []
    if mount_rows:
        out += markdown_table(["id", "workload", "kernel s", "fuse-overlayfs s", "fsd s", "fsd/f-o", "fsd/kernel",
                       "floor s", "fsd/floor", "rootless f-o s", "rootless fsd s", "rootless fsd/f-o", "target"], mount_rows)
    if podman_rows:
        out += [""] if out else []
        out += markdown_table(["id", "podman workload", "fuse-overlayfs s", "fsd s", "fsd/f-o",
                       "f-o cpu s", "fsd cpu s", "target"], podman_rows)
    if why_rows:
        out += [""] if out else []
        out += markdown_table(["id", "f-o requests", "fsd requests", "floor requests", "f-o cpu s", "fsd cpu s",
                       "floor cpu s", "f-o us/req", "fsd us/req", "floor us/req", "rootless f-o us/req",
                       "rootless fsd us/req", "f-o requests by op", "fsd requests by op",
                       "floor requests by op"], why_rows)
    if import_rows:
        out += [""] if out else []
        out += markdown_table(["id", "workload", f"{IMPORT_BASELINE} s", f"{IMPORT_OURS} s", "throughput ratio",
                       "import cpu s", "target"], import_rows)
    return "\n".join(out) + "\n"


def render_profiles(summary: dict) -> str:
    """With --profile: each workload's profiles, per implementation, summed over its repetitions."""
    out = []
    for wid, w in summary.items():
        for impl, runs in w["runs"].items():
            found = [r["info"]["profile"] for r in runs if isinstance(r.get("info", {}).get("profile"), dict)]
            if found:
                out.append(profile.render(f"{wid} {impl}", profile.merge(found)))
    return "".join(out)
