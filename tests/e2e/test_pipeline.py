"""The main job end to end: ``paravm run examples/pipeline/pipeline.toml --input FILE``.

Each case runs the real command (a fresh ``python -m paravm``), so the
manifest, the host program, the CLI's exit status and the printed lines are
what a user gets; the digest, CRC and byte count printed are checked against
hashlib and zlib computed here.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.kvm

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "pipeline"
MANIFEST = EXAMPLE / "pipeline.toml"


@pytest.fixture(scope="module", autouse=True)
def built():
    subprocess.run(["make", "-s", "-C", str(REPO / "examples")], check=True)


def run(manifest, input_path, *extra, timeout=120):
    return subprocess.run([sys.executable, "-m", "paravm", "run", str(manifest),
                           "--input", str(input_path), "--timeout", "100", *extra],
                          capture_output=True, text=True, timeout=timeout)


def host_lines(out: str) -> dict[str, str]:
    """The host's ``key value`` lines (sha256, crc32, bytes, MB/s) and its verdict."""
    lines = {}
    for line in out.splitlines():
        if m := re.fullmatch(r"host\| (sha256|crc32|bytes|MB/s) +(.*)", line):
            lines[m[1]] = m[2]
        elif m := re.fullmatch(r"host\| (OK|MISMATCH.*)", line):
            lines["verdict"] = m[1]
    return lines


def write_file(tmp_path, size: int, seed: int = 0) -> Path:
    path = tmp_path / f"in-{size}.bin"
    data = bytearray()
    block = hashlib.sha256(f"{seed}".encode()).digest()
    while len(data) < size:           # deterministic, not all zero, different per block
        block = hashlib.sha256(block).digest()
        data += block
    path.write_bytes(bytes(data[:size]))
    return path


@pytest.mark.parametrize("size", [0, 1, 511, 513, (1 << 20) + 3])
def test_pipeline_matches_hashlib(tmp_path, size):
    path = write_file(tmp_path, size, seed=size)
    data = path.read_bytes()
    p = run(MANIFEST, path)
    got = host_lines(p.stdout)
    assert p.returncode == 0, p.stdout + p.stderr
    assert got["verdict"] == "OK", p.stdout
    assert got["sha256"] == hashlib.sha256(data).hexdigest()     # lowercase hex
    assert got["crc32"] == f"{zlib.crc32(data):08x}"
    assert int(got["bytes"]) == size
    assert re.match(r"\d+\.\d ", got["MB/s"])
    assert f"hashed {size} bytes" in p.stdout and f"read {size} bytes" in p.stdout


def test_pipeline_64_mib_random(tmp_path):
    path = tmp_path / "random.bin"
    data = os.urandom(64 << 20)
    path.write_bytes(data)
    p = run(MANIFEST, path)
    got = host_lines(p.stdout)
    assert p.returncode == 0, p.stdout + p.stderr
    assert got == {"sha256": hashlib.sha256(data).hexdigest(),
                   "crc32": f"{zlib.crc32(data):08x}", "bytes": str(64 << 20),
                   "MB/s": got["MB/s"], "verdict": "OK"}


def corrupted_manifest(tmp_path, flip: int) -> Path:
    """The example's manifest with the reader flipping one bit at byte *flip*."""
    text = MANIFEST.read_text().replace('args = ["reader", "0"]',
                                        f'args = ["reader", "0", "flip={flip}"]')
    assert f"flip={flip}" in text
    text = text.replace('image = "pipeline.elf"', f'image = "{EXAMPLE / "pipeline.elf"}"')
    text = text.replace('program = "host.py"', f'program = "{EXAMPLE / "host.py"}"')
    path = tmp_path / "corrupt.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("flip", [0, 70000])
def test_injected_corruption_is_a_mismatch(tmp_path, flip):
    path = write_file(tmp_path, 100000)
    data = bytearray(path.read_bytes())
    p = run(corrupted_manifest(tmp_path, flip), path)
    got = host_lines(p.stdout)
    assert p.returncode == 1, p.stdout + p.stderr
    assert got["verdict"].startswith("MISMATCH: sha256: guests ")
    assert "crc32: guests" in got["verdict"] and "bytes" not in got["verdict"]
    data[flip] ^= 1                        # what the guests hashed
    assert got["sha256"] == hashlib.sha256(data).hexdigest()
    assert f"hashlib {hashlib.sha256(path.read_bytes()).hexdigest()}" in got["verdict"]


def test_without_input_the_manifest_is_refused():
    p = subprocess.run([sys.executable, "-m", "paravm", "run", str(MANIFEST)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "domain[0].device[0].path: {input} stands for the file of" in p.stderr
    assert "Traceback" not in p.stderr


def test_a_missing_input_is_refused(tmp_path):
    p = run(MANIFEST, tmp_path / "nope")
    assert p.returncode == 2
    assert f"--input: file not found: {tmp_path / 'nope'}" in p.stderr
