#!/usr/bin/env python3
"""Where does paravm's time per register-form hypercall go?  A layered experiment.

Runs guest.elf under several vCPU loops, shuffled within each round, and
prints ns per call (as the guest measures it; py-cvmm as the host does) for each:

* ``c``           cvmm c (the C baseline)
* ``c-in-py``     NOP exits handled by C (profile_loop.so via ctypes) inside this Python process
* ``py-cvmm``     cvmm.c's VM and guest, built and driven from Python with the ``raw`` loop
  (``py-cvmm-memfd``: RAM from a memfd, as paravm allocates it; ``py-cvmm-ctypes``:
  KVM_RUN through a ctypes call into profile_loop.so instead of fcntl.ioctl)
* ``raw``         a minimal Python loop: fcntl.ioctl(KVM_RUN), port check, rax = 0 via sync regs
* ``raw-split``   the same, also timing the time spent outside KVM_RUN (Python) per exit
* ``raw-thread``  ``raw`` in a second thread, the main thread blocked (as paravm runs)
* ``backend``     KvmVcpu.run() (paravm's exit decoding) + the same minimal handling
* ``lean``        a proposal for VcpuRunner's hypercall path (see _lean_loop), in a thread
* ``paravm``      the real thing: Domain.start() -> VcpuRunner._loop
* ``paravm-timing`` Hypervisor(timing=True): VcpuRunner's own per-exit handling time
* ``c-block``, ``lean-block``, ``paravm-block``, ``paravm-timing-block``: the same for
  the argument-block form (guest mode block, cvmm c-block)

The domain is built by paravm in every case; only the loop differs.  For
loops other than ``paravm``, calls other than PV_HC_NOP go to paravm's own
handlers (boot mark, clock, console, exit).

    .venv/bin/python bench/exit_roundtrip/profile_exit.py [--n 5000] [--rounds 10] [--variants a,b]
"""

from __future__ import annotations

import argparse
import fcntl
import random
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402

GUEST = HERE / "guest.elf"
CVMM = HERE / "cvmm"
MASK64 = (1 << 64) - 1


