"""Kvm -> Vm -> Vcpu: the kernel's three file-descriptor levels as Python handles.

Kernel facts this module relies on:

* ``/dev/kvm`` answers system ioctls (version, capabilities, supported CPUID);
  ``KVM_CREATE_VM`` returns a VM fd; ``KVM_CREATE_VCPU`` on that returns a vCPU fd.
* Each vCPU fd is ``mmap``-ed to get its ``kvm_run`` page.  ``KVM_RUN`` fills it
  with the exit reason and the exit's data; with ``KVM_CAP_SYNC_REGS`` and
  ``kvm_valid_regs`` set, the kernel also stores the GPRs there on every exit,
  and loads them back on entry when ``kvm_dirty_regs`` says so.  That is how a
  hypercall's arguments and result travel without ``KVM_GET_REGS`` /
  ``KVM_SET_REGS`` (5-12 us more per exit on our machines: bench/exit_roundtrip, c-getregs vs c).
* ``fcntl.ioctl`` releases the GIL, so one thread per vCPU can sit in
  ``KVM_RUN`` while the others run Python.
* A vCPU thread is pulled out of ``KVM_RUN`` by a signal (``EINTR``); setting
  ``kvm_run.immediate_exit`` first closes the race with a signal that arrives
  just before entry.

The exit is decoded without allocating: :meth:`Vcpu.run` returns the exit
reason as an int and the fields stay readable through preallocated
``memoryview`` casts of the ``kvm_run`` page (``Vcpu.run_u8/u16/u32/u64``).
"""

from __future__ import annotations

import ctypes as C
import errno
import fcntl
import mmap
import os

from . import abi


class KvmError(OSError):
    """An ioctl failed; ``errno`` and the ioctl's name are kept."""


class KvmUnavailable(RuntimeError):
    """/dev/kvm or a required capability is missing.  ``str()`` is one line
    saying what is missing and what to do."""


def _ioctl(fd: int, request: int, arg=0, name: str = "") -> int:
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as e:
        raise KvmError(e.errno, f"{name or hex(request)}: {os.strerror(e.errno)}") from None


_libc = None


def _ioctl_ulong(fd: int, request: int, value: int, name: str) -> int:
    """An ioctl whose argument is an ``unsigned long`` beyond C int's range
    (``fcntl.ioctl`` converts plain ints to ``int``)."""
    global _libc
    if _libc is None:
        _libc = C.CDLL(None, use_errno=True)
        _libc.ioctl.argtypes = [C.c_int, C.c_ulong, C.c_ulong]
    ret = _libc.ioctl(fd, request, value)
    if ret < 0:
        err = C.get_errno()
        raise KvmError(err, f"{name}: {os.strerror(err)}")
    return ret


