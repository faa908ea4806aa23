#!/usr/bin/env python3
"""MPT: trapped MMIO write vs a bare hypercall; tracked-page writes; device commands/s.

The guest is ``bench/mpt/guest.elf`` (this script builds it):

1. **Trapped MMIO write round trip**: N 4-byte writes to a trap area
   (``set_trap_area``; the device model's ``emulate_mmio_write`` does
   nothing) against N bare hypercalls (``HC_NOP``: a port-I/O exit, the
   VMM's fastest path), in the same guest; ns per operation and the ratio.
2. **Tracked-page write**: N 8-byte stores to a write-tracked page (a
   read-only memslot: each store exits, the VMM completes it, the handler
   is called) against N stores to an untracked page of the same guest.
   Also the host-side cost of ``enable_page_track`` and
   ``disable_page_track`` (memslot changes with the vCPU held out).
3. **Device commands/s**: the example mediated GPU, commands in doorbells
   of 64: NOPs (the per-command cost of the ring, write-back and fence)
   and W x W-pixel FILLs through the shadowed GTT.

No goals (issue 7 sets none).  Writes bench/results/mpt.json.

    .venv/bin/python bench/mpt/run.py [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402

NAME = "mpt"
GUEST = HERE / "guest.elf"
TRAP_GPA = 0xFD100000
FILL_W = 64


class _Quiet:
    """A device type that does nothing: the cost measured is the path."""

    writes = 0

    @staticmethod
    def emulate_mmio_read(vgpu, gpa, data):
        data[:] = bytes(len(data))

    @staticmethod
    def emulate_mmio_write(vgpu, gpa, data):
        pass

    @classmethod
    def write_protect_handler(cls, vgpu, gpa, data):
        cls.writes += 1
        return 0


def _finish(hv, dom, timeout: float = 120) -> dict[str, str]:
    if dom.wait(timeout) is None:
        sys.exit(f"bench/mpt: guest did not finish:\n{dom.console.text[-1000:]}")
    if dom.result.how != "exited" or dom.result.status:
        sys.exit(f"bench/mpt: guest failed: {dom.result.describe()}\n{dom.console.text[-2000:]}")
    return common.parse_result(dom.console.text)


def mmio(paravm, n: int) -> dict[str, float]:
    with paravm.Hypervisor(output=None) as hv:
        dom = hv.create_domain("mmio", GUEST, memory_mib=16, args=["mmio", str(n), hex(TRAP_GPA)])
        hv.mpt.host_init("quiet", _Quiet)
        _, h = hv.mpt.attach_vgpu("quiet", None, dom)
        assert hv.mpt.set_trap_area(h, TRAP_GPA, TRAP_GPA + 0xFFF, True) == 0
        dom.start()
        r = _finish(hv, dom)
        return {"mmio": int(r["mmio_ns"]) / 1e3, "nop": int(r["nop_ns"]) / 1e3}


def track(paravm, n: int) -> dict[str, float]:
    with paravm.Hypervisor(output=None) as hv:
        dom = hv.create_domain("track", GUEST, memory_mib=16, args=["track", str(n)])
        hv.mpt.host_init("quiet", _Quiet)
        _, h = hv.mpt.attach_vgpu("quiet", None, dom)
        dom.start()
        deadline = time.monotonic() + 20
        while not (m := re.search(r"page 0x([0-9a-f]+)", dom.console.text)):
            if dom.stopped or time.monotonic() > deadline:
                sys.exit(f"bench/mpt: no page from the guest:\n{dom.console.text}")
            time.sleep(0.001)
        gpa = int(m.group(1), 16)
        _Quiet.writes = 0
        t0 = time.perf_counter()
        assert hv.mpt.enable_page_track(h, gpa >> 12) == 0
        t1 = time.perf_counter()
        hv.mpt.write_gpa(h, gpa + 4096, (1).to_bytes(8, "little"))
        while "RESULT" not in dom.console.text:
            if dom.stopped or time.monotonic() > deadline + 100:
                sys.exit(f"bench/mpt: no result from the guest:\n{dom.console.text}")
            time.sleep(0.001)
        t2 = time.perf_counter()
        assert hv.mpt.disable_page_track(h, gpa >> 12) == 0
        t3 = time.perf_counter()
        hv.mpt.write_gpa(h, gpa + 4096, (2).to_bytes(8, "little"))
        r = _finish(hv, dom)
        if _Quiet.writes != n:
            sys.exit(f"bench/mpt: {_Quiet.writes} tracked writes reported, expected {n}")
        return {"tracked": int(r["track_ns"]) / 1e3, "plain": int(r["plain_ns"]) / 1e3,
                "enable_ms": (t1 - t0) * 1e3, "disable_ms": (t3 - t2) * 1e3}


def gpu(paravm, n: int) -> dict[str, float]:
    from paravm.devices.mgpu import MgpuType
    with paravm.Hypervisor(output=None) as hv:
        dom = hv.create_domain("gpu", GUEST, memory_mib=32, args=["mgpu", str(n), str(FILL_W)])
        MgpuType.attach(hv.mpt, dom)
        dom.start()
        r = _finish(hv, dom)
        return {"nop": 1e9 / int(r["nop_ns"]), "fill": 1e9 / int(r["fill_ns"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--check", action="store_true", help="accepted for bench/run; no goals")
    args = ap.parse_args()
    rounds = 2 if args.quick else args.rounds
    n = 2000 if args.quick else 10000
    common.make(common.REPO / "guest", HERE)
    paravm = common.import_paravm()

    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        for prefix, fn in (("rtt", mmio), ("track", track), ("gpu", gpu)):
            for k, v in fn(paravm, n).items():
                samples.setdefault(f"{prefix}.{k}", []).append(v)
    med = {k: statistics.median(v) for k, v in samples.items()}
    data = {
        "machine": common.machine_info(),
        "rounds": rounds,
        "operations": n,
        "roundtrip_us": {"trapped_mmio_write": common.summary(samples["rtt.mmio"]),
                         "hc_nop": common.summary(samples["rtt.nop"]),
                         "ratio": {"mmio/nop": med["rtt.mmio"] / med["rtt.nop"]}},
        "tracked_write_us": {"tracked": common.summary(samples["track.tracked"]),
                             "untracked": common.summary(samples["track.plain"]),
                             "ratio": {"tracked/nop": med["track.tracked"] / med["rtt.nop"]}},
        "page_track_ms": {"enable": common.summary(samples["track.enable_ms"]),
                          "disable": common.summary(samples["track.disable_ms"])},
        "device_commands_per_s": {"nop": common.summary(samples["gpu.nop"]),
                                  f"fill_{FILL_W}x{FILL_W}": common.summary(samples["gpu.fill"]),
                                  "per_doorbell": 64, "fill_w": FILL_W},
    }
    path = common.write_results(NAME, data)
    rows = [["trapped MMIO write round trip", f"{med['rtt.mmio']:.1f} us",
             f"{med['rtt.nop']:.1f} us (HC_NOP)", f"{med['rtt.mmio'] / med['rtt.nop']:.2f}x"],
            ["8-byte store to a tracked page", f"{med['track.tracked']:.1f} us",
             f"untracked: {med['track.plain'] * 1e3:.1f} ns",
             f"{med['track.tracked'] / med['rtt.nop']:.2f}x HC_NOP"],
            ["enable / disable_page_track", f"{med['track.enable_ms']:.1f} ms",
             f"{med['track.disable_ms']:.1f} ms", "—"],
            ["mgpu commands/s, 64 per doorbell", f"NOP {med['gpu.nop']:.0f}/s",
             f"FILL {FILL_W}x{FILL_W}: {med['gpu.fill']:.0f}/s", "—"]]
    print(common.table(["what", "paravm", "other", "ratio"], rows))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
