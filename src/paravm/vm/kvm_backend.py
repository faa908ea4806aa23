"""The KVM execution backend: memslots, in-kernel irqchip, vCPUs over /dev/kvm.

Kicking a vCPU out of ``KVM_RUN`` is ``immediate_exit = 1`` then a signal
(:data:`KICK_SIGNAL`) to its thread; the signal needs a Python handler (a
no-op) installed from the main thread, which :func:`install_kick_handler`
does.
"""

from __future__ import annotations

import signal
import threading

from ..arch.x86 import boot, layout as L
from ..hypercall.abi import HC_BLOCK_PORT, HC_PORT
from ..kvm import Kvm, KvmUnavailable, abi
from .backend import (EXIT_FAIL_ENTRY, EXIT_HLT, EXIT_HYPERCALL, EXIT_HYPERCALL_BLOCK,
                      EXIT_INTERNAL_ERROR, EXIT_INTR, EXIT_IO_IN, EXIT_IO_OUT, EXIT_MMIO_READ,
                      EXIT_MMIO_WRITE, EXIT_SHUTDOWN, EXIT_SYSTEM_EVENT, EXIT_UNKNOWN,
                      REG_NAMES, VcpuBackend, VmBackend)

KICK_SIGNAL = signal.SIGRTMIN + 3
_kick_installed = False


def _noop(signum, frame) -> None:
    pass


def install_kick_handler() -> None:
    """Install the no-op handler that lets a signal interrupt ``KVM_RUN``.
    Must run once in the main thread; ``RuntimeError`` otherwise."""
    global _kick_installed
    if _kick_installed:
        return
    if threading.current_thread() is not threading.main_thread():
        if signal.getsignal(KICK_SIGNAL) not in (signal.SIG_DFL, None):
            _kick_installed = True
            return
        raise RuntimeError("create the first paravm Hypervisor in the main thread "
                           "(it installs the signal handler that stops vCPUs)")
    signal.signal(KICK_SIGNAL, _noop)
    signal.siginterrupt(KICK_SIGNAL, True)
    _kick_installed = True


_SIMPLE = {
    abi.KVM_EXIT_HLT: EXIT_HLT,
    abi.KVM_EXIT_INTR: EXIT_INTR,
    abi.KVM_EXIT_SHUTDOWN: EXIT_SHUTDOWN,
    abi.KVM_EXIT_FAIL_ENTRY: EXIT_FAIL_ENTRY,
    abi.KVM_EXIT_INTERNAL_ERROR: EXIT_INTERNAL_ERROR,
    abi.KVM_EXIT_SYSTEM_EVENT: EXIT_SYSTEM_EVENT,
}

# kvm_run.u field offsets
_IO_DIR, _IO_SIZE, _IO_PORT, _IO_COUNT, _IO_DATA_OFF = 32, 33, 34, 36, 40
# The first u32 of kvm_run.io (direction, size, port) of a hypercall: one
# compare recognises it.
_HC_WORD = abi.KVM_EXIT_IO_OUT | (4 << 8) | (HC_PORT << 16)
_HC_BLOCK_WORD = abi.KVM_EXIT_IO_OUT | (4 << 8) | (HC_BLOCK_PORT << 16)
_RUN_IO_WORD = _IO_DIR // 4
_RUN_IO_COUNT = _IO_COUNT // 4
_MMIO_ADDR, _MMIO_DATA, _MMIO_LEN, _MMIO_IS_WRITE = 32, 40, 48, 52


