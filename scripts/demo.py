"""The demo behind scripts/run: a 3-layer sample image imported into a local\nstore, a container created from it and mounted through fsd."""

import os
import shutil
import subprocess
import sys
import tempfile

def write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def build_layers(top: str) -> list[str]:
    base, middle, app = (os.path.join(top, n) for n in ("base", "middle", "app"))
    write(f"{base}/etc/os-release", 'NAME="Strata sample"\nVERSION_ID=1\n')
    write(f"{base}/etc/motd", "welcome to the base layer\n")
    write(f"{base}/etc/legacy.conf", "this file is deleted by the middle layer\n")
    write(f"{base}/usr/bin/hello", "#!/bin/sh\necho hello from base\n", 0o755)
    write(f"{base}/usr/share/doc/readme", "base docs\n")
    # middle: delete a base file with an OCI whiteout, replace a dir (opaque)
    write(f"{middle}/etc/.wh.legacy.conf", "")
    write(f"{middle}/usr/share/doc/.wh..wh..opq", "")
    write(f"{middle}/usr/share/doc/NEWS", "the doc dir was replaced by the middle layer\n")
    # app layer on top
    write(f"{app}/app/main.sh", "#!/bin/sh\necho running the app\n", 0o755)
    write(f"{app}/etc/motd", "welcome to the app image\n")
    return [app, middle, base]


def show_tree(root: str) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        depth = 0 if rel == "." else rel.count("/") + 1
        print("  " * depth + (os.path.basename(dirpath) if rel != "." else "/") + ("/" if rel != "." else ""))
        for name in sorted(filenames):
            print("  " * (depth + 1) + name)


def run(*args: str, capture: bool = False) -> str:
    """Run a command, showing it as `layers ARGS` (the store options left out)."""
    shown = ("layers", *args[5:]) if args[0].endswith("/layers") else args
    print("$ " + " ".join(shown))
    out = subprocess.run(args, check=True, text=True, capture_output=capture)
    if capture and out.stdout.strip():
        print(out.stdout.rstrip())
    return out.stdout.strip() if capture else ""


def main() -> int:
    top = tempfile.mkdtemp(prefix="strata-demo-")
    bindir = os.path.dirname(sys.executable)
    layers = [os.path.join(bindir, "layers"), "--root", f"{top}/store", "--runroot", f"{top}/run"]
    mounted = None
    try:
        tars = []
        for layer in reversed(build_layers(f"{top}/src")):  # bottom first
            tar = f"{top}/{os.path.basename(layer)}.tar"
            subprocess.run(["tar", "--numeric-owner", "-C", layer, "-cf", tar, "."], check=True)
            tars.append(tar)
        print(f"# a store in {top}/store; a 3-layer sample image (base, middle with a whiteout and an opaque dir, app)")
        run(*layers, "import", "-q", *tars, "--name", "sample:1", capture=True)
        run(*layers, "images", capture=True)
        run(*layers, "create", "sample:1", "--name", "demo", capture=True)
        mounted = run(*layers, "mount", "demo", capture=True)
        print(f"\n# the container's merged view, served by fsd at {mounted}:")
        show_tree(mounted)
        print("\n$ cat /etc/motd")
        print(open(os.path.join(mounted, "etc/motd")).read(), end="")
        print("/etc/legacy.conf present:", os.path.exists(os.path.join(mounted, "etc/legacy.conf")),
              "(deleted by the middle layer's whiteout)")
        print("/usr/share/doc:", sorted(os.listdir(os.path.join(mounted, "usr/share/doc"))),
              "(replaced by an opaque dir)")
        print("\n# write and delete through the mount; the image's layers stay as they were")
        with open(os.path.join(mounted, "etc/motd"), "a") as f:
            f.write("a line written through the mount\n")
        os.unlink(os.path.join(mounted, "usr/bin/hello"))
        with open(os.path.join(mounted, "app/hello.txt"), "w") as f:
            f.write("new file\n")
        run(*layers, "diff", "demo", capture=True)
        run(*layers, "umount", "demo")
        mounted = None
        run(*layers, "rm", "demo")
        run(*layers, "rmi", "sample:1")
        run(*layers, "check")
        print("\nstore checked and cleaned up")
    finally:
        if mounted:
            subprocess.run([*layers, "umount", "demo"])
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
