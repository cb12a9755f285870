"""Medians, ratios and target checks of a run, as a table and as JSON.

`Results.add(wid, impl, rep, step_or_error)` collects one measurement;
`summarize(results)` turns them into per-workload medians and ratios, the
same dict that is saved with --json (`document`); `render_table(summary)`
prints it. Ratios are only ever between medians of the same run:
fsd/fuse-overlayfs and fsd/kernel (lower is better), and for w10 the
throughput of `layers import` over that of `tar -x` + `sha256sum` (higher is
better). A target is "ok", "MISS", or "?" when a side has no measurement.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from .workloads import GROUPS, IMPORT_BASELINE, IMPORT_OURS, WORKLOAD_GROUP

KERNEL, FUSE_OVERLAYFS, FSD = "kernel", "fuse-overlayfs", "fsd"
MOUNT_IMPLS = (KERNEL, FUSE_OVERLAYFS, FSD)
IMPORT_IMPLS = (IMPORT_BASELINE, IMPORT_OURS)
FORMAT = 1


@dataclass
class Results:
    runs: dict = field(default_factory=dict)  # wid -> impl -> [run dicts]

    def add(self, wid: str, impl: str, rep: int, seconds=None, cpu=None, info=None, error=None) -> None:
        run = {"rep": rep, "seconds": seconds, "cpu": cpu}
        if info:
            run["info"] = info
        if error is not None:
            run["error"] = error
        self.runs.setdefault(wid, {}).setdefault(impl, []).append(run)

    def errors(self) -> list[str]:
        return [f"{wid} {impl} rep {r['rep']}: {r['error']}"
                for wid, by_impl in self.runs.items() for impl, runs in by_impl.items()
                for r in runs if "error" in r]


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ratio(a, b):
    return a / b if a is not None and b else None


def _check(target: str, value) -> str:
    if not target:
        return ""
    if value is None:
        return "?"
    op, num = target.split()[:2]
    ok = value <= float(num) if op == "<=" else value >= float(num)
    return "ok" if ok else "MISS"


def summarize(results: Results) -> dict:
    """{wid: {title, group, target, runs, median, cpu_median, ratios, target_value, target_met}}."""
    out = {}
    for group in GROUPS.values():
        for w in group.workloads:
            if w.id not in results.runs:
                continue
            runs = results.runs[w.id]
            ok = {impl: [r for r in rs if "error" not in r] for impl, rs in runs.items()}
            median = {impl: _median([r["seconds"] for r in rs]) for impl, rs in ok.items()}
            cpu = {impl: _median([r["cpu"] for r in rs]) for impl, rs in ok.items()}
            if group.lowers:
                ratios = {"fsd/fuse-overlayfs": _ratio(median.get(FSD), median.get(FUSE_OVERLAYFS)),
                          "fsd/kernel": _ratio(median.get(FSD), median.get(KERNEL))}
                value = ratios["fsd/fuse-overlayfs"]
            else:
                ratios = {"import/baseline throughput": _ratio(median.get(IMPORT_BASELINE),
                                                               median.get(IMPORT_OURS))}
                value = ratios["import/baseline throughput"]
            verdict = _check(w.target, value)
            out[w.id] = {"title": w.title, "group": WORKLOAD_GROUP[w.id], "target": w.target,
                         "runs": runs, "median": median, "cpu_median": cpu, "ratios": ratios,
                         "target_value": value,
                         "target_met": {"ok": True, "MISS": False}.get(verdict)}
    return out


def document(summary: dict, meta: dict, errors: list[str]) -> dict:
    return {"format": FORMAT, **meta, "workloads": summary, "errors": errors}


def _s(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _r(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _cell(w: dict, impl: str) -> str:
    runs = w["runs"].get(impl)
    if not runs:
        return "-"
    if all("error" in r for r in runs):
        return "ERR"
    text = _s(w["median"].get(impl))
    return text + ("*" if any("error" in r for r in runs) else "")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(n) for c, n in zip(cells, widths)) + " |"  # noqa: E731
    return [line(header), "|" + "|".join("-" * (n + 2) for n in widths) + "|", *map(line, rows)]


def render_table(summary: dict) -> str:
    """The run as markdown tables: seconds are medians, CPU is daemon CPU seconds."""
    mount_rows, import_rows = [], []
    for wid, w in summary.items():
        target = f"{w['target']} {_check(w['target'], w['target_value'])}".strip() or "-"
        if GROUPS[w["group"]].lowers:
            mount_rows.append([wid, w["title"], *(_cell(w, i) for i in MOUNT_IMPLS),
                               _r(w["ratios"]["fsd/fuse-overlayfs"]), _r(w["ratios"]["fsd/kernel"]),
                               _s(w["cpu_median"].get(FSD)), _s(w["cpu_median"].get(FUSE_OVERLAYFS)),
                               target])
        else:
            import_rows.append([wid, w["title"], *(_cell(w, i) for i in IMPORT_IMPLS),
                                _r(w["ratios"]["import/baseline throughput"]),
                                _s(w["cpu_median"].get(IMPORT_OURS)), target])
    out = []
    if mount_rows:
        out += _table(["id", "workload", "kernel s", "fuse-overlayfs s", "fsd s", "fsd/f-o", "fsd/kernel",
                       "fsd cpu s", "f-o cpu s", "target fsd/f-o"], mount_rows)
    if import_rows:
        out += [""] if out else []
        out += _table(["id", "workload", f"{IMPORT_BASELINE} s", f"{IMPORT_OURS} s", "throughput ratio",
                       "import cpu s", "target"], import_rows)
    return "\n".join(out) + "\n"
