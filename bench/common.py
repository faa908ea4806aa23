"""Helpers shared by the benchmarks under bench/: build, parse, summarise, write JSON.

Every benchmark prints lines ``RESULT key=value ...`` from the programs it
times (guests and baselines alike), takes the median over alternating
rounds, and writes ``bench/results/<name>.json`` with the machine it ran on.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
SRC = REPO / "src"


def import_paravm():
    """Import paravm from this checkout (also when run without the venv's
    editable install on sys.path)."""
    try:
        import paravm  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(SRC))
    import paravm
    return paravm


def make(*dirs: Path) -> None:
    """``make -C dir`` for each dir; exits with make's output if one fails."""
    for d in dirs:
        p = subprocess.run(["make", "-s", "-C", str(d)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        if p.returncode != 0:
            sys.stderr.write(p.stdout)
            sys.exit(f"bench: make -C {d} failed (exit {p.returncode})")


def make_target(d: Path, target: str) -> None:
    """``make -C d target``; exits with make's output if it fails."""
    p = subprocess.run(["make", "-s", "-C", str(d), target], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout)
        sys.exit(f"bench: make -C {d} {target} failed (exit {p.returncode})")


def parse_result(text: str) -> dict[str, str]:
    """The fields of the last ``RESULT k=v ...`` line in *text*."""
    found = None
    for line in text.splitlines():
        if line.startswith("RESULT "):
            found = line
    if found is None:
        raise ValueError(f"no RESULT line in output:\n{text.strip()}")
    return dict(f.split("=", 1) for f in found.split()[1:] if "=" in f)


def run_program(argv: list[str], timeout: float = 300) -> dict[str, str]:
    """Run a baseline program; its RESULT fields (exits with its stderr on failure)."""
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        sys.exit(f"bench: {' '.join(argv)} failed (exit {p.returncode}):\n{p.stderr.strip()}")
    return parse_result(p.stdout)


def summary(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def machine_info() -> dict[str, object]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_results(name: str, data: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A plain text table, first column left-aligned, others right-aligned."""
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths)))
    lines = [fmt(headers), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


def result_fields(line: str) -> dict[str, str]:
    """The ``k=v`` fields of one ``RESULT ...`` line."""
    return dict(x.split("=", 1) for x in line.split()[1:] if "=" in x)


def run_marked_guests(paravm, manifest, timeout: float, what: str, on_mark,
                      timing: bool = False, on_created=None) -> dict:
    """Run every guest of *manifest* to the end; exit the benchmark with their
    consoles if one fails or they do not finish in *timeout* s.  Each console
    line ``MARK ...`` calls ``on_mark(domain, line)`` in the vCPU thread, inside
    that line's console-write exit (so a stats snapshot there sees exactly the
    exits before it).  Returns the RESULT fields by ``(domain name, id field)``."""
    hv_box: list = []

    def sink(name: str, line: str) -> None:
        if line.startswith("MARK "):
            on_mark(hv_box[0].domains[name], line)

    def dump(texts: dict[str, str]) -> str:
        return "\n".join(f"--- {n}\n{t.strip()[-2000:]}" for n, t in texts.items())

    with paravm.Hypervisor(output=sink, timing=timing) as hv:
        hv_box.append(hv)
        doms = hv.create_from_manifest(manifest)
        if on_created is not None:
            on_created(doms)
        hv.start_all()
        res = hv.wait_all(timeout)
        texts = {d.name: d.console.text for d in doms}
        if res is None:
            sys.exit(f"bench: {what} guests did not finish in time:\n" + dump(texts))
        bad = {n: r for n, r in res.items() if r.how != "exited" or r.status != 0}
        if bad:
            sys.exit(f"bench: {what} guest failed: "
                     + ", ".join(f"{n}: {r.describe()}" for n, r in bad.items())
                     + "\n" + dump(texts))
    results = {}
    for name, text in texts.items():
        for line in text.splitlines():
            if line.startswith("RESULT "):
                f = result_fields(line)
                results[(name, int(f["id"]))] = f
    return results
