"""Fixtures for tests that mount for real.

mount_fsd           FsdRunner: `mount_fsd(lowers, upper=None, work=None, extra_opts=())`
                    starts fsd in the background and returns an FsdMount once it
                    is mounted; `.run(args)` / `.popen(args)` start fsd with any
                    command line. Whatever a test mounted or started is unmounted
                    and its daemon made to exit at teardown, even on failure; a
                    daemon that dies while mounted, or does not exit after the
                    unmount, fails the test.
mount_kernel_overlay `mount_kernel_overlay(lowers, upper=None, work=None, opts=())`
                    mounts the kernel overlay and returns the mountpoint.
fsd_log             every mount made through mount_fsd logs (`-o logfile=`) into
                    one directory per test; an ERROR/CRITICAL line there fails the
                    test unless it is marked `@pytest.mark.fsd_errors_expected(
                    "regex", ...)` (no argument: any error) or calls
                    `fsd_log.expect_errors(...)`.
fuse_deadline       FUSE connections of a test still running after its deadline
                    (default 60 s, `@pytest.mark.fuse_deadline(seconds)`) are
                    aborted, so a hung daemon fails the test instead of hanging
                    the suite.

Real-mount tests skip, naming the reason, when not root or /dev/fuse is missing.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import mounts, rootless  # noqa: E402
from support.fixtures import DEFAULT_DEADLINE, Deadline, FsdLog, FsdRunner, KernelOverlay  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "fsd_errors_expected(*regexes): ERROR lines in the fsd log matching one of "
        "the regexes (any, without arguments) do not fail the test")
    config.addinivalue_line(
        "markers", "fuse_deadline(seconds): abort the test's FUSE connections after this long")


# -- skip conditions -----------------------------------------------------------

@pytest.fixture(scope="module")
def user() -> rootless.User:
    """The unprivileged test user of support/rootless.py (made once)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if shutil.which("useradd") is None:
        pytest.skip("needs useradd")
    return rootless.ensure_user()


@pytest.fixture
def needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (mknod, chown, trusted.* xattrs)")


@pytest.fixture
def fuse_root():
    reason = mounts.why_no_fuse()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def kernel_overlay_ok():
    reason = mounts.why_no_kernel_overlay()
    if reason:
        pytest.skip(reason)


# -- fsd log -------------------------------------------------------------------

@pytest.fixture
def fsd_log(request, tmp_path):
    log = FsdLog(tmp_path / "fsd-logs")
    marker = request.node.get_closest_marker("fsd_errors_expected")
    if marker:
        log.expect_errors(*marker.args)
    yield log
    bad = log.unexpected_errors()
    if bad:
        pytest.fail("fsd logged errors:\n" + "\n".join(bad[:30]), pytrace=False)


# -- deadline ------------------------------------------------------------------

@pytest.fixture
def fuse_deadline(request):
    marker = request.node.get_closest_marker("fuse_deadline")
    d = Deadline(float(marker.args[0]) if marker else DEFAULT_DEADLINE)
    yield d
    d.cancel()
    if d.fired:
        pytest.fail(f"test ran past its {d.seconds:.0f}s deadline; its FUSE connections were "
                    "aborted (a hung daemon?)", pytrace=False)


# -- fsd -------------------------------------------------------------------------

@pytest.fixture
def mount_fsd(fuse_root, tmp_path, fsd_log, fuse_deadline, request):
    runner = FsdRunner(tmp_path, fsd_log, fuse_deadline)
    yield runner
    problems = runner.cleanup()
    failed = getattr(request.node, "rep_call", None)
    if problems and not (failed and failed.failed):
        pytest.fail("mount cleanup: " + "; ".join(problems), pytrace=False)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.when == "call":
        item.rep_call = rep
    return rep


# -- kernel overlay --------------------------------------------------------------

@pytest.fixture
def mount_kernel_overlay(kernel_overlay_ok, tmp_path):
    k = KernelOverlay(tmp_path)
    yield k
    k.cleanup()
