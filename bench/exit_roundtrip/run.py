#!/usr/bin/env python3
"""Hypercall / exit round trip from ring 3: paravm vs a minimal C KVM loop doing the same exit.

Configurations, alternated round by round in one run (median of the rounds):

* ``c``            cvmm.c: port 0xE0, rax through KVM_CAP_SYNC_REGS (the baseline)
* ``c-getregs``    cvmm.c: the same with KVM_GET_REGS/KVM_SET_REGS instead
* ``c-block``      cvmm.c: port 0xE1 with the GPA of an argument block
* ``paravm-regs``  guest.c under paravm: pv_hypercall0(PV_HC_NOP)
* ``paravm-block`` guest.c under paravm: pv_hypercall_block, nr = PV_HC_NOP
* ``paravm-regs-unpinned`` the register form with ``Hypervisor(pin_vcpus=False)``:
  the baseline of paravm's choice to pin vCPU threads to host CPUs

Goal: paravm-regs / c <= 1.10.  Writes bench/results/exit_roundtrip.json.

    .venv/bin/python bench/exit_roundtrip/run.py [--n N] [--rounds R] [--quick] [--check]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402

NAME = "exit_roundtrip"
GOAL = 1.10
WARMUP = 1000   # guest.c's WARMUP
GUEST = HERE / "guest.elf"
CVMM = HERE / "cvmm"
C_MODES = ("c", "c-getregs", "c-block")
PARAVM_MODES = ("regs", "block")


def run_c(mode: str, n: int) -> dict[str, str]:
    return common.run_program([str(CVMM), mode, str(n), str(WARMUP)])


def run_paravm(hv, mode: str, n: int) -> dict[str, str]:
    d = hv.create_domain("bench", GUEST, memory_mib=16, vcpus=1, args=[str(n), mode])
    try:
        hv.start_all()
        result = d.wait(timeout=max(60.0, n * 1e-3))
        if result is None:
            raise SystemExit(f"bench: paravm {mode}: no result in time")
        if result.how != "exited" or result.status != 0:
            raise SystemExit(f"bench: paravm {mode}: guest {result.describe()}\n"
                             f"{d.console.text.strip()}")
        return common.parse_result(d.console.text)
    finally:
        hv.destroy(d)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="timed calls per run (default 20000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every configuration (default 3)")
    ap.add_argument("--quick", action="store_true", help="CI size: --n 2000 --rounds 1")
    ap.add_argument("--no-build", action="store_true", help="do not call make first")
    ap.add_argument("--check", action="store_true",
                    help=f"exit 1 when paravm-regs / c > {GOAL}")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.rounds = 2000, 1
    if args.n <= 0 or args.rounds <= 0:
        ap.error("--n and --rounds must be > 0")

    if not args.no_build:
        common.make(common.REPO / "guest", HERE)
    paravm = common.import_paravm()

    samples: dict[str, list[float]] = {m: [] for m in C_MODES}
    samples.update({f"paravm-{m}": [] for m in PARAVM_MODES})
    samples["paravm-regs-unpinned"] = []
    tsc: dict[str, list[float]] = {f"paravm-{m}": [] for m in PARAVM_MODES}
    t_start = time.monotonic()
    with paravm.Hypervisor(output=None) as hv, \
            paravm.Hypervisor(output=None, pin_vcpus=False) as hv_unpinned:
        for r in range(args.rounds):
            # Alternate C and paravm within each round, so drift hits both.
            for c_mode, pv_mode in zip(C_MODES, PARAVM_MODES + (None,)):
                samples[c_mode].append(float(run_c(c_mode, args.n)["ns_per_call"]))
                if pv_mode is not None:
                    res = run_paravm(hv, pv_mode, args.n)
                    samples[f"paravm-{pv_mode}"].append(float(res["ns_per_call"]))
                    tsc[f"paravm-{pv_mode}"].append(float(res["tsc_ns_per_call"]))
            samples["paravm-regs-unpinned"].append(
                float(run_paravm(hv_unpinned, "regs", args.n)["ns_per_call"]))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{k} {v[-1] / 1e3:.1f}" for k, v in samples.items()) + " us", file=sys.stderr)

    med = {k: common.summary(v)["median"] for k, v in samples.items()}
    # Runs of one round are seconds apart, so they share most of this machine's
    # slow drift: the median of the per-round ratios is the steadier figure.
    paired = {
        "paravm_regs/c": [p / c for p, c in zip(samples["paravm-regs"], samples["c"])],
        "paravm_block/c_block": [p / c for p, c in zip(samples["paravm-block"],
                                                       samples["c-block"])],
        "paravm_regs/paravm_regs_unpinned": [p / u for p, u in zip(
            samples["paravm-regs"], samples["paravm-regs-unpinned"])],
    }
    ratios = {
        "paravm_regs/c": med["paravm-regs"] / med["c"],
        "paravm_block/c": med["paravm-block"] / med["c"],
        "paravm_block/c_block": med["paravm-block"] / med["c-block"],
        "c_getregs/c": med["c-getregs"] / med["c"],
        "paravm_regs/paravm_regs_unpinned": med["paravm-regs"] / med["paravm-regs-unpinned"],
    }
    data = {
        "benchmark": NAME,
        "description": "hypercall / exit round trip from ring 3: paravm vs a minimal C KVM "
                       "loop doing the same exit (port I/O, result in rax via sync regs)",
        "n": args.n, "warmup": WARMUP, "rounds": args.rounds,
        "unit": "ns per call",
        "ns_per_call": {k: round(v, 1) for k, v in med.items()},
        "spread": {k: {s: round(x, 1) for s, x in common.summary(v).items()}
                   for k, v in samples.items()},
        "samples": samples,
        "paravm_tsc_ns_per_call": {k: round(common.summary(v)["median"], 1)
                                   for k, v in tsc.items()},
        "python_overhead_ns": {
            "paravm_regs - c": round(med["paravm-regs"] - med["c"], 1),
            "paravm_block - c_block": round(med["paravm-block"] - med["c-block"], 1),
        },
        "getregs_cost_ns": round(med["c-getregs"] - med["c"], 1),
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "ratios_paired": {k: round(common.summary(v)["median"], 3) for k, v in paired.items()},
        "goal": {"paravm_regs/c": GOAL, "met": ratios["paravm_regs/c"] <= GOAL},
        "machine": common.machine_info(),
        "seconds": round(time.monotonic() - t_start, 1),
    }
    path = common.write_results(NAME, data)

    rows = []
    for k in samples:
        s = data["spread"][k]
        base = med["c-block"] if k == "paravm-block" else med["c"]
        ratio = "" if k == "c" else f"{med[k] / base:.3f}"
        vs = "" if k == "c" else ("c-block" if k == "paravm-block" else "c")
        rows.append([k, f"{s['median'] / 1e3:.2f}", f"{s['min'] / 1e3:.2f}",
                     f"{s['max'] / 1e3:.2f}", ratio, vs])
    print(f"exit round trip from ring 3, n={args.n} x {args.rounds} rounds (median)")
    print(common.table(["config", "us/call", "min", "max", "ratio", "vs"], rows))
    verdict = "met" if data["goal"]["met"] else "NOT met"
    print(f"paravm_regs / c = {ratios['paravm_regs/c']:.3f} (goal <= {GOAL}: {verdict}; "
          f"median of per-round ratios {data['ratios_paired']['paravm_regs/c']:.3f}); "
          f"KVM_GET/SET_REGS adds {data['getregs_cost_ns'] / 1e3:.1f} us")
    print(f"wrote {path.relative_to(common.REPO)}")
    return 1 if args.check and not data["goal"]["met"] else 0


if __name__ == "__main__":
    sys.exit(main())
