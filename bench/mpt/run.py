#!/usr/bin/env python3
"""MPT: trapped MMIO write vs a bare hypercall; tracked-page writes; device commands/s.

The guest is ``bench/mpt/guest.elf`` (this script builds it):

1. **Trapped MMIO write round trip**: N 4-byte writes to a trap area
   (``set_trap_area``; the device model's ``emulate_mmio_write`` does
   nothing) against N bare hypercalls (``HC_NOP``: a port-I/O exit, the
   VMM's fastest path), in the same guest; ns per operation and the ratio.
2. **Tracked-page write**: N 8-byte stores to a write-tracked page (a
   read-only memslot: each store exits, the VMM completes it, the handler
   is called) against N bare hypercalls and N stores to an untracked page,
   all in the same guest.  Then, with the guest idle, the host-side cost of
   ``disable_page_track`` + ``enable_page_track`` (memslot split and merge
   with the vCPU held out), K times, against K raw 4 KiB memslot adds and
   deletes in the same VM (no hold, no split).  The domain's very first
   memslot change after the irqchip pays a one-off KVM cost of several ms
   (bench/memslot); it is reported apart, not in the median.
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
SLOT_GPA = 0x80000000      # a hole in the guest's GPA space for the raw memslot baseline
TOGGLES = 10
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
        gfn = gpa >> 12
        _Quiet.writes = 0
        t0 = time.perf_counter()
        assert hv.mpt.enable_page_track(h, gfn) == 0
        first_ms = (time.perf_counter() - t0) * 1e3
        hv.mpt.write_gpa(h, gpa + 4096, (1).to_bytes(8, "little"))
        while "RESULT" not in dom.console.text:
            if dom.stopped or time.monotonic() > deadline + 100:
                sys.exit(f"bench/mpt: no result from the guest:\n{dom.console.text}")
            time.sleep(0.001)
        if _Quiet.writes != n:
            sys.exit(f"bench/mpt: {_Quiet.writes} tracked writes reported, expected {n}")
        toggle, raw = [], []
        frames = hv.machine.alloc(1, "bench.slot")
        for _ in range(TOGGLES):
            t0 = time.perf_counter()
            assert hv.mpt.disable_page_track(h, gfn) == 0
            assert hv.mpt.enable_page_track(h, gfn) == 0
            t1 = time.perf_counter()
            slot = dom.vm.map_memory(SLOT_GPA, 4096, frames.hva)
            dom.vm.unmap_memory(slot)
            t2 = time.perf_counter()
            toggle.append((t1 - t0) * 1e3)
            raw.append((t2 - t1) * 1e3)
        assert hv.mpt.disable_page_track(h, gfn) == 0
        hv.mpt.write_gpa(h, gpa + 4096, (2).to_bytes(8, "little"))
        r = _finish(hv, dom)
        hv.machine.free(frames)
        return {"tracked": int(r["track_ns"]) / 1e3, "plain": int(r["plain_ns"]) / 1e3,
                "nop": int(r["nop_ns"]) / 1e3, "first_enable_ms": first_ms,
                "toggle_ms": statistics.median(toggle), "raw_slot_ms": statistics.median(raw)}


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

    def paired(a, b):
        return statistics.median(x / y for x, y in zip(samples[a], samples[b]))

    data = {
        "machine": common.machine_info(),
        "rounds": rounds,
        "operations": n,
        "roundtrip_us": {"trapped_mmio_write": common.summary(samples["rtt.mmio"]),
                         "hc_nop": common.summary(samples["rtt.nop"]),
                         "ratio": {"mmio/nop": paired("rtt.mmio", "rtt.nop")}},
        "tracked_write_us": {"tracked": common.summary(samples["track.tracked"]),
                             "untracked": common.summary(samples["track.plain"]),
                             "hc_nop": common.summary(samples["track.nop"]),
                             "ratio": {"tracked/nop": paired("track.tracked", "track.nop")}},
        "page_track_ms": {"disable_enable": common.summary(samples["track.toggle_ms"]),
                          "raw_slot_add_delete": common.summary(samples["track.raw_slot_ms"]),
                          "first_enable": common.summary(samples["track.first_enable_ms"]),
                          "ratio": {"toggle/raw_slot": paired("track.toggle_ms",
                                                              "track.raw_slot_ms")},
                          "toggles_per_round": TOGGLES},
        "device_commands_per_s": {"nop": common.summary(samples["gpu.nop"]),
                                  f"fill_{FILL_W}x{FILL_W}": common.summary(samples["gpu.fill"]),
                                  "per_doorbell": 64, "fill_w": FILL_W},
    }
    path = common.write_results(NAME, data)
    pt = data["page_track_ms"]
    rows = [["trapped MMIO write round trip", f"{med['rtt.mmio']:.1f} us",
             f"{med['rtt.nop']:.1f} us (HC_NOP)", f"{data['roundtrip_us']['ratio']['mmio/nop']:.2f}x"],
            ["8-byte store to a tracked page", f"{med['track.tracked']:.1f} us",
             f"HC_NOP {med['track.nop']:.1f} us; untracked {med['track.plain'] * 1e3:.1f} ns",
             f"{data['tracked_write_us']['ratio']['tracked/nop']:.2f}x"],
            ["disable + enable_page_track", f"{med['track.toggle_ms']:.2f} ms",
             f"raw 4 KiB slot add+delete {med['track.raw_slot_ms']:.2f} ms",
             f"{pt['ratio']['toggle/raw_slot']:.1f}x"],
            ["first enable_page_track of a domain", f"{med['track.first_enable_ms']:.1f} ms",
             "(one-off KVM cost, bench/memslot)", "—"],
            ["mgpu commands/s, 64 per doorbell", f"NOP {med['gpu.nop']:.0f}/s",
             f"FILL {FILL_W}x{FILL_W}: {med['gpu.fill']:.0f}/s", "—"]]
    print(common.table(["what", "paravm", "other", "ratio"], rows))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