class Kvm:
    """The system handle (``/dev/kvm``)."""

    def __init__(self, path: str = "/dev/kvm") -> None:
        try:
            self.path = path
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailable(
                f"{path} does not exist: this machine has no KVM (enable virtualization "
                "in the firmware / load kvm_intel or kvm_amd, or run on a host with nested KVM)"
            ) from None
        except PermissionError:
            raise KvmUnavailable(
                f"{path}: permission denied: add your user to the 'kvm' group "
                "(or run as root)") from None
        except OSError as e:
            raise KvmUnavailable(f"{path}: {e.strerror}") from None
        try:
            version = fcntl.ioctl(self.fd, abi.KVM_GET_API_VERSION, 0)
            if version != abi.KVM_API_VERSION:
                raise KvmUnavailable(f"{path}: KVM API version {version}, paravm needs "
                                     f"{abi.KVM_API_VERSION}: upgrade the kernel")
            self.vcpu_mmap_size = fcntl.ioctl(self.fd, abi.KVM_GET_VCPU_MMAP_SIZE, 0)
        except OSError as e:
            os.close(self.fd)
            raise KvmUnavailable(f"{path} is not a KVM device ({e.strerror}): "
                                 "point paravm at /dev/kvm") from None
        except KvmUnavailable:
            os.close(self.fd)
            raise
        self._cpuid: abi.kvm_cpuid2 | None = None

    def check_extension(self, cap: int) -> int:
        """The capability's value (0 = absent; an error also counts as absent)."""
        try:
            return fcntl.ioctl(self.fd, abi.KVM_CHECK_EXTENSION, cap)
        except OSError:
            return 0

    def require_capabilities(self) -> None:
        """Raise :class:`KvmUnavailable` naming the first missing capability."""
        for cap, what in abi.REQUIRED_CAPS.items():
            if self.check_extension(cap) <= 0:
                raise KvmUnavailable(
                    f"{self.path} lacks {what}: paravm needs it; use a newer kernel "
                    "or a KVM backend that provides it")
        if not self.check_extension(abi.KVM_CAP_SYNC_REGS) & abi.KVM_SYNC_X86_REGS:
            raise KvmUnavailable(f"{self.path}: KVM_CAP_SYNC_REGS does not cover the GPRs")

    def supported_cpuid(self) -> abi.kvm_cpuid2:
        """``KVM_GET_SUPPORTED_CPUID``, cached (a fresh copy each call)."""
        if self._cpuid is None:
            cpuid = abi.kvm_cpuid2(nent=abi.MAX_CPUID_ENTRIES)
            _ioctl(self.fd, abi.KVM_GET_SUPPORTED_CPUID, cpuid, "KVM_GET_SUPPORTED_CPUID")
            self._cpuid = cpuid
        copy = abi.kvm_cpuid2()
        C.memmove(C.addressof(copy), C.addressof(self._cpuid), C.sizeof(copy))
        return copy

    def create_vm(self) -> "Vm":
        while True:
            try:
                fd = fcntl.ioctl(self.fd, abi.KVM_CREATE_VM, 0)
                break
            except InterruptedError:
                continue
            except OSError as e:
                raise KvmError(e.errno, f"KVM_CREATE_VM: {os.strerror(e.errno)}") from None
        return Vm(self, fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Vm:
    """A VM fd: memslots, the in-kernel irqchip, MSI, irqfd, ioeventfd."""

    def __init__(self, kvm: Kvm, fd: int) -> None:
        self.kvm = kvm
        self.fd = fd
        self._region = abi.kvm_userspace_memory_region()
        self._msi = abi.kvm_msi()
        self.vcpus: list[Vcpu] = []

    def set_user_memory_region(self, slot: int, gpa: int, size: int, hva: int,
                               flags: int = 0) -> None:
        """Create, move or (size 0) delete memslot *slot*; sizes in bytes."""
        r = self._region
        r.slot, r.flags, r.guest_phys_addr, r.memory_size, r.userspace_addr = \
            slot, flags, gpa, size, hva
        _ioctl(self.fd, abi.KVM_SET_USER_MEMORY_REGION, r, "KVM_SET_USER_MEMORY_REGION")

    def set_tss_addr(self, gpa: int) -> None:
        _ioctl_ulong(self.fd, abi.KVM_SET_TSS_ADDR, gpa, "KVM_SET_TSS_ADDR")

    def create_irqchip(self) -> None:
        _ioctl(self.fd, abi.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")

    def set_gsi_routing(self, routes: list[tuple[int, int, int, int]]) -> None:
        """Install MSI routes, each ``(gsi, address_lo, address_hi, data)``."""
        table = abi.irq_routing(max(1, len(routes)))()
        table.nr = len(routes)
        for i, (gsi, lo, hi, data) in enumerate(routes):
            e = table.entries[i]
            e.gsi, e.type = gsi, abi.KVM_IRQ_ROUTING_MSI
            e.u.msi.address_lo, e.u.msi.address_hi, e.u.msi.data = lo, hi, data
        _ioctl(self.fd, abi.KVM_SET_GSI_ROUTING, table, "KVM_SET_GSI_ROUTING")

    def signal_msi(self, address: int, data: int) -> int:
        """Inject one MSI; returns >0 if delivered, 0 if the guest blocked it."""
        m = self._msi
        m.address_lo, m.address_hi, m.data = address & 0xFFFFFFFF, address >> 32, data
        return _ioctl(self.fd, abi.KVM_SIGNAL_MSI, m, "KVM_SIGNAL_MSI")

    def irqfd(self, fd: int, gsi: int, deassign: bool = False) -> None:
        """Bind eventfd *fd* to *gsi*: a write to it raises the GSI in-kernel."""
        s = abi.kvm_irqfd(fd=fd, gsi=gsi,
                          flags=abi.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0)
        _ioctl(self.fd, abi.KVM_IRQFD, s, "KVM_IRQFD")

    def ioeventfd(self, fd: int, addr: int, length: int, *, pio: bool,
                  datamatch: int | None = None, deassign: bool = False) -> None:
        """Make a guest write of *length* bytes at *addr* signal eventfd *fd*
        in-kernel (no exit to user space)."""
        flags = abi.KVM_IOEVENTFD_FLAG_PIO if pio else 0
        if datamatch is not None:
            flags |= abi.KVM_IOEVENTFD_FLAG_DATAMATCH
        if deassign:
            flags |= abi.KVM_IOEVENTFD_FLAG_DEASSIGN
        s = abi.kvm_ioeventfd(datamatch=datamatch or 0, addr=addr, len=length,
                              fd=fd, flags=flags)
        _ioctl(self.fd, abi.KVM_IOEVENTFD, s, "KVM_IOEVENTFD")

    def create_vcpu(self, index: int) -> "Vcpu":
        fd = _ioctl(self.fd, abi.KVM_CREATE_VCPU, index, "KVM_CREATE_VCPU")
        vcpu = Vcpu(self, fd, index)
        self.vcpus.append(vcpu)
        return vcpu

    def close(self) -> None:
        for v in self.vcpus:
            v.close()
        self.vcpus.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Vcpu:
    """A vCPU fd and its mapped ``kvm_run`` page."""

    def __init__(self, vm: Vm, fd: int, index: int) -> None:
        self.vm = vm
        self.fd = fd
        self.index = index
        try:
            self.run_page = mmap.mmap(fd, vm.kvm.vcpu_mmap_size, mmap.MAP_SHARED,
                                      mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(fd)
            raise
        mv = memoryview(self.run_page)
        self.run_u8 = mv
        self.run_u16 = mv.cast("H")
        self.run_u32 = mv.cast("I")
        self.run_u64 = mv.cast("Q")
        # Index of rax in run_u64 when the GPRs are synced into the page.
        self.sync_base = abi.RUN_SYNC_REGS // 8

    # --- running -----------------------------------------------------------
    def run(self) -> int:
        """Enter the guest until the next exit; return ``kvm_run.exit_reason``,
        or ``KVM_EXIT_INTR`` when a signal interrupted the call."""
        try:
            fcntl.ioctl(self.fd, abi.KVM_RUN, 0)
        except InterruptedError:
            return abi.KVM_EXIT_INTR
        except OSError as e:
            if e.errno == errno.EAGAIN:
                return abi.KVM_EXIT_INTR
            raise KvmError(e.errno, f"KVM_RUN: {os.strerror(e.errno)}") from None
        return self.run_u32[abi.RUN_EXIT_REASON // 4]

    def set_immediate_exit(self, on: bool) -> None:
        self.run_u8[abi.RUN_IMMEDIATE_EXIT] = 1 if on else 0

    def enable_sync_regs(self) -> None:
        """Ask the kernel to store the GPRs in the run page on every exit."""
        self.run_u64[abi.RUN_VALID_REGS // 8] = abi.KVM_SYNC_X86_REGS

    def mark_regs_dirty(self) -> None:
        """Load the (edited) synced GPRs back into the vCPU on the next entry."""
        self.run_u64[abi.RUN_DIRTY_REGS // 8] |= abi.KVM_SYNC_X86_REGS

    # --- state -------------------------------------------------------------
    def get_regs(self) -> abi.kvm_regs:
        r = abi.kvm_regs()
        _ioctl(self.fd, abi.KVM_GET_REGS, r, "KVM_GET_REGS")
        return r

    def set_regs(self, r: abi.kvm_regs) -> None:
        _ioctl(self.fd, abi.KVM_SET_REGS, r, "KVM_SET_REGS")

    def get_sregs(self) -> abi.kvm_sregs:
        s = abi.kvm_sregs()
        _ioctl(self.fd, abi.KVM_GET_SREGS, s, "KVM_GET_SREGS")
        return s

    def set_sregs(self, s: abi.kvm_sregs) -> None:
        _ioctl(self.fd, abi.KVM_SET_SREGS, s, "KVM_SET_SREGS")

    def set_cpuid2(self, cpuid: abi.kvm_cpuid2) -> None:
        _ioctl(self.fd, abi.KVM_SET_CPUID2, cpuid, "KVM_SET_CPUID2")

    def get_lapic(self) -> abi.kvm_lapic_state:
        s = abi.kvm_lapic_state()
        _ioctl(self.fd, abi.KVM_GET_LAPIC, s, "KVM_GET_LAPIC")
        return s

    def set_lapic(self, s: abi.kvm_lapic_state) -> None:
        _ioctl(self.fd, abi.KVM_SET_LAPIC, s, "KVM_SET_LAPIC")

    def set_msrs(self, msrs: list[tuple[int, int]]) -> None:
        t = abi.kvm_msrs(len(msrs))()
        t.nmsrs = len(msrs)
        for i, (index, data) in enumerate(msrs):
            t.entries[i].index, t.entries[i].data = index, data
        n = _ioctl(self.fd, abi.KVM_SET_MSRS, t, "KVM_SET_MSRS")
        if n != len(msrs):
            raise KvmError(errno.EINVAL, f"KVM_SET_MSRS: set {n} of {len(msrs)} "
                           f"(MSR {msrs[n][0]:#x} refused)")

    def set_mp_state(self, state: int) -> None:
        _ioctl(self.fd, abi.KVM_SET_MP_STATE, abi.kvm_mp_state(state), "KVM_SET_MP_STATE")

    def tsc_khz(self) -> int:
        try:
            return fcntl.ioctl(self.fd, abi.KVM_GET_TSC_KHZ, 0)
        except OSError:
            return 0

    def close(self) -> None:
        if self.fd < 0:
            return
        for name in ("run_u8", "run_u16", "run_u32", "run_u64"):
            getattr(self, name).release()
        try:
            self.run_page.close()
        except BufferError:
            # A device kept a view of the run page; the mapping goes with it.
            pass
        os.close(self.fd)
        self.fd = -1