def _c_loop(dom) -> dict:
    """NOP exits handled by profile_loop.so (C, called through ctypes in this
    process); every other exit by Python."""
    import ctypes
    from paravm.kvm import abi
    lib = ctypes.CDLL(str(HERE / "profile_loop.so"))
    lib.pv_nop_loop.argtypes = [ctypes.c_int, ctypes.c_void_p]
    lib.pv_nop_loop.restype = ctypes.c_long
    runner = dom.vcpus[0]
    kv = runner.backend.kvcpu
    probe = ctypes.c_char.from_buffer(kv.run_page)
    run_addr = ctypes.addressof(probe)
    del probe
    regs = runner.backend.regs
    u16, u32, u64 = kv.run_u16, kv.run_u32, kv.run_u64
    dirty = abi.RUN_DIRTY_REGS // 8
    handlers = dom.hypercalls.handlers
    while True:
        if lib.pv_nop_loop(kv.fd, run_addr) < 0:
            raise RuntimeError("KVM_RUN failed")
        if u32[abi.RUN_EXIT_REASON // 4] != abi.KVM_EXIT_IO or u16[(abi.RUN_EXIT_U + 2) // 2] != 0xE0:
            raise RuntimeError("unexpected exit")
        nr = regs[0] & 0xFFFFFFFF
        ret = handlers[nr](runner, regs[5], regs[4], regs[3], regs[10], regs[8], regs[9])
        if ret is None:
            return {}
        regs[0] = ret & MASK64
        u64[dirty] |= 1


def _lean_loop(dom) -> dict:
    """What VcpuRunner._loop's hypercall path could be (a proposal, not paravm's
    code): KVM_RUN through fcntl.ioctl directly, the register-form hypercall
    recognised from the run page before any decoding, the same dispatch
    (table lookup, counters, handler with six arguments, errors to errno), no
    method call per exit; stop/pause flags looked at only on EINTR (kick())."""
    from paravm.hypercall import abi as hc
    from paravm.hypercall.table import HypercallError
    from paravm.kvm import abi
    from paravm.memory import GuestMemoryError
    runner = dom.vcpus[0]
    be = runner.backend
    kv = be.kvcpu
    handlers = dom.hypercalls.handlers
    hcounts = runner.hypercall_counts
    counts = runner.exit_counts
    regs = be.regs
    u8, u16, u32, u64 = kv.run_u8, kv.run_u16, kv.run_u32, kv.run_u64
    dirty = abi.RUN_DIRTY_REGS // 8
    reason_idx, port_idx = abi.RUN_EXIT_REASON // 4, (abi.RUN_EXIT_U + 2) // 2
    dir_idx = abi.RUN_EXIT_U
    ioctl, fd, KVM_RUN, KVM_EXIT_IO = fcntl.ioctl, kv.fd, abi.KVM_RUN, abi.KVM_EXIT_IO
    HC_PORT, HC_MAX, OUT, SYNC = hc.HC_PORT, hc.HC_MAX, abi.KVM_EXIT_IO_OUT, abi.KVM_SYNC_X86_REGS
    HC_BLOCK_PORT = hc.HC_BLOCK_PORT
    ram = dom.memory.regions[0].view          # RAM at GPA 0
    ram_last = len(ram) - hc.HC_BLOCK_SIZE
    unpack_from, pack_into = struct.Struct("<Q6Qq").unpack_from, struct.Struct("<Q").pack_into
    be.bind_thread()
    try:
        while True:
            try:
                ioctl(fd, KVM_RUN, 0)
            except InterruptedError:
                if runner._stop:
                    return {}
                continue
            if u32[reason_idx] != KVM_EXIT_IO or u8[dir_idx] != OUT:
                raise RuntimeError("lean loop: only hypercalls here")
            port = u16[port_idx]
            if port == HC_BLOCK_PORT:
                # Block form: the GPA is eax (synced at every I/O exit); one
                # unpack_from snapshots the block (each field read once), then
                # explicit arguments, and ret written in place.
                counts[0] += 1
                gpa = regs[0] & 0xFFFFFFFF
                if gpa > ram_last:
                    continue                    # outside RAM: no effect (as paravm)
                nr, a0, a1, a2, a3, a4, a5, _ = unpack_from(ram, gpa)
                fn = handlers[nr] if nr < HC_MAX else None
                if fn is None:
                    ret = -hc.ENOSYS
                else:
                    hcounts[nr] += 1
                    try:
                        ret = fn(runner, a0, a1, a2, a3, a4, a5)
                    except GuestMemoryError:
                        ret = -hc.EFAULT
                    except HypercallError as e:
                        ret = -e.errno
                    if ret is None:
                        return {}
                pack_into(ram, gpa + 56, ret & MASK64)
            elif port == HC_PORT:
                counts[0] += 1
                nr = regs[0] & 0xFFFFFFFF
                fn = handlers[nr] if nr < HC_MAX else None
                if fn is None:
                    ret = -hc.ENOSYS
                else:
                    hcounts[nr] += 1
                    try:
                        ret = fn(runner, regs[5], regs[4], regs[3], regs[10], regs[8], regs[9])
                    except GuestMemoryError:
                        ret = -hc.EFAULT
                    except HypercallError as e:
                        ret = -e.errno
                    if ret is None:
                        return {}
                regs[0] = ret & MASK64
                u64[dirty] = SYNC
            else:
                raise RuntimeError(f"lean loop: port {port:#x}")
    finally:
        be.unbind_thread()


def _loop(dom, *, split: bool = False, use_backend: bool = False) -> dict:
    """Drive vCPU 0 of *dom* until the guest exits; returns Python-side stats."""
    from paravm.kvm import abi
    from paravm.vm.backend import EXIT_HYPERCALL
    runner = dom.vcpus[0]
    be = runner.backend
    kv = be.kvcpu
    handlers = dom.hypercalls.handlers
    regs = be.regs
    u16, u32, u64 = kv.run_u16, kv.run_u32, kv.run_u64
    dirty = abi.RUN_DIRTY_REGS // 8
    reason_idx, port_idx = abi.RUN_EXIT_REASON // 4, (abi.RUN_EXIT_U + 2) // 2
    ioctl, fd, KVM_RUN, KVM_EXIT_IO = fcntl.ioctl, kv.fd, abi.KVM_RUN, abi.KVM_EXIT_IO
    perf = time.perf_counter_ns
    outside = exits = 0
    be.bind_thread()
    t_back = perf()
    while True:
        if use_backend:
            kind = be.run()
            if kind != EXIT_HYPERCALL:          # the backend recognises the hypercall OUT
                raise RuntimeError(f"unexpected exit kind {kind}")
        else:
            ioctl(fd, KVM_RUN, 0)
            if u32[reason_idx] != KVM_EXIT_IO or u16[port_idx] != 0xE0:
                raise RuntimeError(f"unexpected exit {u32[reason_idx]} port {u16[port_idx]:#x}")
        if split:
            t = perf()
            outside_start = t
        exits += 1
        nr = regs[0] & 0xFFFFFFFF
        if nr == 6:
            regs[0] = 0
        else:
            ret = handlers[nr](runner, regs[5], regs[4], regs[3], regs[10], regs[8], regs[9])
            if ret is None:
                break
            regs[0] = ret & MASK64
        u64[dirty] |= 1
        if split:
            t_back = perf()
            outside += t_back - outside_start
    be.unbind_thread()
    return {"exits": exits, "python_ns_per_exit": outside / exits if split else None}


def py_cvmm(n: int, warmup: int = 1000, memfd: bool = False, how: str = "fcntl") -> dict:
    """cvmm.c's VM and guest (2 MiB pages, hand-assembled loop), built and run
    from Python with paravm's kvm handles and the ``raw`` loop: separates the
    cost of a Python VMM process from that of paravm's VM set-up."""
    import ctypes
    import mmap
    import os
    import struct
    from paravm.arch.x86 import boot
    from paravm.kvm import Kvm, abi
    ram_size = 4 << 20
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.set_tss_addr(0xFFFBD000)
    vm.create_irqchip()
    if memfd:
        fd = os.memfd_create("pycvmm")
        os.ftruncate(fd, ram_size)
        ram = mmap.mmap(fd, ram_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    else:
        ram = mmap.mmap(-1, ram_size, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS,
                        mmap.PROT_READ | mmap.PROT_WRITE)
    probe = ctypes.c_char.from_buffer(ram)
    hva = ctypes.addressof(probe)
    del probe
    vm.set_user_memory_region(0, 0, ram_size, hva)
    struct.pack_into("<Q", ram, 0x1000, 0x2000 | 7)
    struct.pack_into("<Q", ram, 0x2000, 0x3000 | 7)
    struct.pack_into("<2Q", ram, 0x3000, 0x87, (1 << 21) | 0x87)
    struct.pack_into("<6Q", ram, 0x8000, *boot._GDT_FIXED)
    ram[0x8030:0x8040] = boot._tss_descriptor(0x10000, 104 + 8192)
    struct.pack_into("<H", ram, 0x10000 + 102, 104)
    ram[0x10000 + 104 + 8192] = 0xFF
    ram[0x100000:0x100010] = bytes([0xB8, 6, 0, 0, 0, 0xE7, 0xE0, 0x48, 0xFF, 0xC9, 0x75, 0xF4,
                                    0xE7, 0xE2, 0xEB, 0xFE])
    vcpu = vm.create_vcpu(0)
    vcpu.set_cpuid2(boot.vcpu_cpuid(kvm.supported_cpuid(), 0))
    sregs = vcpu.get_sregs()
    boot.initial_sregs(sregs, 0, 0)
    sregs.gdt.limit = 63
    vcpu.set_sregs(sregs)
    regs = abi.kvm_regs()
    boot.initial_regs(regs, 0, 0x100000, ram_size)
    regs.rcx = warmup + n
    vcpu.set_regs(regs)
    vcpu.enable_sync_regs()
    u16, u32, u64 = vcpu.run_u16, vcpu.run_u32, vcpu.run_u64
    sync = u64[abi.RUN_SYNC_REGS // 8:abi.RUN_SYNC_REGS // 8 + 18]
    dirty = abi.RUN_DIRTY_REGS // 8
    reason_idx, port_idx = abi.RUN_EXIT_REASON // 4, (abi.RUN_EXIT_U + 2) // 2
    ioctl, fd, KVM_RUN, KVM_EXIT_IO = fcntl.ioctl, vcpu.fd, abi.KVM_RUN, abi.KVM_EXIT_IO
    perf = time.perf_counter_ns
    exits = t0 = 0
    if how == "ctypes":
        lib = ctypes.CDLL(str(HERE / "profile_loop.so"))
        lib.pv_run_once.argtypes = [ctypes.c_int]
        run_once = lib.pv_run_once
    while True:
        if how == "ctypes":
            run_once(fd)
        else:
            ioctl(fd, KVM_RUN, 0)
        if u32[reason_idx] != KVM_EXIT_IO:
            raise RuntimeError(f"py-cvmm: exit reason {u32[reason_idx]}")
        port = u16[port_idx]
        if port != 0xE0:
            break
        exits += 1
        if exits == warmup:
            t0 = perf()
        elif exits == warmup + n:
            t1 = perf()
        sync[0] = 0
        u64[dirty] |= 1
    sync.release()
    vm.close()
    kvm.close()
    ram.close()
    return {"ns": (t1 - t0) / n}


def run_variant(hv, variant: str, n: int) -> dict:
    if variant in ("py-cvmm", "py-cvmm-memfd", "py-cvmm-ctypes"):
        return py_cvmm(n, memfd=variant == "py-cvmm-memfd",
                       how="ctypes" if variant == "py-cvmm-ctypes" else "fcntl")
    mode = "block" if variant.endswith("-block") else "regs"
    variant = variant.removesuffix("-block")
    d = hv.create_domain("prof", GUEST, memory_mib=16, vcpus=1, args=[str(n), mode])
    try:
        extra = {}
        if variant in ("paravm", "paravm-timing"):
            hv.start_all()
            r = d.wait(timeout=120)
            if r is None or r.how != "exited" or r.status != 0:
                raise SystemExit(f"paravm: {r.describe() if r else 'timeout'}")
            if variant == "paravm-timing":
                st = d.stats()
                io = st["exits"].get("HYPERCALL", 1)
                extra["python_ns_per_exit"] = st["exit_time_us"].get("HYPERCALL", 0) * 1e3 / io
        elif variant == "c-in-py":
            extra = _c_loop(d)
        elif variant in ("raw-thread", "lean"):
            box = {}
            fn = _lean_loop if variant == "lean" else _loop
            t = threading.Thread(target=lambda: box.update(fn(d)))
            t.start()
            t.join()
            extra = box
        else:
            extra = _loop(d, split=variant == "raw-split", use_backend=variant == "backend")
        res = common.parse_result(d.console.text)
        return {"ns": float(res["ns_per_call"]), **extra}
    finally:
        hv.destroy(d)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--variants", default="c,c-in-py,py-cvmm,raw,raw-split,backend,lean,paravm,paravm-timing,"
                    "c-block,lean-block,paravm-block,paravm-timing-block",
                    help="comma-separated loops to run (default: all)")
    ap.add_argument("--seed", type=int, default=1, help="order of the loops is shuffled per round")
    args = ap.parse_args()
    common.make(common.REPO / "guest", HERE)
    common.make_target(HERE, "profile_loop.so")
    paravm = common.import_paravm()
    variants = args.variants.split(",")
    rng = random.Random(args.seed)
    ns = {v: [] for v in variants}
    py = {v: [] for v in variants}
    hv_plain = paravm.Hypervisor(output=None)
    hv_timing = paravm.Hypervisor(output=None, timing=True)
    try:
        for r in range(args.rounds):
            for v in rng.sample(variants, len(variants)):
                if v in ("c", "c-block"):
                    res = {"ns": float(common.run_program(
                        [str(CVMM), v, str(args.n)])["ns_per_call"])}
                else:
                    res = run_variant(hv_timing if v.removesuffix("-block") == "paravm-timing" else hv_plain,
                                      v, args.n)
                ns[v].append(res["ns"])
                if res.get("python_ns_per_exit") is not None:
                    py[v].append(res["python_ns_per_exit"])
            print(f"round {r + 1}: " + ", ".join(f"{v} {ns[v][-1] / 1e3:.1f}" for v in variants),
                  file=sys.stderr)
    finally:
        hv_timing.close()
        hv_plain.close()
    c = statistics.median(ns["c"]) if "c" in ns else None
    cb = statistics.median(ns["c-block"]) if "c-block" in ns else None
    rows = []
    for v in variants:
        m = statistics.median(ns[v])
        pyt = f"{statistics.median(py[v]) / 1e3:.2f}" if py[v] else ""
        base = cb if v.endswith("-block") else c
        rel = [f"{m / base:.3f}", f"{(m - base) / 1e3:+.2f}"] if base else ["", ""]
        rows.append([v, f"{m / 1e3:.2f}", f"{min(ns[v]) / 1e3:.2f}", *rel, pyt])
    print(f"n={args.n} x {args.rounds} rounds, guest-measured us per call (median); "
          "*-block rows are relative to c-block")
    print(common.table(["loop", "us/call", "min", "vs c", "delta us", "py us/exit"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
