"""`layers`: the command line of the store.

Every user error prints one line `layers: MESSAGE` on stderr and exits
non-zero (2 for bad usage or references, 1 otherwise); a traceback only with
`--debug`.  Output meant for scripts goes to stdout, one item a line;
progress and warnings go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from . import config, progress, units
from .errors import ConfigError, LayersError, UsageError
from .registry import command as registrycmd
from .store import Store


def _limit_arg(parse, flag: str):
    def convert(text: str) -> int | None:
        try:
            return parse(text, flag, flag[2:])
        except ConfigError as e:
            raise argparse.ArgumentTypeError(e.reason) from None
    return convert


PRUNE_HELP = {   # command → (its help, that of -a)
    "container": ("remove every unmounted container, with the changes it holds", None),
    "image": ("remove dangling images (no name, no container)",
              "every image no container uses"),
    "system": ("remove unmounted containers, dangling images, with --volumes anonymous "
               "volumes no container uses, then the layers nothing uses",
               "every image no container uses, not only dangling ones"),
}


def _add_prune(parsers, prune: str, help: str, all_help: str | None) -> None:
    c = parsers.add_parser("prune", help=help, description=help)
    if all_help:
        c.add_argument("-a", "--all", action="store_true", help=all_help)
    if prune == "system":
        c.add_argument("--volumes", action="store_true",
                       help="also the anonymous volumes no container uses")
    c.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    c.add_argument("--dry-run", action="store_true", help="say what would go")
    c.set_defaults(prune=prune)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="layers",
                                description="Strata: content-addressed layer store",
                                epilog=f"{config.WHERE_READ}; `layers info` names the "
                                       "one read.")
    p.add_argument("--root", help="store root (graphroot)")
    p.add_argument("--runroot", help="runtime dir (mount registry)")
    p.add_argument("--driver", choices=config.DRIVERS,
                   help="storage driver for a new store")
    p.add_argument("--lock-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for the store lock (default 30)")
    p.add_argument("--debug", action="store_true", help="tracebacks on errors")
    p.add_argument("--version", action=_VersionAction)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    # parsers of command groups (`layers volume …`), by name; their
    # subparsers' dest is NAME_command
    groups = p.groups = {}

    c = sub.add_parser("import", help="import a layer tar, OCI layout or docker archive; "
                                      "several layer tars stack into one image")
    c.add_argument("paths", nargs="+", metavar="PATH")
    c.add_argument("--name", help="NAME[:TAG] for the imported image")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress display")

    c = sub.add_parser("images", help="list images")
    c.add_argument("-q", "--quiet", action="store_true", help="ids only")
    c.add_argument("--format", choices=("table", "json"), default="table")

    c = sub.add_parser("inspect", help="JSON description of a container, image or layer")
    c.add_argument("ref")

    c = sub.add_parser("tag", help="add names to an image")
    c.add_argument("image")
    c.add_argument("names", nargs="+")

    c = sub.add_parser("rmi", help="remove an image (or one of its names)")
    c.add_argument("images", nargs="+")
    c.add_argument("-f", "--force", action="store_true",
                   help="also remove containers using it")

    c = sub.add_parser("create", help="create a container from an image")
    c.add_argument("image")
    c.add_argument("--name")
    c.add_argument("-v", "--volume", action="append", default=[], metavar="SPEC",
                   help="NAME:/path[:ro] (named volume, made when missing), "
                        "/host/path:/path[:ro] (bind), /path (anonymous volume)")
    c.add_argument("--tmpfs", action="append", default=[], metavar="/path[:OPTS]",
                   help="a tmpfs, OPTS like size=64m,mode=1777")
    c.add_argument("--size", type=_limit_arg(config.parse_size, "--size"),
                   metavar="N[KMG]", help="limit of its writable layer in bytes "
                   "(default: storage.conf size); the fuse driver only")
    c.add_argument("--inodes", type=_limit_arg(config.parse_count, "--inodes"),
                   metavar="N", help="limit of the objects in its writable layer "
                   "(default: storage.conf inodes); the fuse driver only")

    c = sub.add_parser("mount", help="mount a container, print its mount point")
    c.add_argument("container")

    c = sub.add_parser("umount", help="unmount a container (one user fewer)")
    c.add_argument("container")
    c.add_argument("-f", "--force", action="store_true", help="unmount whatever the count")

    c = sub.add_parser("rm", help="remove a container")
    c.add_argument("containers", nargs="+")
    c.add_argument("-f", "--force", action="store_true", help="unmount it first")
    c.add_argument("-v", "--volumes", action="store_true",
                   help="also its anonymous volumes no other container uses")

    v = sub.add_parser("volume", help="named volumes: create, ls, inspect, rm, prune")
    groups["volume"] = v
    vsub = v.add_subparsers(dest="volume_command", metavar="COMMAND")
    c = vsub.add_parser("create", help="create a volume (a random name when none)")
    c.add_argument("name", nargs="?")
    c.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE")
    c = vsub.add_parser("ls", help="list volumes")
    c.add_argument("-q", "--quiet", action="store_true", help="names only")
    c.add_argument("--format", choices=("table", "json"), default="table")
    c = vsub.add_parser("inspect", help="JSON description of volumes")
    c.add_argument("names", nargs="+")
    c = vsub.add_parser("rm", help="remove volumes and their data")
    c.add_argument("names", nargs="+")
    c.add_argument("-f", "--force", action="store_true",
                   help="also remove the containers using them")
    _add_prune(vsub, "volume", "remove the anonymous volumes no container uses",
               all_help="every volume no container uses, named ones too")

    a = sub.add_parser("als", help="serve images to podman as an additional layer store "
                                   "(its layers are not pulled again; lazy ones stay lazy)")
    groups["als"] = a
    asub = a.add_subparsers(dest="als_command", metavar="COMMAND")
    c = asub.add_parser("add", help="serve an image; prints the storage.conf lines podman needs")
    c.add_argument("image")
    c.add_argument("--mount-lazy", action="store_true",
                   help="its lazy layers to the kernel overlay too, through read-only fsd "
                        "mounts (a daemon per layer)")
    c = asub.add_parser("rm", help="serve an image no more")
    c.add_argument("image")
    asub.add_parser("ls", help="list the images served")

    c = sub.add_parser("ps", help="list containers")
    c.add_argument("-q", "--quiet", action="store_true", help="ids only")
    c.add_argument("--format", choices=("table", "json"), default="table")

    c = sub.add_parser("diff", help="paths a container added (A), changed (C), deleted (D)")
    c.add_argument("container")
    c.add_argument("--format", choices=("text", "json"), default="text")

    c = sub.add_parser("analyze", help="layer efficiency of an image: what each layer adds, "
                                       "changes, deletes, and the bytes later layers wasted")
    c.add_argument("image")
    c.add_argument("--format", choices=("text", "json"), default="text")
    c.add_argument("--top", type=int, default=10, help="largest wasted paths shown")

    c = sub.add_parser("bundle", help="write an OCI runtime bundle (config.json) for a "
                                      "container; it stays mounted until `umount`")
    c.add_argument("container")
    c.add_argument("dir")
    c.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                   help="instead of the image's command")

    c = sub.add_parser(
        "commit", help="a new image: the container's image plus its changes as one layer "
                       "(SOURCE_DATE_EPOCH clamps times)",
        description="A new image: the container's image plus its changes as one layer. "
                    "SOURCE_DATE_EPOCH clamps times. A mounted container (fuse driver) is "
                    "committed as it was at one instant: fsd lets the changes in flight end "
                    "and holds new ones until the layer is read, so the layer has every "
                    "write, rename or delete that had returned by then and none that had "
                    "not; a file being written by several writes may be caught between two "
                    "of them, as a crash would leave it. Processes in the container only "
                    "wait meanwhile. Other drivers commit only an unmounted container.")
    c.add_argument("container")
    c.add_argument("name", nargs="?", metavar="NAME[:TAG]")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress display")

    c = sub.add_parser("export", help="a tar of a container's merged tree, or of one "
                                      "layer's changeset")
    c.add_argument("ref", metavar="CONTAINER|LAYER")
    c.add_argument("-o", "--output", required=True, metavar="FILE")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress display")

    c = sub.add_parser("save", help="write an image as an OCI image layout")
    c.add_argument("image")
    c.add_argument("-o", "--output", required=True, metavar="DIR|FILE",
                   help="a directory (existing, or ending with /) or a tar file")
    c.add_argument("--format", choices=("oci-dir", "oci-archive"),
                   help="directory or tar, whatever the name of the output")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress display")

    registrycmd.add_parsers(sub)
    sub.add_parser("fetcher", help="complete the store's lazy layers, answering fsd's "
                                   "requests (started by pull --lazy and mount)")

    sub.add_parser("config", help="print the effective configuration")

    c = sub.add_parser("info", help="the store's facts; warns when its filesystem is a "
                                    "network one or lacks xattrs or d_type")
    c.add_argument("--format", choices=("text", "json"), default="text")

    c = sub.add_parser("df", help="disk used by images, containers and volumes")
    c.add_argument("-v", "--verbose", action="store_true", help="per image, container, volume")
    c.add_argument("--format", choices=("table", "json"), default="table")

    # podman's prunes: `container|image|volume|system prune`, and `prune`
    # for `system prune`; each asks first on a terminal
    for name, what in (("container", "remove unmounted containers"),
                       ("image", "remove unused images"),
                       ("system", "remove what nothing uses (as `prune`)")):
        g = sub.add_parser(name, help=f"{name} prune: {what}")
        groups[name] = g
        _add_prune(g.add_subparsers(dest=f"{name}_command", metavar="COMMAND"), name,
                   *PRUNE_HELP[name])
    _add_prune(sub, "system", *PRUNE_HELP["system"])

    c = sub.add_parser("check", help="compare records with the disk; exit 1 on problems")
    c.add_argument("--verify", action="store_true",
                   help="also rebuild every layer's tar and compare it with its diffID")
    c.add_argument("--repair", action="store_true",
                   help="fix what can be fixed and say what was removed")

    c = sub.add_parser("reset", help="unmount everything and remove the store")
    c.add_argument("-f", "--force", action="store_true", help="really do it")
    return p


def _version() -> str:
    from importlib import metadata      # here: 30 ms of every command's start-up else
    try:
        return metadata.version("strata")
    except metadata.PackageNotFoundError:
        return "unknown"


class _VersionAction(argparse.Action):
    """`--version`: the version looked up only when asked (argparse's own
    action wants it at start-up, and the package metadata took 5-10 ms of
    every command's)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kw):
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0,
                         help="show the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"layers {_version()}")
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = _help_or_run(parser, args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (`layers info | head -1`): the rest of the output
        # is not wanted, which is no failure; nothing more may reach stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except LayersError as e:
        if args.debug:
            traceback.print_exc()
        print(f"layers: {e}", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        print("layers: interrupted", file=sys.stderr)
        code = 130
    except OSError as e:
        if args.debug:
            traceback.print_exc()
        where = f": {e.filename}" if e.filename else ""
        print(f"layers: {e.strerror or e}{where}", file=sys.stderr)
        code = 1
    except Exception as e:  # a bug: say so, in one line unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"layers: internal error: {type(e).__name__}: {e} "
              "(--debug shows a traceback)", file=sys.stderr)
        code = 70
    if argv is None:
        sys.exit(code)
    return code


def _help_or_run(parser: argparse.ArgumentParser, args) -> int:
    """A command group named without a command (`layers`, `layers volume`):
    its help on stdout and exit 0, as with `-h`."""
    if args.command is None:
        parser.print_help()
        return 0
    group = parser.groups.get(args.command)
    if group is not None and getattr(args, f"{args.command}_command") is None:
        group.print_help()
        return 0
    return _run(args)


def _run(args) -> int:
    cfg = config.load(root=args.root, runroot=args.runroot, driver=args.driver)
    for w in cfg.warnings:
        print(f"layers: warning: {w}", file=sys.stderr)
    if args.command == "config":
        print(json.dumps(cfg.as_dict(), indent=2))
        return 0
    if args.command == "reset":
        if not args.force:
            raise UsageError("reset removes the whole store; repeat with -f")
    store = Store.open(cfg, lock_timeout=args.lock_timeout)
    _warn(store.warnings)
    return COMMANDS[args.command](store, args)


def _cmd_import(store: Store, args) -> int:
    display = progress.for_terminal("importing", args.quiet)
    images = store.import_path(args.paths, name=args.name, progress=display)
    for line in store.notes:
        print(f"layers: {line}", file=sys.stderr)
    for image in images:
        print(image.id)
    return 0


def _cmd_images(store: Store, args) -> int:
    images = store.list_images()
    if args.quiet:
        for i in images:
            print(i.id)
    elif args.format == "json":
        print(json.dumps([{"id": i.id, "names": list(i.names),
                           "layers": [str(x) for x in i.layers],
                           "size": store.image_size(i), "created": i.created}
                          for i in images], indent=1))
    else:
        rows = [("IMAGE ID", "NAMES", "LAYERS", "SIZE", "CREATED")]
        for i in images:
            rows.append((i.id[:12], ",".join(i.names) or "<none>", str(len(i.layers)),
                         units.size(store.image_size(i)), units.ago(i.created)))
        _table(rows)
    return 0


def _cmd_inspect(store: Store, args) -> int:
    print(json.dumps(store.inspect(args.ref), indent=2))
    return 0


def _cmd_tag(store: Store, args) -> int:
    store.tag(args.image, args.names)
    return 0


def _cmd_rmi(store: Store, args) -> int:
    for ref in args.images:
        for line in store.rmi(ref, force=args.force):
            print(line)
    return 0


def _cmd_create(store: Store, args) -> int:
    print(store.create(args.image, name=args.name, volumes=args.volume,
                       tmpfs=args.tmpfs, size=args.size, inodes=args.inodes).id)
    return 0


def _cmd_mount(store: Store, args) -> int:
    print(store.mount(args.container))
    return 0


def _cmd_umount(store: Store, args) -> int:
    store.umount(args.container, force=args.force)
    return 0


def _cmd_rm(store: Store, args) -> int:
    for ref in args.containers:
        print(store.rm(ref, force=args.force, volumes=args.volumes).id)
    return 0


def _cmd_ps(store: Store, args) -> int:
    states = store.list_containers()
    if args.quiet:
        for s in states:
            print(s.container.id)
    elif args.format == "json":
        print(json.dumps([{"id": s.container.id, "name": s.container.name,
                           "image": s.container.image, "driver": s.container.driver,
                           "mountpoint": s.mount.mountpoint if s.mount else None,
                           "mount_count": s.mount.count if s.mount else 0}
                          for s in states], indent=1))
    else:
        rows = [("CONTAINER ID", "NAME", "IMAGE", "DRIVER", "MOUNTED")]
        for s in states:
            rows.append((s.container.id[:12], s.container.name, s.container.image[:12],
                         s.container.driver,
                         f"{s.mount.count}x {s.mount.mountpoint}" if s.mount else "-"))
        _table(rows)
    return 0


def _cmd_diff(store: Store, args) -> int:
    changes = store.diff(args.container)
    if args.format == "json":
        print(json.dumps([{"kind": k, "path": p} for k, p in changes], indent=1))
    else:
        for kind, path in changes:
            sys.stdout.write(f"{kind} {os.fsencode(path).decode(errors='backslashreplace')}\n")
    return 0


def _cmd_analyze(store: Store, args) -> int:
    report = store.analyze(args.image)
    if args.format == "json":
        print(json.dumps(report.to_json(args.top), indent=1))
        return 0
    rows = [("LAYER", "SIZE", "ADDED", "CHANGED", "DELETED", "WASTED")]
    for lr in report.layers:
        rows.append((lr.id.split(":")[-1][:12], units.size(lr.size), str(lr.count("A")),
                     str(lr.count("C")), str(lr.count("D")), units.size(lr.wasted_bytes)))
    _table(rows)
    print(f"efficiency: {report.efficiency * 100:.1f}%")
    print(f"wasted: {units.size(report.wasted_bytes)} ({report.wasted_bytes} bytes) of "
          f"{units.size(report.total_bytes)} in files")
    if report.wasted_paths[:args.top]:
        print("largest wasted paths:")
        _table([("COPIES", "BYTES", "PATH")] + [
            (str(w.copies), units.size(w.bytes),
             os.fsencode(w.path).decode(errors="backslashreplace"))
            for w in report.wasted_paths[:args.top]])
    return 0


def source_date_epoch() -> int | None:
    """$SOURCE_DATE_EPOCH (reproducible builds), None when unset or empty."""
    text = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not text:
        return None
    if not text.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH must be a number of seconds, not {text!r}")
    return int(text)


def _cmd_bundle(store: Store, args) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    print(store.bundle(args.container, args.dir, argv or None))
    return 0


def _cmd_commit(store: Store, args) -> int:
    display = progress.for_terminal("committing", args.quiet)
    print(store.commit(args.container, args.name, epoch=source_date_epoch(),
                       progress=display).id)
    return 0


def _warn(lines: list[str]) -> None:
    for line in lines:
        print(f"layers: warning: {line}", file=sys.stderr)


def _cmd_export(store: Store, args) -> int:
    display = progress.for_terminal("exporting", args.quiet)
    _warn(store.export(args.ref, args.output, epoch=source_date_epoch(), progress=display))
    return 0


def _cmd_save(store: Store, args) -> int:
    as_tar = None if args.format is None else args.format == "oci-archive"
    display = progress.for_terminal("saving", args.quiet)
    _warn(store.save(args.image, args.output, as_tar=as_tar, progress=display))
    return 0


def _cmd_volume(store: Store, args) -> int:
    cmd = args.volume_command
    if cmd == "create":
        labels = {}
        for item in args.label:
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise UsageError(f"label {item!r} is not KEY=VALUE")
            labels[key] = value
        print(store.volume_create(args.name, labels).name)
    elif cmd == "ls":
        volumes = store.list_volumes()
        users = store.volume_users()
        if args.quiet:
            for v in volumes:
                print(v.name)
        elif args.format == "json":
            print(json.dumps([store.volume_inspect(v.name) for v in volumes], indent=1))
        else:
            rows = [("NAME", "ANONYMOUS", "CONTAINERS", "CREATED")]
            for v in volumes:
                rows.append((v.name, "yes" if v.anonymous else "no",
                             ",".join(sorted(users.get(v.name, []))) or "-",
                             units.ago(v.created)))
            _table(rows)
    elif cmd == "inspect":
        print(json.dumps([store.volume_inspect(n) for n in args.names], indent=2))
    elif cmd == "rm":
        for name in args.names:
            for line in store.volume_rm(name, force=args.force):
                print(line)
    elif cmd == "prune":
        return _cmd_prune(store, args)
    return 0


def _cmd_als(store: Store, args) -> int:
    for line in store.als(args.als_command, getattr(args, "image", None),
                          getattr(args, "mount_lazy", False)):
        print(line)
    return 0


def _cmd_df(store: Store, args) -> int:
    usage = store.df()
    if args.format == "json":
        print(json.dumps([u.as_dict() for u in usage], indent=1))
        return 0
    rows = [("TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE")]
    for u in usage:
        share = f" ({100 * u.reclaimable / u.size:.0f}%)" if u.size else ""
        rows.append((u.kind, str(u.total), str(u.active), units.size(u.size),
                     units.size(u.reclaimable) + share))
    _table(rows)
    lazy = [i["lazy"] for i in usage[0].items if i["lazy"]]
    if lazy:
        print(f"lazy layers: {sum(z['layers'] for z in lazy)}, "
              f"{units.size(sum(z['fetched'] for z in lazy))} of "
              f"{units.size(sum(z['total'] for z in lazy))} fetched")
    if args.verbose:
        images, containers, volumes = usage
        print()
        rows = [("IMAGE ID", "NAMES", "SIZE", "SHARED", "UNIQUE", "CONTAINERS")]
        for i in images.items:
            rows.append((i["id"][:12], ",".join(i["names"]) or "<none>",
                         units.size(i["size"]), units.size(i["shared"]),
                         units.size(i["unique"]), str(i["containers"])))
        _table(rows)
        print()
        rows = [("CONTAINER ID", "NAME", "IMAGE", "SIZE", "MOUNTED", "QUOTA")]
        for c in containers.items:
            rows.append((c["id"][:12], c["name"], c["image"][:12], units.size(c["size"]),
                         "yes" if c["mounted"] else "no", _quota_text(c["quota"])))
        _table(rows)
        if store.config.user_quota is not None:
            u = store.user_usage()
            print(f"user quota of uid {u.uid}: {units.size(u.used)} of "
                  f"{units.size(u.limit)} in {u.containers} container(s)")
        print()
        rows = [("VOLUME", "ANONYMOUS", "SIZE", "CONTAINERS")]
        for v in volumes.items:
            rows.append((v["name"], "yes" if v["anonymous"] else "no", units.size(v["size"]),
                         ",".join(v["containers"]) or "-"))
        _table(rows)
    return 0


def _quota_text(quota: dict | None) -> str:
    """A container's writable layer against its limits: `12.5MB of 52.4MB,
    7 of 1000 inodes`; `-` without limits."""
    if quota is None:
        return "-"
    used = units.size(quota["used_bytes"])
    parts = [f"{used} of {units.size(quota['bytes'])}" if quota["bytes"] is not None
             else used]
    if quota["inodes"] is not None:
        parts.append(f"{quota['used_inodes']} of {quota['inodes']} inodes")
    return ", ".join(parts)


def _cmd_info(store: Store, args) -> int:
    facts, warnings = store.info()
    _warn([w for w in warnings if w not in store.warnings])   # those said at opening
    if args.format == "json":
        print(json.dumps({**facts, "warnings": warnings}, indent=1))
        return 0
    fs, limits = facts["filesystem"], facts["limits"]
    where = f"{fs['fstype']} ({fs['source']} at {fs['mountpoint']})" if fs["fstype"] \
        else "unknown"
    space = f", {units.size(fs['free'])} free of {units.size(fs['size'])}" if "size" in fs else ""
    user = "none" if limits["user_quota"] is None else units.size(limits["user_quota"])
    for key, value in (
            ("root", facts["root"]), ("runroot", facts["runroot"]),
            ("driver", facts["driver"]), ("driver chosen", facts["driver_reason"]),
            ("storage.conf", facts["storage_conf"] or "none, defaults"),
            ("filesystem", where + space),
            ("xattrs", "yes" if fs["xattrs"] else "no"),
            ("d_type", "yes" if fs["d_type"] else "no"),
            ("layers", facts["layers"]), ("images", facts["images"]),
            ("containers", facts["containers"]), ("volumes", facts["volumes"]),
            ("container size", "no limit" if limits["size"] is None
             else units.size(limits["size"])),
            ("container inodes", "no limit" if limits["inodes"] is None
             else limits["inodes"]),
            ("user quota", f"{user}; uid {limits['uid']} uses "
                           f"{units.size(limits['user_usage'])} in "
                           f"{limits['user_containers']} container(s)")):
        print(f"{key}: {value}")
    return 0


def _print_prune(items: list[tuple[str, int | None]], dry_run: bool) -> None:
    verb = "would remove" if dry_run else "removed"
    freed = 0
    for label, size in items:
        print(f"{verb} {label}" + (f" ({units.size(size)})" if size else ""))
        freed += size or 0
    print(f"{'would free' if dry_run else 'freed'} {units.size(freed)} ({freed} bytes)")


def _prune_scope(args) -> tuple[tuple[str, ...], list[str]]:
    """(kinds of records, what the question lists) of a prune command."""
    every = getattr(args, "all", False)
    containers = "all unmounted containers, with the changes they hold"
    images = "all images no container uses" if every else "all dangling images"
    volumes = "all volumes no container uses" if every and args.prune == "volume" \
        else "all anonymous volumes no container uses"
    if args.prune == "container":
        return ("containers",), [containers]
    if args.prune == "image":
        return ("images",), [images]
    if args.prune == "volume":
        return ("volumes",), [volumes]
    if args.volumes:
        return ("containers", "images", "volumes"), [containers, images, volumes]
    return ("containers", "images"), [containers, images]


def _confirmed(what: list[str]) -> bool:
    """podman's question, on the terminal; UsageError without one."""
    if not sys.stdin.isatty():
        raise UsageError("prune asks before it removes, and there is no terminal to "
                         "ask on: use -f")
    sys.stderr.write("WARNING! This command removes:\n"
                     + "".join(f"  - {w}\n" for w in what)
                     + "  - the layers nothing uses then\n"
                     + "Are you sure you want to continue? [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _cmd_prune(store: Store, args) -> int:
    """`container|image|volume|system prune` and `prune`: ask, then remove.
    Stale lock files go with a system prune, silently: they are the store's
    own debris, nothing a user made."""
    kinds, what = _prune_scope(args)
    if not (args.force or args.dry_run) and not _confirmed(what):
        return 0
    _print_prune(store.prune(kinds, all=getattr(args, "all", False), dry_run=args.dry_run),
                 args.dry_run)
    if args.prune == "system" and not args.dry_run:
        store.remove_stale_locks()
    return 0


def _cmd_check(store: Store, args) -> int:
    for line in store.repaired:
        print(line)
    problems = store.problems(verify=args.verify)
    for p in problems:
        print(p.message if p.severity == "error" else f"note: {p.message}")
    errors = [p for p in problems if p.severity == "error"]
    if args.repair and errors:
        for line in store.repair_problems(errors):
            print(line)
        errors = [p for p in store.problems(verify=args.verify) if p.severity == "error"]
        for p in errors:
            print(f"left: {p.message}")
    return 1 if errors else 0


def _cmd_fetcher(store: Store, args) -> int:
    return store.serve_fetcher()


def _cmd_reset(store: Store, args) -> int:
    for line in store.reset():
        print(line)
    return 0


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


COMMANDS = {
    "import": _cmd_import, "images": _cmd_images, "inspect": _cmd_inspect,
    "tag": _cmd_tag, "rmi": _cmd_rmi, "create": _cmd_create, "mount": _cmd_mount,
    "umount": _cmd_umount, "rm": _cmd_rm, "ps": _cmd_ps, "diff": _cmd_diff,
    "check": _cmd_check, "reset": _cmd_reset, "commit": _cmd_commit,
    "export": _cmd_export, "save": _cmd_save,
    "volume": _cmd_volume, "df": _cmd_df, "info": _cmd_info, "prune": _cmd_prune,
    "container": _cmd_prune, "image": _cmd_prune, "system": _cmd_prune,
    "bundle": _cmd_bundle, "analyze": _cmd_analyze, "als": _cmd_als,
    "fetcher": _cmd_fetcher,
}
COMMANDS.update(registrycmd.COMMANDS)


if __name__ == "__main__":      # `python -m layers.cli`: how the fetcher is started
    main()
