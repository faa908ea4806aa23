"""Compile a small C program against the guest SDK headers, run it, read what it printed.

The ABI tests (grant, evtchn, lguest, pvz) check the C headers against the
Python declarations this way: the program prints ``name value`` lines
(sizes, offsets, constants); :func:`probe` returns them as a dict.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

INCLUDE = Path(__file__).resolve().parents[2] / "guest" / "include"


def probe(tmp_dir: Path, program: str, flags: tuple[str, ...] = ()) -> dict[str, int]:
    """Build *program* with ``gcc *flags* -I guest/include`` in *tmp_dir*,
    run it, and return its ``name value`` lines; skips the test without gcc."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    (tmp_dir / "p.c").write_text(program)
    subprocess.run(["gcc", *flags, "-I", str(INCLUDE), "-o", str(tmp_dir / "p"),
                    str(tmp_dir / "p.c")], check=True)
    out = subprocess.run([str(tmp_dir / "p")], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.rsplit(" ", 1) for line in out.splitlines())}


def py_offsets(s: struct.Struct) -> list[int]:
    """Offsets of the non-pad items of a little-endian struct.Struct format
    (a repeat count gives one item each, except for ``s``/``p`` strings)."""
    fmt = s.format.lstrip("<")
    offs, prefix = [], "<"
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt):
        if code in "sp":
            offs.append(struct.calcsize(prefix))
            prefix += count + code
            continue
        for _ in range(int(count or 1)):
            if code != "x":
                offs.append(struct.calcsize(prefix))
            prefix += code
    return offs
