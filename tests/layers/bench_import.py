"""Import throughput: `layers import` of one tar against `sha256sum` + `tar -x`
of the same tar (+ sync, since the store syncs what it imports).

    .venv/bin/python tests/layers/bench_import.py [--mb 200] [--runs 5] [--gzip]

Builds the tar in a temp dir (files of mixed sizes, half random, half zeros),
prints the median and the best of each.  Not collected by pytest.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def build(top: str, mb: int, small: bool) -> str:
    rng = random.Random(1)
    src = os.path.join(top, "src")
    total, i = 0, 0
    while total < mb * 1_000_000:
        d = os.path.join(src, f"d{i // 100:04d}")
        os.makedirs(d, exist_ok=True)
        r = rng.random()
        if small:
            size = rng.randint(100, 16000)
        else:
            size = (rng.randint(100, 8000) if r < 0.7 else rng.randint(8000, 200_000)
                    if r < 0.97 else rng.randint(1_000_000, 8_000_000))
        with open(os.path.join(d, f"f{i}"), "wb") as f:
            f.write(os.urandom(size // 2) + bytes(size - size // 2))
        total += size
        i += 1
    tar = os.path.join(top, "big.tar")
    subprocess.run(["tar", "-C", src, "-cf", tar, "."], check=True)
    shutil.rmtree(src)
    return tar


def timed(cmd: str) -> float:
    subprocess.run("sync", shell=True)
    t = time.monotonic()
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--gzip", action="store_true")
    ap.add_argument("--small", action="store_true", help="many small files")
    args = ap.parse_args()
    layers = os.path.join(os.path.dirname(sys.executable), "layers")
    top = tempfile.mkdtemp(prefix="strata-bench-")
    try:
        tar = build(top, args.mb, args.small)
        xflag = "-xf"
        if args.gzip:
            subprocess.run(["gzip", "-1", tar], check=True)
            tar += ".gz"
            xflag = "-xzf"
        size = os.path.getsize(tar)
        out, root = os.path.join(top, "out"), os.path.join(top, "store")
        base, ours = [], []
        for _ in range(args.runs):
            os.mkdir(out)
            base.append(timed(f"sha256sum {tar} && tar -C {out} {xflag} {tar} && sync"))
            shutil.rmtree(out)
            ours.append(timed(f"{layers} --root {root} --runroot {top}/run --driver fuse "
                              f"import -q {tar}"))
            shutil.rmtree(root)
        for name, times in (("sha256sum + tar -x + sync", base), ("layers import", ours)):
            med, best = statistics.median(times), min(times)
            print(f"{name:28s} median {med:.2f}s ({size / med / 1e6:.0f} MB/s), "
                  f"best {best:.2f}s ({size / best / 1e6:.0f} MB/s)")
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
