#!/usr/bin/env python3
"""The main job's speed: examples/pipeline against the disk path alone and sha256sum.

One file of ``--mib`` MiB of random bytes (a temporary directory; read once
first so the page cache is warm for everyone). Each round runs, in an order
that alternates by round:

* ``pipeline``: examples/pipeline/pipeline.toml with the file as ``--input``,
  in this process through the Python API: the domains are created and
  started, then the example's host program (``host.py``'s ``main``) runs on
  this thread as ``paravm run`` would run it. MB/s = file bytes / the time
  from ``start_all()`` to the host having the hasher's result (what host.py
  prints as ``MB/s``; it includes both guests' boot, a few ms).
* ``disk``: the lguest block device's read alone: the same guest program as
  the pipeline's reader (``pipeline reader -1``: the same 256 KiB reads of
  the same file through ``lguest_blk_read``, the data dropped instead of
  sent), the only domain. MB/s = file bytes / ``start_all()`` to the domain
  having stopped. Same definition as the pipeline's (boot included).
* ``sha256sum``: coreutils ``sha256sum FILE`` on the host, wall time of the
  process (MB/s = bytes / time).

Ratios are medians of per-round ratios: pipeline / disk (goal ≥ 0.70: the
pipeline is bounded by the disk path) and pipeline / sha256sum. The guests'
own TSC figures (the reader's read loop, the hasher's stream) are kept in
the JSON as well. 1 MB = 10^6 bytes.

    .venv/bin/python bench/pipeline/run.py [--rounds R] [--quick] [--mib M]

Writes bench/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (REPO, import_paravm, machine_info, make, summary,  # noqa: E402
                    table, write_results)

EXAMPLE = REPO / "examples" / "pipeline"
GOAL = 0.70


def _pipeline(paravm, path: Path) -> dict:
    from paravm.config import load_manifest
    from paravm.hostprog import HostRun, load_program
    lines: list[str] = []
    manifest = load_manifest(EXAMPLE / "pipeline.toml", input=path)
    main = load_program(manifest.host.program)
    with paravm.Hypervisor(output=lambda name, line: lines.append(f"{name}| {line}")) as hv:
        hv.create_from_manifest(manifest)
        run = HostRun(hv, manifest, terminal=False)     # run.started: the clock starts
        hv.start_all()
        status = main(run)
        res = hv.wait_all(60)
    if status != 0 or res is None or any(r.exit_code for r in res.values()):
        sys.exit("bench: the pipeline failed:\n" + "\n".join(lines))
    text = "\n".join(lines)
    m = re.search(r"host\| MB/s +([\d.]+) \(([\d.]+) s .*hasher's stream ([\d.]+) MB/s", text)
    reader = re.search(r"reader\| read \d+ bytes in [\d.]+ ms: (\d+) MB/s", text)
    if not (m and reader):
        sys.exit("bench: no MB/s in the pipeline's output:\n" + text)
    return {"mb_per_s": float(m[1]), "seconds": float(m[2]), "hasher_stream": float(m[3]),
            "reader_loop": float(reader[1])}


def _disk(paravm, path: Path, size: int) -> dict:
    from paravm.config import parse_manifest
    text = (f'[[domain]]\nname = "reader"\nimage = "{EXAMPLE / "pipeline.elf"}"\nmemory = 8\n'
            f'args = ["reader", "-1"]\n[[domain.device]]\ntype = "block"\n'
            f'path = "{path}"\nreadonly = true\n')
    manifest = parse_manifest(text, EXAMPLE / "disk.toml")
    lines: list[str] = []
    with paravm.Hypervisor(output=lambda name, line: lines.append(line)) as hv:
        hv.create_from_manifest(manifest)
        t0 = time.monotonic()
        hv.start_all()
        res = hv.wait_all(60)
        seconds = time.monotonic() - t0
    if res is None or res["reader"].exit_code != 0:
        sys.exit("bench: the disk-only reader failed:\n" + "\n".join(lines))
    reader = re.search(r"read \d+ bytes in [\d.]+ ms: (\d+) MB/s", "\n".join(lines))
    return {"mb_per_s": size / seconds / 1e6, "seconds": seconds,
            "reader_loop": float(reader[1]) if reader else None}


def _sha256sum(path: Path, size: int) -> dict:
    t0 = time.monotonic()
    subprocess.run(["sha256sum", str(path)], check=True, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - t0
    return {"mb_per_s": size / seconds / 1e6, "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="64 MiB, 3 rounds")
    ap.add_argument("--mib", type=int, default=None, help="file size (default 256 MiB)")
    ap.add_argument("--check", action="store_true", help="exit 1 if the goal is not met")
    args = ap.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    mib = args.mib or (64 if args.quick else 256)
    if shutil.which("sha256sum") is None:
        sys.exit("bench: sha256sum is not installed (coreutils)")
    make(REPO / "guest", REPO / "examples")
    paravm = import_paravm()
    size = mib << 20
    samples: dict[str, list[dict]] = {"pipeline": [], "disk": [], "sha256sum": []}
    with tempfile.TemporaryDirectory(prefix="paravm-bench-") as tmp:
        path = Path(tmp) / "input.bin"
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
        path.read_bytes()                     # warm the page cache
        kinds = ["pipeline", "disk", "sha256sum"]
        for r in range(rounds):
            order = kinds if r % 2 == 0 else kinds[::-1]
            for kind in order:
                if kind == "pipeline":
                    samples[kind].append(_pipeline(paravm, path))
                elif kind == "disk":
                    samples[kind].append(_disk(paravm, path, size))
                else:
                    samples[kind].append(_sha256sum(path, size))
            print(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{k} {samples[k][-1]['mb_per_s']:.0f} MB/s" for k in kinds), flush=True)
    mbs = {k: [s["mb_per_s"] for s in v] for k, v in samples.items()}
    ratio_disk = [p / d for p, d in zip(mbs["pipeline"], mbs["disk"])]
    ratio_sum = [p / s for p, s in zip(mbs["pipeline"], mbs["sha256sum"])]
    ratios = {"pipeline/disk": statistics.median(ratio_disk),
              "pipeline/sha256sum": statistics.median(ratio_sum)}
    data = {
        "benchmark": "pipeline",
        "description": __doc__.split("\n\n")[0],
        "machine": machine_info(),
        "rounds": rounds, "quick": args.quick,
        "config": {"file_bytes": size, "chunk_bytes": 262144, "ivc_nframes": 8},
        "mb_per_s": {k: summary(v) for k, v in mbs.items()},
        "guest_mb_per_s": {
            "pipeline reader loop": summary([s["reader_loop"] for s in samples["pipeline"]]),
            "pipeline hasher stream": summary([s["hasher_stream"] for s in samples["pipeline"]]),
            "disk reader loop": summary([s["reader_loop"] for s in samples["disk"]
                                         if s["reader_loop"] is not None] or [0.0]),
        },
        "samples": samples,
        "ratios": ratios,
        "per_round_ratios": {"pipeline/disk": ratio_disk, "pipeline/sha256sum": ratio_sum},
        "goal": {"pipeline/disk": GOAL},
    }
    out = write_results("pipeline", data)
    print(table(["", "MB/s (median)", "min", "max"],
                [[k, f"{v['median']:.0f}", f"{v['min']:.0f}", f"{v['max']:.0f}"]
                 for k, v in data["mb_per_s"].items()]))
    met = ratios["pipeline/disk"] >= GOAL
    print(f"pipeline / disk alone: {ratios['pipeline/disk']:.2f}x (goal ≥ {GOAL:.2f}: "
          f"{'met' if met else 'not met'}); pipeline / sha256sum: "
          f"{ratios['pipeline/sha256sum']:.2f}x")
    print(f"wrote {out}")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
