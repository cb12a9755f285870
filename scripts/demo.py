"""The sample image behind scripts/run: three layers mounted by fsd."""

import os
import shutil
import subprocess
import sys
import tempfile

FSD = os.path.join(os.path.dirname(sys.executable), "fsd")


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


def main() -> int:
    top = tempfile.mkdtemp(prefix="strata-demo-")
    mnt = os.path.join(top, "merged")
    upper, work = os.path.join(top, "upper"), os.path.join(top, "work")
    for d in (mnt, upper, work):
        os.mkdir(d)
    lowers = build_layers(top)
    opts = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
    print(f"$ fsd -o {opts} {mnt}")
    subprocess.run([FSD, "-o", opts, mnt], check=True)
    try:
        print("\nmerged tree:")
        show_tree(mnt)
        print("\n$ cat /etc/motd")
        print(open(os.path.join(mnt, "etc/motd")).read(), end="")
        print("\n/etc/legacy.conf present:", os.path.exists(os.path.join(mnt, "etc/legacy.conf")),
              "(deleted by the middle layer's whiteout)")
        print("/usr/share/doc:", sorted(os.listdir(os.path.join(mnt, "usr/share/doc"))),
              "(replaced by an opaque dir)")
        with open(os.path.join(mnt, "etc/motd"), "a") as f:
            f.write("a line written through the mount\n")
        os.unlink(os.path.join(mnt, "usr/bin/hello"))
        print("\nafter appending to /etc/motd and deleting /usr/bin/hello, the upper holds:")
        for dirpath, _, filenames in os.walk(upper):
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                kind = "whiteout" if (st.st_mode & 0o170000) == 0o020000 else f"{st.st_size} bytes"
                print(f"  {os.path.relpath(path, upper)}  ({kind})")
        print("the base layer is untouched:", open(os.path.join(lowers[2], "etc/motd")).read().strip())
    finally:
        subprocess.run(["fusermount3", "-u", mnt], check=True)
        print(f"\nunmounted {mnt}")
        shutil.rmtree(top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
