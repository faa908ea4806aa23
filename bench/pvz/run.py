#!/usr/bin/env python3
"""PVZ: call round trip against a bare hypercall; GPU commands/s of two guests by priority.

Guests are ``tests/guests/pvz.elf`` (the modes ``calls`` and ``loop``; this
script builds them):

1. **Call round trip**: a guest times N ``PvzClientDestroyDevConfig`` calls
   (client lock, ``struct pvz_msg`` on the stack, hypercall ``pvz_call``, the
   VMM's checks and OSID stamp, the server's gate and lock, the message
   written back) and then N bare hypercalls (``HC_NOP``: the same port-I/O
   exit, nothing done); ns per call of each, and the ratio.  Median over
   rounds (a new guest per round).
2. **Commands/s by priority**: two guests (OSIDs 1 and 2) each drive the
   example GPU for SECS seconds at the same time, keeping their queues (63
   slots) full of 64 KiB FILLs (an interrupt every 16 commands says when to
   refill), so the firmware always has work from both.  Run twice in each
   round: with equal priorities (the baseline: the firmware's round robin),
   and with OSID 1 at priority 4 and OSID 2 at 1 (the firmware runs the
   higher one's commands first at every command boundary).  Reports each
   guest's commands/s and its share of all commands.

No goals (issue 6 sets none).  Writes bench/results/pvz.json.

    .venv/bin/python bench/pvz/run.py [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402

NAME = "pvz"
GUESTS = common.REPO / "tests" / "guests"
GUEST = GUESTS / "pvz.elf"
FILL = 65536          # bytes per FILL command


def manifest(config, domains):
    """*domains*: ``(name, args, osid, priority)``."""
    text = '[pvz]\norigin = "guest"\nfw_heap_size = 1048576\n\n'
    for name, args, osid, prio in domains:
        quoted = ", ".join(f'"{a}"' for a in args)
        text += (f'[[domain]]\nname = "{name}"\nimage = "{GUEST}"\nmemory = 32\n'
                 f"args = [{quoted}]\npvz = {{ osid = {osid}, priority = {prio} }}\n\n")
    return config.parse_manifest(text, HERE / "bench.toml")


def run(paravm, config, domains, timeout: float) -> dict[str, dict[str, str]]:
    with paravm.Hypervisor(output=None) as hv:
        doms = hv.create_from_manifest(manifest(config, domains))
        hv.start_all()
        if hv.wait_all(timeout) is None:
            sys.exit("bench/pvz: guests did not finish:\n"
                     + "\n".join(d.console.text[-1000:] for d in doms))
        out = {}
        for d in doms:
            if d.result.how != "exited" or d.result.status:
                sys.exit(f"bench/pvz: guest {d.name} failed:\n{d.console.text[-2000:]}")
            out[d.name] = common.parse_result(d.console.text)
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--check", action="store_true", help="accepted for bench/run; no goals")
    args = ap.parse_args()
    rounds = 2 if args.quick else args.rounds
    calls = 2000 if args.quick else 10000
    secs = 1 if args.quick else 3
    common.make(common.REPO / "guest", GUESTS)
    paravm = common.import_paravm()
    from paravm import config

    rtt = {"pvz_call": [], "nop": []}
    rate = {"equal": {"osid1": [], "osid2": []}, "prio 4 vs 1": {"osid1": [], "osid2": []}}
    for rnd in range(rounds):
        r = run(paravm, config, [("caller", ["calls", str(calls)], 1, 0)], 120)["caller"]
        rtt["pvz_call"].append(int(r["pvz_ns"]) / 1e3)
        rtt["nop"].append(int(r["nop_ns"]) / 1e3)
        cases = [("equal", 1, 1), ("prio 4 vs 1", 4, 1)]
        for key, p1, p2 in (cases if rnd % 2 == 0 else cases[::-1]):
            res = run(paravm, config, [("hi", ["loop", str(secs), str(FILL)], 1, p1),
                                       ("lo", ["loop", str(secs), str(FILL)], 2, p2)],
                      60 + 4 * secs)
            for name, osid in (("hi", "osid1"), ("lo", "osid2")):
                rate[key][osid].append(int(res[name]["cmds"]) / (int(res[name]["ns"]) / 1e9))

    def share(d):
        return statistics.median(a / (a + b) for a, b in zip(d["osid1"], d["osid2"]))

    data = {
        "machine": common.machine_info(),
        "rounds": rounds,
        "call_roundtrip_us": {k: common.summary(v) for k, v in rtt.items()}
        | {"ratio": {"pvz_call/nop": statistics.median(
            a / b for a, b in zip(rtt["pvz_call"], rtt["nop"]))}, "calls": calls},
        "commands_per_s": {k: {o: common.summary(v) for o, v in d.items()}
                           | {"share_osid1": share(d)} for k, d in rate.items()}
        | {"seconds": secs, "fill_bytes": FILL},
    }
    path = common.write_results(NAME, data)
    c = data["call_roundtrip_us"]
    rows = [["PVZ call round trip", f"{c['pvz_call']['median']:.1f} us",
             f"{c['nop']['median']:.1f} us (HC_NOP)", f"{c['ratio']['pvz_call/nop']:.2f}x"]]
    for key in rate:
        d = data["commands_per_s"][key]
        rows.append([f"GPU commands/s, {key}",
                     f"OSID 1: {d['osid1']['median']:.0f}/s",
                     f"OSID 2: {d['osid2']['median']:.0f}/s",
                     f"OSID 1 share {d['share_osid1']:.2f}"])
    print(common.table(["what", "paravm", "other", "ratio"], rows))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
