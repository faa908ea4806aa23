"""The KVM ABI: ioctl numbers, capability and exit-reason constants, ctypes structs.

Everything here is transcribed from Linux ``include/uapi/linux/kvm.h`` and
``arch/x86/include/uapi/asm/kvm.h`` (x86-64).  Each struct is declared once;
``tests/unit/test_kvm_abi.py`` checks every size and the offsets that the run
loop reads directly from the ``kvm_run`` page.
"""

from __future__ import annotations

import ctypes as C

# --- ioctl number encoding (asm-generic/ioctl.h) ---------------------------
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _iow(nr: int, size: int) -> int:
    return _ioc(_IOC_WRITE, nr, size)


def _ior(nr: int, size: int) -> int:
    return _ioc(_IOC_READ, nr, size)


def _iowr(nr: int, size: int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, size)


# --- structs ----------------------------------------------------------------
class kvm_userspace_memory_region(C.Structure):
    _fields_ = [
        ("slot", C.c_uint32),
        ("flags", C.c_uint32),
        ("guest_phys_addr", C.c_uint64),
        ("memory_size", C.c_uint64),
        ("userspace_addr", C.c_uint64),
    ]


class kvm_regs(C.Structure):
    _fields_ = [(n, C.c_uint64) for n in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
        "rip", "rflags")]


class kvm_segment(C.Structure):
    _fields_ = [
        ("base", C.c_uint64),
        ("limit", C.c_uint32),
        ("selector", C.c_uint16),
        ("type", C.c_uint8),
        ("present", C.c_uint8),
        ("dpl", C.c_uint8),
        ("db", C.c_uint8),
        ("s", C.c_uint8),
        ("l", C.c_uint8),
        ("g", C.c_uint8),
        ("avl", C.c_uint8),
        ("unusable", C.c_uint8),
        ("padding", C.c_uint8),
    ]


class kvm_dtable(C.Structure):
    _fields_ = [("base", C.c_uint64), ("limit", C.c_uint16), ("padding", C.c_uint16 * 3)]


