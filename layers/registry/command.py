"""`layers pull` and `layers push`: their arguments, what they print.

The store is the object `cli` passes in, not an import.

stdout: the image id (pull) or the manifest digest (push), or with
`--format json` the whole transfer report.  stderr: per layer, whether it
was reused or transferred and how many bytes, then a summary line (not with
`-q`); on a terminal, per-layer progress while it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from .. import progress, units
from .choices import COMPRESSIONS, DEFAULT_JOBS, FORMATS

if TYPE_CHECKING:
    from .session import PullReport, PushReport, RegistryOptions


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return n


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return n


def _common(c: argparse.ArgumentParser) -> None:
    c.add_argument("--tls-verify", type=_bool, nargs="?", const=True, default=None,
                   metavar="BOOL", help="verify TLS (default: true, unless registries.conf "
                                        "marks the registry insecure); false also allows "
                                        "plain HTTP")
    c.add_argument("--cert-dir", metavar="DIR",
                   help="CA certificates (*.crt) and client certificates (*.cert, *.key)")
    c.add_argument("--creds", metavar="USER:PASSWORD", help="credentials for the registry")
    c.add_argument("--authfile", metavar="FILE",
                   help="auth.json to read credentials from (default: podman's and docker's)")
    c.add_argument("--registries-conf", metavar="FILE", help="registries.conf to use")
    c.add_argument("-j", "--jobs", type=_positive, default=DEFAULT_JOBS, metavar="N",
                   help=f"layers transferred at once (default {DEFAULT_JOBS})")
    c.add_argument("--retries", type=_count, default=3, metavar="N",
                   help="retries of a failed request, with back-off (default 3)")
    c.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="network timeout (default 60)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress, no per-layer lines")
    c.add_argument("--format", dest="output", choices=("text", "json"), default="text",
                   help="json: the transfer report on stdout")


def add_parsers(sub) -> None:
    c = sub.add_parser("pull", help="pull an image from a registry (only the layers "
                                    "the store lacks)")
    c.add_argument("reference", metavar="[REGISTRY/]REPOSITORY[:TAG][@DIGEST]")
    c.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="from an image index (default: the host's)")
    c.add_argument("--name", metavar="NAME[:TAG]", help="name the image this, not the reference")
    c.add_argument("--lazy", action="store_true",
                   help="seekable (eStargz) layers: fetch only their tables of contents; "
                        "files come when first opened, the rest in the background "
                        "(fuse driver)")
    _common(c)

    c = sub.add_parser("push", help="push an image to a registry (only the blobs it lacks)")
    c.add_argument("image")
    c.add_argument("destination", nargs="?", metavar="[REGISTRY/]REPOSITORY[:TAG]",
                   help="default: the image's first name that names a registry")
    c.add_argument("--manifest-format", dest="manifest_format", choices=FORMATS,
                   default="oci", help="oci (default) or v2s2 (Docker)")
    c.add_argument("--compression-format", choices=COMPRESSIONS, default="gzip",
                   help="gzip (default), none, or estargz: seekable gzip layers that "
                        "can be pulled lazily (same diffIDs)")
    c.add_argument("--compression-level", type=int, choices=range(1, 10), default=6,
                   metavar="1-9")
    c.add_argument("--chunk-size", type=_count, default=0, metavar="BYTES",
                   help="upload in PATCH requests of this size (default: one PUT)")
    _common(c)


def options_from(args) -> RegistryOptions:
    # here, not at the top: the CLI builds this module's parsers for every
    # command, and these modules load the whole transfer code (`choices`)
    from .credentials import parse_creds
    from .remote import Platform
    from .session import RegistryOptions
    creds = parse_creds(args.creds) if args.creds else None
    platform = Platform.parse(args.platform) if getattr(args, "platform", None) else None
    return RegistryOptions(
        tls_verify=args.tls_verify, cert_dir=args.cert_dir, creds=creds,
        authfile=args.authfile, registries_conf=args.registries_conf,
        retries=args.retries, timeout=args.timeout, jobs=args.jobs, platform=platform,
        format=getattr(args, "manifest_format", "oci"),
        compression=getattr(args, "compression_format", "gzip"),
        compression_level=getattr(args, "compression_level", 6),
        chunk_size=getattr(args, "chunk_size", 0))


def cmd_pull(store, args) -> int:
    options = options_from(args)
    display = progress.for_terminal("pulling", args.quiet)
    report: PullReport = store.pull(args.reference, options, name=args.name,
                                    progress=display, lazy=args.lazy)
    return _done(args, display, report, [], pull_lines(report), report.image_id)


def _done(args, display, report: PullReport | PushReport, warnings: list[str],
          lines: list[str], answer: str) -> int:
    """The end of a pull or push: warnings, then the per-layer lines and the
    summary on stderr (only the summary on a terminal, whose display already
    showed each layer), then `answer` or the whole report as JSON on stdout."""
    if display:
        display.finish()
    for w in warnings:
        print(f"layers: warning: {w}", file=sys.stderr)
    if not args.quiet:
        for line in lines[-1 if display else 0:]:
            print(line, file=sys.stderr)
    if args.output == "json":
        print(json.dumps(report.as_dict(), indent=1))
    else:
        print(answer)
    return 0


def pull_lines(report: PullReport) -> list[str]:
    words = {"present": "already in the store", "parked": "kept from an interrupted pull",
             "fetched": "fetched", "lazy": "pulled lazily, its table of contents"}
    out = [f"{report.found_at}: passed over mirror {m}" for m in report.mirrors_passed]
    for t in report.layers:
        amount = f" {units.size(t.received)}" if t.received else ""
        if t.saved:
            amount += f" ({units.size(t.saved)} not fetched: files the store holds)"
        out.append(f"layer {t.index + 1}/{len(report.layers)} {t.blob.short}: "
                   f"{words[t.outcome]}{amount}")
    fetched = sum(1 for t in report.layers if t.outcome == "fetched")
    lazy = sum(1 for t in report.layers if t.outcome == "lazy")
    lazily = f", {lazy} lazy" if lazy else ""
    out.append(f"pulled {report.reference}: {fetched} layer(s) fetched{lazily} "
               f"({units.size(report.received)}), {len(report.layers) - fetched - lazy} "
               f"reused, in {report.seconds:.1f}s"
               + (f"; {units.size(report.saved)} saved by files the store holds"
                  if report.saved else ""))
    return out


def cmd_push(store, args) -> int:
    options = options_from(args)
    display = progress.for_terminal("pushing", args.quiet)
    report: PushReport = store.push(args.image, args.destination, options, progress=display)
    return _done(args, display, report, report.warnings, push_lines(report),
                 str(report.manifest_digest))


def push_lines(report: PushReport) -> list[str]:
    words = {"exists": "already in the registry", "mounted": "mounted from another repository",
             "uploaded": "uploaded"}
    out = []
    for i, b in enumerate(report.layers):
        amount = f" {units.size(b.sent)}" if b.sent else ""
        out.append(f"layer {i + 1}/{len(report.layers)} {b.digest.short}: "
                   f"{words[b.status]}{amount}")
    out.append(f"config {report.config.digest.short}: {words[report.config.status]}")
    uploaded = sum(1 for b in report.layers if b.status == "uploaded")
    out.append(f"pushed {report.destination}@{report.manifest_digest}: {uploaded} layer(s) "
               f"uploaded ({units.size(report.sent)}), {len(report.layers) - uploaded} reused, "
               f"in {report.seconds:.1f}s")
    return out


COMMANDS = {"pull": cmd_pull, "push": cmd_push}
