"""bench-lazy's podman runs (issue 17): podman pulling the image itself
against podman taking its layers from the store's additional layer store
while they are still lazy. Rootful, fsd as podman's mount program in both.

  podman pull    `podman pull` of the first image (gzip) through the shaped
                 network + `podman run --rm` of the command
  podman + ALS   `layers pull --lazy` of the first image (eStargz) +
                 `layers als add` + `podman pull` (podman finds every layer in
                 `als/fsd`: it fetches the manifest and config only) +
                 `podman run --rm` of the command; the files the command
                 opens are fetched when podman's fsd opens them

Each on a fresh podman store (tests/support/podman.py: a private graphroot
in a sandbox, driven through an agent in a mount namespace of its own) and,
for the second, a fresh Strata store. The agent answers when a command has
ended, so the figure here is the command's end (`podman run` exits right
after the command's output), not its first output: the time from the start
until `podman run` returned, and the bytes fetched by then.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from . import lazyimage
from .lazystore import StepError, Store

REPO = Path(__file__).resolve().parents[2]
PODMAN_PULL, PODMAN_ALS = "podman pull", "podman + ALS"
MODES = (PODMAN_PULL, PODMAN_ALS)
INSECURE = "--tls-verify=false"


def _support():
    """The podman tests' support module (it imports pytest: not at import
    time, so that `scripts/bench-lazy -h` runs without the venv)."""
    sys.path.insert(0, str(REPO / "tests"))
    from support import podman
    return podman


def why_not() -> str | None:
    """None when podman can run here (installed with apt when missing), else why not."""
    return _support().ensure_podman()


class PodmanRun:
    """One podman mode once: `go()` puts its figures into `result`; a
    StepError ends it; `close()` removes both stores."""

    def __init__(self, mode: str, rep: int, top: Path, proxy, images, spec: dict, timeout: float):
        self.mode, self.rep = mode, rep
        self.proxy, self.images, self.spec = proxy, images, spec
        self.result: dict = {"rep": rep}
        self.strata = Store(top, timeout) if mode == PODMAN_ALS else None
        support = _support()
        self.run_opts = support.RUN_OPTS
        self.box = support.Sandbox(None, prefix="strata-bench-lazy-podman-")
        try:
            stores = (str(self.strata.root / "als" / "fsd"),) if self.strata else ()
            self.podman = support.PodmanStore(self.box, rootless=False, timeout=timeout, layer_stores=stores)
        except BaseException:
            self.box.cleanup()
            if self.strata is not None:
                self.strata.close()
            raise

    def _podman(self, *args: str) -> str:
        r = self.podman(*args, check=False)
        if r.returncode:
            tail = " | ".join(r.stderr.strip().splitlines()[-3:])
            raise StepError(f"podman {' '.join(args[:2])}: exit {r.returncode}: {tail}{self._logs()}")
        return r.stdout

    def _logs(self) -> str:
        """The last lines podman's fsd daemons and the store's fetcher logged:
        why a read failed."""
        logs = sorted(self.podman.logdir.glob("*.log"))
        if self.strata is not None:
            logs += sorted((self.strata.top / "run").rglob("*.log"))
        lines = [f"{p.name}: {line}" for p in logs
                 for line in p.read_text(errors="replace").strip().splitlines()[-3:]]
        return "; logged: " + " | ".join(lines) if lines else ""

    def go(self) -> None:
        r = self.result
        fmt = "estargz" if self.mode == PODMAN_ALS else "gzip"
        ref = self.images.via(self.proxy, "first", fmt)
        self.proxy.reset()
        t0 = time.perf_counter()
        if self.strata is not None:
            self.strata("pull", "-q", INSECURE, "--lazy", ref)
            self.strata("als", "add", ref)
        self._podman("pull", "-q", INSECURE, ref)
        r["pull_s"] = time.perf_counter() - t0
        r["fetched_after_pull"] = self.proxy.counters().down
        out = self._podman("run", "--rm", *self.run_opts, ref, *lazyimage.COMMAND[self.spec["kind"]])
        r["done_s"] = time.perf_counter() - t0
        r["run_s"] = r["done_s"] - r["pull_s"]
        r["fetched_done"] = self.proxy.counters().down
        if out != self.spec["expected_output"]:
            raise StepError(f"the command printed {out[:200]!r}, not {self.spec['expected_output']!r}")

    def close(self) -> list[str]:
        problems = self.podman.close() + self.box.cleanup()
        if self.strata is not None:
            problems += self.strata.close()
        return problems