class kvm_sregs(C.Structure):
    _fields_ = [
        ("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment),
        ("fs", kvm_segment), ("gs", kvm_segment), ("ss", kvm_segment),
        ("tr", kvm_segment), ("ldt", kvm_segment),
        ("gdt", kvm_dtable), ("idt", kvm_dtable),
        ("cr0", C.c_uint64), ("cr2", C.c_uint64), ("cr3", C.c_uint64),
        ("cr4", C.c_uint64), ("cr8", C.c_uint64), ("efer", C.c_uint64),
        ("apic_base", C.c_uint64),
        ("interrupt_bitmap", C.c_uint64 * 4),
    ]


class kvm_vcpu_events(C.Structure):
    # Only its size matters to us (it is part of kvm_sync_regs).
    _fields_ = [("raw", C.c_uint8 * 64)]


class kvm_sync_regs(C.Structure):
    _fields_ = [("regs", kvm_regs), ("sregs", kvm_sregs), ("events", kvm_vcpu_events)]


class _run_io(C.Structure):
    _fields_ = [
        ("direction", C.c_uint8),
        ("size", C.c_uint8),
        ("port", C.c_uint16),
        ("count", C.c_uint32),
        ("data_offset", C.c_uint64),
    ]


class _run_mmio(C.Structure):
    _fields_ = [
        ("phys_addr", C.c_uint64),
        ("data", C.c_uint8 * 8),
        ("len", C.c_uint32),
        ("is_write", C.c_uint8),
    ]


class _run_fail_entry(C.Structure):
    _fields_ = [("hardware_entry_failure_reason", C.c_uint64), ("cpu", C.c_uint32)]


class _run_internal(C.Structure):
    _fields_ = [("suberror", C.c_uint32), ("ndata", C.c_uint32), ("data", C.c_uint64 * 16)]


class _run_system_event(C.Structure):
    _fields_ = [("type", C.c_uint32), ("ndata", C.c_uint32), ("data", C.c_uint64 * 16)]


class _run_exit_union(C.Union):
    _fields_ = [
        ("io", _run_io),
        ("mmio", _run_mmio),
        ("fail_entry", _run_fail_entry),
        ("internal", _run_internal),
        ("system_event", _run_system_event),
        ("padding", C.c_char * 256),
    ]


class _run_s(C.Union):
    _fields_ = [("regs", kvm_sync_regs), ("padding", C.c_char * 2048)]


class kvm_run(C.Structure):
    _fields_ = [
        ("request_interrupt_window", C.c_uint8),
        ("immediate_exit", C.c_uint8),
        ("padding1", C.c_uint8 * 6),
        ("exit_reason", C.c_uint32),
        ("ready_for_interrupt_injection", C.c_uint8),
        ("if_flag", C.c_uint8),
        ("flags", C.c_uint16),
        ("cr8", C.c_uint64),
        ("apic_base", C.c_uint64),
        ("u", _run_exit_union),
        ("kvm_valid_regs", C.c_uint64),
        ("kvm_dirty_regs", C.c_uint64),
        ("s", _run_s),
    ]


class kvm_msi(C.Structure):
    _fields_ = [
        ("address_lo", C.c_uint32),
        ("address_hi", C.c_uint32),
        ("data", C.c_uint32),
        ("flags", C.c_uint32),
        ("devid", C.c_uint32),
        ("pad", C.c_uint8 * 12),
    ]


class kvm_irq_routing_msi(C.Structure):
    _fields_ = [
        ("address_lo", C.c_uint32),
        ("address_hi", C.c_uint32),
        ("data", C.c_uint32),
        ("devid", C.c_uint32),
    ]


class kvm_irq_routing_irqchip(C.Structure):
    _fields_ = [("irqchip", C.c_uint32), ("pin", C.c_uint32)]


class _routing_u(C.Union):
    _fields_ = [
        ("irqchip", kvm_irq_routing_irqchip),
        ("msi", kvm_irq_routing_msi),
        ("pad", C.c_uint32 * 8),
    ]


class kvm_irq_routing_entry(C.Structure):
    _fields_ = [
        ("gsi", C.c_uint32),
        ("type", C.c_uint32),
        ("flags", C.c_uint32),
        ("pad", C.c_uint32),
        ("u", _routing_u),
    ]


class kvm_irq_routing(C.Structure):
    """Header only; the entries follow it (see :func:`irq_routing`)."""

    _fields_ = [("nr", C.c_uint32), ("flags", C.c_uint32)]


def irq_routing(n: int) -> type[C.Structure]:
    """A ``kvm_irq_routing`` with room for *n* entries (a flexible array in C)."""
    return type(f"kvm_irq_routing_{n}", (C.Structure,), {
        "_fields_": [("nr", C.c_uint32), ("flags", C.c_uint32),
                     ("entries", kvm_irq_routing_entry * n)]})


class kvm_irqfd(C.Structure):
    _fields_ = [
        ("fd", C.c_uint32),
        ("gsi", C.c_uint32),
        ("flags", C.c_uint32),
        ("resamplefd", C.c_uint32),
        ("pad", C.c_uint8 * 16),
    ]


class kvm_ioeventfd(C.Structure):
    _fields_ = [
        ("datamatch", C.c_uint64),
        ("addr", C.c_uint64),
        ("len", C.c_uint32),
        ("fd", C.c_int32),
        ("flags", C.c_uint32),
        ("pad", C.c_uint8 * 36),
    ]


class kvm_cpuid_entry2(C.Structure):
    _fields_ = [
        ("function", C.c_uint32),
        ("index", C.c_uint32),
        ("flags", C.c_uint32),
        ("eax", C.c_uint32),
        ("ebx", C.c_uint32),
        ("ecx", C.c_uint32),
        ("edx", C.c_uint32),
        ("padding", C.c_uint32 * 3),
    ]


MAX_CPUID_ENTRIES = 256


class kvm_cpuid2(C.Structure):
    _fields_ = [
        ("nent", C.c_uint32),
        ("padding", C.c_uint32),
        ("entries", kvm_cpuid_entry2 * MAX_CPUID_ENTRIES),
    ]


class kvm_enable_cap(C.Structure):
    _fields_ = [
        ("cap", C.c_uint32),
        ("flags", C.c_uint32),
        ("args", C.c_uint64 * 4),
        ("pad", C.c_uint8 * 64),
    ]


class kvm_lapic_state(C.Structure):
    _fields_ = [("regs", C.c_uint8 * 1024)]


class kvm_mp_state(C.Structure):
    _fields_ = [("mp_state", C.c_uint32)]


KVM_MP_STATE_RUNNABLE = 0


class kvm_msr_entry(C.Structure):
    _fields_ = [("index", C.c_uint32), ("reserved", C.c_uint32), ("data", C.c_uint64)]


def kvm_msrs(n: int) -> type[C.Structure]:
    """A ``kvm_msrs`` with room for *n* entries."""
    return type(f"kvm_msrs_{n}", (C.Structure,), {
        "_fields_": [("nmsrs", C.c_uint32), ("pad", C.c_uint32),
                     ("entries", kvm_msr_entry * n)]})


# --- ioctls (kvm.h) ---------------------------------------------------------
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, 8)  # sizeof(struct kvm_cpuid2) header
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, C.sizeof(kvm_userspace_memory_region))
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, 8)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_SET_GSI_ROUTING = _iow(0x6A, C.sizeof(kvm_irq_routing))
KVM_IRQFD = _iow(0x76, C.sizeof(kvm_irqfd))
KVM_IOEVENTFD = _iow(0x79, C.sizeof(kvm_ioeventfd))
KVM_ENABLE_CAP = _iow(0xA3, C.sizeof(kvm_enable_cap))
KVM_SIGNAL_MSI = _iow(0xA5, C.sizeof(kvm_msi))
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, C.sizeof(kvm_regs))
KVM_SET_REGS = _iow(0x82, C.sizeof(kvm_regs))
KVM_GET_SREGS = _ior(0x83, C.sizeof(kvm_sregs))
KVM_SET_SREGS = _iow(0x84, C.sizeof(kvm_sregs))
KVM_SET_MSRS = _iow(0x89, 8)
KVM_SET_CPUID2 = _iow(0x90, 8)
KVM_GET_LAPIC = _ior(0x8E, C.sizeof(kvm_lapic_state))
KVM_SET_LAPIC = _iow(0x8F, C.sizeof(kvm_lapic_state))
KVM_GET_TSC_KHZ = _io(0xA3)
KVM_SET_MP_STATE = _iow(0x99, C.sizeof(kvm_mp_state))

