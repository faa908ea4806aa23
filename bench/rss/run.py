#!/usr/bin/env python3
"""Peak RSS of `paravm run` with one 64 MiB guest (goal: <= 30 MB).

The baseline in the same run is the interpreter alone (`python -c pass`).
Each figure is the child's ru_maxrss, read by a fresh wrapper process that
runs exactly one child, so nothing else is counted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import REPO, machine_info, make, summary, table, write_results  # noqa: E402

HELLO = REPO / "examples/hello/hello.elf"
_WRAPPER = ("import resource, subprocess, sys; "
            "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode)")


def peak_rss_mb(argv: list[str]) -> float:
    out = subprocess.run([sys.executable, "-c", _WRAPPER, *argv], capture_output=True,
                         text=True, check=True).stdout.split()
    if out[1] != "0":
        sys.exit(f"bench: {' '.join(argv)} exited {out[1]}")
    return int(out[0]) / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="3 rounds")
    args = ap.parse_args()
    rounds = 3 if args.quick else args.rounds
    make(REPO / "guest", REPO / "examples")
    paravm_bin = REPO / ".venv/bin/paravm"
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "one.toml"
        manifest.write_text(f'[[domain]]\nname = "hello"\nimage = "{HELLO}"\nmemory = 64\n')
        cmd = [str(paravm_bin), "run", str(manifest)] if paravm_bin.exists() else \
            [sys.executable, "-m", "paravm", "run", str(manifest)]
        samples: dict[str, list[float]] = {"paravm run (64 MiB guest)": [], "python -c pass": []}
        for _ in range(rounds):
            samples["paravm run (64 MiB guest)"].append(peak_rss_mb(cmd))
            samples["python -c pass"].append(peak_rss_mb([sys.executable, "-c", "pass"]))
    med = {k: statistics.median(v) for k, v in samples.items()}
    data = {
        "benchmark": "rss",
        "description": "peak RSS (ru_maxrss) of paravm run with one 64 MiB hello guest",
        "unit": "MB (MiB)",
        "rounds": rounds,
        "peak_rss_mb": {k: summary(v) for k, v in samples.items()},
        "ratios": {
            "paravm / 30 MB goal": med["paravm run (64 MiB guest)"] / 30.0,
            "paravm / interpreter": med["paravm run (64 MiB guest)"] / med["python -c pass"],
        },
        "machine": machine_info(),
    }
    path = write_results("rss", data)
    print(table(["peak RSS (median)", "MiB"], [[k, f"{v:.1f}"] for k, v in med.items()]))
    for k, v in data["ratios"].items():
        print(f"{k}: {v:.2f}")
    print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
