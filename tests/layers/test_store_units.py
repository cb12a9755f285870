"""Sizes and ages for people (layers/units.py): podman's style, and the only
formatter of each in the package."""

import re
from pathlib import Path

import pytest

import layers
from layers import units

MiB = 1 << 20


@pytest.mark.parametrize("n, text", [
    (0, "0B"), (1, "1B"), (999, "999B"), (1000, "1kB"), (1023, "1.02kB"),
    (1_100_000, "1.1MB"), (MiB, "1.05MB"), (999_499, "999kB"), (999_999, "1MB"),
    (50 * MiB, "52.4MB"), (3 * (1 << 30) // 2, "1.61GB"), (5 * 10**12, "5TB"),
])
def test_sizes_are_decimal_with_three_digits(n, text):
    assert units.size(n) == text


@pytest.mark.parametrize("seconds, text", [
    (0.5, "less than a second ago"), (1, "1 second ago"), (59, "59 seconds ago"),
    (60, "1 minute ago"), (119, "1 minute ago"), (120, "2 minutes ago"),
    (3600, "1 hour ago"), (47 * 3600, "47 hours ago"), (48 * 3600, "2 days ago"),
    (14 * 86400, "2 weeks ago"), (60 * 86400, "2 months ago"), (800 * 86400, "2 years ago"),
])
def test_ages_say_one_minute_and_two_minutes(seconds, text):
    assert units.ago(1_000_000, now=1_000_000 + seconds) == text


def test_no_other_module_formats_sizes():
    """`_human`, `human` and a binary `size_text` were three formatters of
    one thing; a unit suffix written anywhere but units.py is a fourth."""
    suffix = re.compile(r"""["'](?:kB|MB|GB|KiB|MiB|GiB|TiB| B)["']|\b(?:days|minutes) ago""")
    found = [f"{p.name}: {m.group(0)}" for p in Path(layers.__file__).parent.rglob("*.py")
             if p.name != "units.py" for m in suffix.finditer(p.read_text())]
    assert found == []