KVM_API_VERSION = 12

# --- capabilities -----------------------------------------------------------
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_IRQFD = 32
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_IOEVENTFD = 36
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_SYNC_REGS = 74
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IMMEDIATE_EXIT = 136

# What paravm cannot run without, with the reason shown to the user.
REQUIRED_CAPS: dict[int, str] = {
    KVM_CAP_USER_MEMORY: "KVM_CAP_USER_MEMORY (guest RAM from user memory)",
    KVM_CAP_IRQCHIP: "KVM_CAP_IRQCHIP (in-kernel LAPIC, needed to wake halted guests)",
    KVM_CAP_IRQ_ROUTING: "KVM_CAP_IRQ_ROUTING (MSI routes)",
    KVM_CAP_SIGNAL_MSI: "KVM_CAP_SIGNAL_MSI (interrupt injection)",
    KVM_CAP_IRQFD: "KVM_CAP_IRQFD (eventfd -> interrupt doorbells)",
    KVM_CAP_IOEVENTFD: "KVM_CAP_IOEVENTFD (doorbell writes -> eventfd)",
    KVM_CAP_EXT_CPUID: "KVM_CAP_EXT_CPUID (KVM_GET_SUPPORTED_CPUID)",
    KVM_CAP_SYNC_REGS: "KVM_CAP_SYNC_REGS (hypercall registers in the kvm_run page)",
    KVM_CAP_IMMEDIATE_EXIT: "KVM_CAP_IMMEDIATE_EXIT (stopping a vCPU without a race)",
}

# --- kvm_run.exit_reason ----------------------------------------------------
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24

EXIT_REASON_NAMES = {
    KVM_EXIT_UNKNOWN: "UNKNOWN", KVM_EXIT_EXCEPTION: "EXCEPTION", KVM_EXIT_IO: "IO",
    KVM_EXIT_HYPERCALL: "HYPERCALL", KVM_EXIT_DEBUG: "DEBUG", KVM_EXIT_HLT: "HLT",
    KVM_EXIT_MMIO: "MMIO", KVM_EXIT_IRQ_WINDOW_OPEN: "IRQ_WINDOW_OPEN",
    KVM_EXIT_SHUTDOWN: "SHUTDOWN", KVM_EXIT_FAIL_ENTRY: "FAIL_ENTRY", KVM_EXIT_INTR: "INTR",
    KVM_EXIT_INTERNAL_ERROR: "INTERNAL_ERROR", KVM_EXIT_SYSTEM_EVENT: "SYSTEM_EVENT",
}

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

KVM_SYNC_X86_REGS = 1 << 0
KVM_SYNC_X86_SREGS = 1 << 1
KVM_SYNC_X86_EVENTS = 1 << 2

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2

KVM_IRQFD_FLAG_DEASSIGN = 1 << 0

KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2

# Offsets into the kvm_run page that the run loop reads without ctypes.
RUN_EXIT_REASON = kvm_run.exit_reason.offset
RUN_IMMEDIATE_EXIT = kvm_run.immediate_exit.offset
RUN_EXIT_U = kvm_run.u.offset
RUN_VALID_REGS = kvm_run.kvm_valid_regs.offset
RUN_DIRTY_REGS = kvm_run.kvm_dirty_regs.offset
RUN_SYNC_REGS = kvm_run.s.offset
