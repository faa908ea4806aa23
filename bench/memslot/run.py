#!/usr/bin/env python3
"""Memslot cost on this KVM: adding a 64 MiB RAM slot before KVM_CREATE_IRQCHIP
(what paravm does) against after it, and a 4 KiB slot added later, in one run.

The figures behind Domain._build's order (RAM, extra regions, then the
irqchip with the first vCPU).  Writes bench/results/memslot.json.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import import_paravm, machine_info, summary, table, write_results  # noqa: E402

RAM = 64 << 20


def _mapping(size: int):
    fd = os.memfd_create("bench", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    mm = mmap.mmap(fd, size)
    probe = ctypes.c_char.from_buffer(mm)
    hva = ctypes.addressof(probe)
    del probe
    return fd, mm, hva


def one(kvm, irqchip_first: bool) -> tuple[float, float]:
    """(ms to add the RAM slot, ms to add a 4 KiB slot afterwards)."""
    vm = kvm.create_vm()
    fd, mm, hva = _mapping(RAM + 4096)
    try:
        if irqchip_first:
            vm.create_irqchip()
        t0 = time.perf_counter_ns()
        vm.set_user_memory_region(0, 0, RAM, hva)
        t1 = time.perf_counter_ns()
        if not irqchip_first:
            vm.create_irqchip()
        t2 = time.perf_counter_ns()
        vm.set_user_memory_region(1, 1 << 32, 4096, hva + RAM)
        t3 = time.perf_counter_ns()
        return (t1 - t0) / 1e6, (t3 - t2) / 1e6
    finally:
        vm.close()
        mm.close()
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="3 rounds")
    args = ap.parse_args()
    rounds = 3 if args.quick else args.rounds
    paravm = import_paravm()
    from paravm.vm.kvm_backend import open_kvm
    kvm = open_kvm()
    samples: dict[str, list[float]] = {k: [] for k in (
        "RAM slot before irqchip (paravm)", "RAM slot after irqchip",
        "4 KiB slot later, irqchip made after RAM", "4 KiB slot later, irqchip made first")}
    for _ in range(rounds):
        ram, later = one(kvm, irqchip_first=False)
        samples["RAM slot before irqchip (paravm)"].append(ram)
        samples["4 KiB slot later, irqchip made after RAM"].append(later)
        ram, later = one(kvm, irqchip_first=True)
        samples["RAM slot after irqchip"].append(ram)
        samples["4 KiB slot later, irqchip made first"].append(later)
    kvm.close()
    med = {k: statistics.median(v) for k, v in samples.items()}
    data = {
        "benchmark": "memslot",
        "description": "KVM_SET_USER_MEMORY_REGION cost before/after KVM_CREATE_IRQCHIP",
        "unit": "ms", "rounds": rounds,
        "ms": {k: summary(v) for k, v in samples.items()},
        "ratios": {"RAM slot after / before irqchip":
                   med["RAM slot after irqchip"] / med["RAM slot before irqchip (paravm)"]},
        "machine": machine_info(),
    }
    path = write_results("memslot", data)
    print(table(["memslot add (median)", "ms"], [[k, f"{v:.3f}"] for k, v in med.items()]))
    for k, v in data["ratios"].items():
        print(f"{k}: {v:.1f}")
    print(f"wrote {path.name}")
    del paravm


if __name__ == "__main__":
    main()
