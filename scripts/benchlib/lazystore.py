"""A private layer store of bench-lazy, driven through the `layers` CLI as a
user would (each command its own process: its start-up is part of what is
measured).

    store = Store(top, timeout)    # top/root, top/run, its own empty configs
    store("pull", ...)             # stdout; StepError naming the command when it fails
    store.close()                  # `layers reset -f`, then what was left behind
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from .mounts import unmount_leftovers

REPO = Path(__file__).resolve().parents[2]
LAYERS = REPO / ".venv" / "bin" / "layers"


class StepError(Exception):
    """A step of a run failed; str(self) is one line."""


class Store:
    """A private store (fuse driver), with its own empty registries.conf and
    storage.conf, driven through the CLI."""

    def __init__(self, top: Path, timeout: float):
        self.top = top
        self.root = top / "root"
        self.timeout = timeout
        home = top / "home"
        for d in (home / "run", home / "config"):
            d.mkdir(parents=True, exist_ok=True)
        (top / "registries.conf").write_text("")
        (top / "storage.conf").write_text("")
        self.env = {k: v for k, v in os.environ.items() if k != "REGISTRY_AUTH_FILE"}
        self.env.update({"STRATA_REGISTRIES_CONF": str(top / "registries.conf"),
                         "STRATA_STORAGE_CONF": str(top / "storage.conf"),
                         "HOME": str(home), "XDG_RUNTIME_DIR": str(home / "run"),
                         "XDG_CONFIG_HOME": str(home / "config"), "DOCKER_CONFIG": str(home / "docker")})

    def __call__(self, *args: str) -> str:
        """What the command printed; StepError when it failed. Its output goes
        to files, not pipes: a process it leaves running (the fetcher a lazy
        pull starts) could hold a pipe open and make the command look as long
        as that process's life."""
        argv = [str(LAYERS), "--root", str(self.root), "--runroot", str(self.top / "run"),
                "--driver", "fuse", *args]
        out_path, err_path = self.top / "layers.out", self.top / "layers.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                code = subprocess.run(argv, env=self.env, stdout=out, stderr=err, timeout=self.timeout,
                                      stdin=subprocess.DEVNULL).returncode
            except subprocess.TimeoutExpired:
                raise StepError(f"layers {' '.join(args)}: still running after {self.timeout:.0f}s") from None
        if code:
            tail = " | ".join(err_path.read_text(errors="replace").strip().splitlines()[-3:])
            raise StepError(f"layers {' '.join(args)}: exit {code}: {tail}")
        return out_path.read_text(errors="replace")

    def layer_diffs(self, image: str) -> list[Path]:
        doc = json.loads(self("inspect", image))
        return [self.root / "layers" / layer.split(":", 1)[1] / "diff" for layer in doc["layers"]]

    def close(self) -> list[str]:
        """Remove the store (unmounting what is mounted); what went wrong."""
        problems = []
        if self.root.exists():
            try:
                self("reset", "-f")
            except StepError as exc:
                problems.append(str(exc))
        for pid in _processes_naming(self.top):
            problems.append(f"a process still running after `layers reset` of its store: {pid} "
                            f"{_cmdline(pid)[:200]}; killed")
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        left = unmount_leftovers(self.top)
        if left:
            problems.append(f"left mounted and now unmounted: {left}")
        shutil.rmtree(self.top, ignore_errors=True)
        return problems


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _processes_naming(path: Path) -> list[int]:
    """Processes whose command line names something under path (a fetcher, an fsd)."""
    needle = str(path) + "/"
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and int(d) != os.getpid()
            and needle in _cmdline(int(d))]
