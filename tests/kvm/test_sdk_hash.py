"""The SDK's SHA-256 and CRC-32 inside a real guest (tests/guests/hash.c) give
hashlib's and zlib's results on the same bytes, with every implementation the
vCPU has, and the guest gets the SHA extensions and PCLMULQDQ where the host
has them.  The guest also prints its throughput; the test shows the figures
but asserts none (speed is measured in bench/, not in tests)."""

import hashlib
import re
import zlib
from pathlib import Path

import pytest

import paravm

pytestmark = pytest.mark.kvm

SEED = 0x5EED1234
CHECK_OFFSET, CHECK_LEN = 1, 1024 * 1024 + 77    # as hash.c
MASK64 = (1 << 64) - 1


def splitmix64_bytes(seed: int, n: int) -> bytes:
    """The first *n* bytes of hash.c's data: splitmix64 words, little endian."""
    out, state = bytearray(), seed
    for _ in range((n + 7) // 8):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        out += (z ^ (z >> 31)).to_bytes(8, "little")
    return bytes(out[:n])


def host_has(*flags: str) -> bool:
    text = Path("/proc/cpuinfo").read_text()
    m = re.search(r"^flags\s*:(.*)$", text, re.M)
    return m is not None and set(flags) <= set(m.group(1).split())


def test_guest_hashes_match_hashlib_and_zlib(test_guests):
    with paravm.Hypervisor(output=None) as hv:
        d = hv.create_domain("hash", test_guests / "hash.elf", memory_mib=64,
                             args=[hex(SEED), "16"])
        d.start()
        r = d.wait(120)
    out = d.console.text
    assert r is not None and r.how == "exited" and r.status == 0, (r, out)
    assert out.endswith("done\n"), out

    data = splitmix64_bytes(SEED, CHECK_OFFSET + CHECK_LEN)[CHECK_OFFSET:]
    sha, crc = hashlib.sha256(data).hexdigest(), f"{zlib.crc32(data):08x}"
    want_sha = ["sha-ni", "generic"] if host_has("sha_ni", "ssse3", "sse4_1") else ["generic"]
    want_crc = ["pclmul", "table"] if host_has("pclmulqdq") else ["table"]

    assert re.findall(r"^impl sha256 (\S+)$", out, re.M) == want_sha[:1]
    assert re.findall(r"^impl crc32 (\S+)$", out, re.M) == want_crc[:1]
    assert re.findall(r"^sha256 (\S+) ([0-9a-f]{64})$", out, re.M) == [(w, sha) for w in want_sha]
    assert re.findall(r"^crc32 (\S+) ([0-9a-f]{8})$", out, re.M) == [(w, crc) for w in want_crc]

    rates = re.findall(r"^MB/s (\S+) (\d+)$", out, re.M)
    assert [name for name, _ in rates] == (
        (["sha256-sha-ni"] if "sha-ni" in want_sha else [])
        + (["crc32-pclmul"] if "pclmul" in want_crc else [])
        + [f"pipeline-{want_sha[0]}-{want_crc[0]}", "sha256-generic", "crc32-table"])
    print("\nguest throughput over 16 MiB in 64 KiB chunks (best of 3):")
    for name, mbps in rates:
        print(f"  {name:28} {int(mbps):6} MB/s")