class KvmVcpu(VcpuBackend):
    def __init__(self, vm: "KvmVm", index: int, entry: int, ram_size: int,
                 idt_limit: int) -> None:
        self.index = index
        self.kvcpu = vcpu = vm.vm.create_vcpu(index)
        vcpu.set_cpuid2(boot.vcpu_cpuid(vm.kvm.supported_cpuid(), index))
        sregs = vcpu.get_sregs()
        boot.initial_sregs(sregs, index, idt_limit)
        vcpu.set_sregs(sregs)
        regs = abi.kvm_regs()
        boot.initial_regs(regs, index, entry, ram_size)
        vcpu.set_regs(regs)
        lapic = vcpu.get_lapic()
        boot.init_lapic(lapic)
        vcpu.set_lapic(lapic)
        if index != 0:
            # With an in-kernel irqchip APs start waiting for INIT/SIPI; ours
            # start at once, like the BSP.
            vcpu.set_mp_state(abi.KVM_MP_STATE_RUNNABLE)
        vcpu.enable_sync_regs()
        self._u8, self._u16, self._u32, self._u64 = vcpu.run_u8, vcpu.run_u16, vcpu.run_u32, vcpu.run_u64
        base = abi.RUN_SYNC_REGS
        self.regs = vcpu.run_u8[base:base + 18 * 8].cast("Q")
        self._mmio_data = vcpu.run_u8[_MMIO_DATA:_MMIO_DATA + 8]
        # One view per access width, made once (no view per exit; all released in close()).
        self._mmio_views = [self._mmio_data[:n] for n in range(9)]
        self._io_views: dict[tuple[int, int], memoryview] = {}
        self._kvm_run = vcpu.run     # KVM_RUN; a signal comes back as KVM_EXIT_INTR
        self.dirty_flag = vcpu.run_u8[abi.RUN_DIRTY_REGS:abi.RUN_DIRTY_REGS + 8].cast("Q")
        self.dirty_value = abi.KVM_SYNC_X86_REGS
        self._thread_ident: int | None = None
        self._kick_lock = threading.Lock()
        self.port = self.addr = self.size = 0
        self.data = self._mmio_data
        self.detail = ""

    def bind_thread(self) -> None:
        with self._kick_lock:
            self._thread_ident = threading.get_ident()

    def unbind_thread(self) -> None:
        with self._kick_lock:
            self._thread_ident = None

    def run(self) -> int:
        reason = self._kvm_run()
        u32 = self._u32
        if reason == abi.KVM_EXIT_IO and u32[_RUN_IO_COUNT] == 1:
            word = u32[_RUN_IO_WORD]
            if word == _HC_WORD:
                return EXIT_HYPERCALL
            if word == _HC_BLOCK_WORD:
                return EXIT_HYPERCALL_BLOCK
        return self._decode(reason)

    def _decode(self, reason: int) -> int:
        if reason == abi.KVM_EXIT_IO:
            u8 = self._u8
            size = u8[_IO_SIZE]
            self.port = self._u16[_IO_PORT // 2]
            self.size = size
            off = self._u64[_IO_DATA_OFF // 8]
            key = (off, size)
            view = self._io_views.get(key)
            if view is None:
                if self._u32[_IO_COUNT // 4] != 1 or off + size > len(u8):
                    self.detail = "string port I/O (rep ins/outs) is not supported"
                    return EXIT_UNKNOWN
                view = self._io_views[key] = u8[off:off + size]
            elif self._u32[_IO_COUNT // 4] != 1:
                self.detail = "string port I/O (rep ins/outs) is not supported"
                return EXIT_UNKNOWN
            self.data = view
            return EXIT_IO_OUT if u8[_IO_DIR] == abi.KVM_EXIT_IO_OUT else EXIT_IO_IN
        if reason == abi.KVM_EXIT_MMIO:
            self.addr = self._u64[_MMIO_ADDR // 8]
            size = self._u32[_MMIO_LEN // 4]
            if not 1 <= size <= 8:
                self.detail = f"MMIO access of {size} bytes"
                return EXIT_UNKNOWN
            self.size = size
            self.data = self._mmio_views[size]
            return EXIT_MMIO_WRITE if self._u8[_MMIO_IS_WRITE] else EXIT_MMIO_READ
        kind = _SIMPLE.get(reason, EXIT_UNKNOWN)
        if kind == EXIT_INTERNAL_ERROR:
            sub, ndata = self._u32[_IO_DIR // 4], self._u32[_IO_DIR // 4 + 1]
            data = [self._u64[5 + i] for i in range(min(ndata, 16))]
            names = {1: "emulation failure", 2: "simultaneous exception",
                     3: "delivery event", 4: "unexpected exit reason"}
            self.detail = f"KVM internal error {sub} ({names.get(sub, '?')}), data " \
                + " ".join(f"{d:#x}" for d in data)
        elif kind == EXIT_FAIL_ENTRY:
            self.detail = f"hardware entry failure reason {self._u64[4]:#x}"
        elif kind == EXIT_SYSTEM_EVENT:
            self.detail = f"system event type {self._u32[8]}"
        elif kind == EXIT_UNKNOWN:
            self.detail = f"KVM exit reason {reason} " \
                f"({abi.EXIT_REASON_NAMES.get(reason, 'unknown')})"
        return kind

    def regs_dirty(self) -> None:
        self.kvcpu.mark_regs_dirty()

    def kick(self) -> None:
        self.kvcpu.set_immediate_exit(True)
        with self._kick_lock:
            if self._thread_ident is not None:
                try:
                    signal.pthread_kill(self._thread_ident, KICK_SIGNAL)
                except ProcessLookupError:
                    pass

    def clear_kick(self) -> None:
        self.kvcpu.set_immediate_exit(False)

    def dump(self) -> dict[str, int]:
        out: dict[str, int] = {}
        try:
            r = self.kvcpu.get_regs()
            for name in REG_NAMES:
                out[name] = getattr(r, name)
            s = self.kvcpu.get_sregs()
            for name in ("cr0", "cr2", "cr3", "cr4", "efer"):
                out[name] = getattr(s, name)
            out["cs"], out["ss"] = s.cs.selector, s.ss.selector
        except OSError:
            pass
        return out

    def close(self) -> None:
        self.regs.release()
        self.dirty_flag.release()
        self.data = None
        for v in self._mmio_views:
            v.release()
        self._mmio_data.release()
        for v in self._io_views.values():
            v.release()
        self._io_views.clear()


class KvmVm(VmBackend):
    """One KVM VM with an in-kernel irqchip."""

    def __init__(self, kvm: Kvm) -> None:
        self.kvm = kvm
        self.vm = kvm.create_vm()
        try:
            self.vm.set_tss_addr(L.KVM_TSS_ADDR)
        except Exception:
            self.vm.close()
            raise
        # The irqchip is created just before the first vCPU: measured here, the
        # first memslot added after KVM_CREATE_IRQCHIP costs ~7 ms, before it
        # ~0.1 ms, so RAM is mapped first.
        self._irqchip = False
        self._free_slots: list[int] = []
        self._next_slot = 0
        self._slots: dict[int, int] = {}   # slot -> GPA
        self._slot_lock = threading.Lock()
        self._irq_lock = threading.Lock()
        self._routes: dict[int, tuple[int, int]] = {}  # gsi -> (address, data)
        self._next_gsi = 24  # above the IOAPIC pins
        self._free_gsis: list[int] = []
        self._vcpus: list[KvmVcpu] = []

    def map_memory(self, gpa: int, size: int, hva: int, readonly: bool = False) -> int:
        # Services change memslots from several threads (page tracking on a
        # vCPU thread, a mediated device's mapping on another); the slot
        # numbers and the one ioctl struct are shared.
        with self._slot_lock:
            slot = self._free_slots.pop() if self._free_slots else self._next_slot
            if slot == self._next_slot:
                self._next_slot += 1
            flags = abi.KVM_MEM_READONLY if readonly else 0
            try:
                self.vm.set_user_memory_region(slot, gpa, size, hva, flags)
            except OSError:
                self._free_slots.append(slot)
                raise
            self._slots[slot] = gpa
            return slot

    def unmap_memory(self, slot: int) -> None:
        with self._slot_lock:
            gpa = self._slots[slot]
            self.vm.set_user_memory_region(slot, gpa, 0, 0)
            del self._slots[slot]
            self._free_slots.append(slot)

    def create_vcpu(self, index: int, *, entry: int, ram_size: int,
                    idt_limit: int) -> KvmVcpu:
        if not self._irqchip:
            self.vm.create_irqchip()
            self._irqchip = True
        v = KvmVcpu(self, index, entry, ram_size, idt_limit)
        self._vcpus.append(v)
        return v

    def signal_msi(self, address: int, data: int) -> int:
        return self.vm.signal_msi(address, data)

    def _install_routes(self) -> None:
        self.vm.set_gsi_routing([(gsi, a & 0xFFFFFFFF, a >> 32, d)
                                 for gsi, (a, d) in sorted(self._routes.items())])

    def irqfd(self, fd: int, address: int, data: int) -> int:
        # A device model may add a route from a vCPU thread while another
        # thread adds or removes one: the GSI table is shared.
        with self._irq_lock:
            if self._free_gsis:
                gsi = self._free_gsis.pop()
            else:
                gsi = self._next_gsi
                self._next_gsi += 1
            self._routes[gsi] = (address, data)
            try:
                self._install_routes()
                self.vm.irqfd(fd, gsi)
            except OSError:
                del self._routes[gsi]
                self._free_gsis.append(gsi)
                raise
            return gsi

    def irqfd_remove(self, fd: int, gsi: int) -> None:
        with self._irq_lock:
            try:
                self.vm.irqfd(fd, gsi, deassign=True)
            finally:
                if self._routes.pop(gsi, None) is not None:
                    self._free_gsis.append(gsi)
                self._install_routes()

    def ioeventfd(self, fd: int, addr: int, length: int, *, pio: bool,
                  datamatch: int | None = None, deassign: bool = False) -> None:
        self.vm.ioeventfd(fd, addr, length, pio=pio, datamatch=datamatch, deassign=deassign)

    def tsc_khz(self) -> int:
        return self._vcpus[0].kvcpu.tsc_khz() if self._vcpus else 0

    def close(self) -> None:
        for v in self._vcpus:
            v.close()
        self._vcpus.clear()
        self.vm.close()


def open_kvm(path: str = "/dev/kvm") -> Kvm:
    """Open /dev/kvm and check every capability paravm needs
    (:class:`KvmUnavailable` with one line otherwise)."""
    kvm = Kvm(path)
    try:
        kvm.require_capabilities()
    except KvmUnavailable:
        kvm.close()
        raise
    return kvm
