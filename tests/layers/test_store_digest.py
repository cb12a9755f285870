import hashlib
import io

import pytest

from layers.digest import Digest, HashingReader, chain_ids, check_id
from layers.errors import BadReference

HEX = "a" * 64


def test_parse_accepts_only_sha256_lowercase_hex():
    assert Digest.parse(f"sha256:{HEX}").hex == HEX
    assert str(Digest.parse(f"sha256:{HEX}")) == f"sha256:{HEX}"


@pytest.mark.parametrize("text", [
    f"sha256:{HEX.upper()}", f"sha512:{HEX}", f"sha256:{HEX[:-1]}", f"sha256:{HEX}0",
    HEX, f"sha256:../../{HEX[:58]}", f"sha256:{HEX[:63]}/", "", f" sha256:{HEX}",
    f"sha256:{HEX}\n",
])
def test_parse_refuses_anything_else(text):
    with pytest.raises(BadReference) as e:
        Digest.parse(text)
    assert str(e.value) == f"invalid digest: {text!r}"


def test_digest_value_checks_hex_too():
    with pytest.raises(BadReference):
        Digest("../etc/passwd" + "0" * 51)


def test_check_id():
    assert check_id(HEX) == HEX
    for bad in ("..", "a" * 63, "A" * 64, "a" * 64 + "/x"):
        with pytest.raises(BadReference):
            check_id(bad)


def test_chain_ids_follow_the_oci_formula():
    d1 = Digest.of_bytes(b"one")
    d2 = Digest.of_bytes(b"two")
    d3 = Digest.of_bytes(b"three")
    c = chain_ids([d1, d2, d3])
    assert c[0] == d1
    assert c[1].hex == hashlib.sha256(f"{d1} {d2}".encode()).hexdigest()
    assert c[2].hex == hashlib.sha256(f"{c[1]} {d3}".encode()).hexdigest()
    assert chain_ids([]) == []


def test_hashing_reader_counts_and_hashes_everything():
    data = bytes(range(256)) * 1000
    seen = []
    r = HashingReader(io.BytesIO(data), seen.append)
    assert r.read(10) == data[:10]
    buf = bytearray(100)
    assert r.readinto(buf) == 100
    r.drain(4096)
    assert r.count == len(data)
    assert r.digest() == Digest.of_bytes(data)
    assert seen[-1] == len(data)
