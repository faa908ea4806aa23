"""The execution-backend interface the Domain and vCPU loop are written against.

KVM is one backend (:mod:`.kvm_backend`); a software CPU will be another.  As
CPython's ``selectors``: one abstract interface, one small class per
mechanism.  A vCPU backend's :meth:`VcpuBackend.run` returns one of the
``EXIT_*`` kinds below and leaves the exit's fields in attributes (no object
per exit):

* ``EXIT_IO_OUT`` / ``EXIT_IO_IN``: ``port``, ``size`` (1/2/4), ``data`` (a
  writable memoryview of ``size`` bytes: the value written, or to fill)
* ``EXIT_MMIO_WRITE`` / ``EXIT_MMIO_READ``: ``addr``, ``size``, ``data``
* ``EXIT_SHUTDOWN`` (triple fault), ``EXIT_FAIL_ENTRY``, ``EXIT_INTERNAL_ERROR``,
  ``EXIT_UNKNOWN``: ``detail`` (a string)
* ``EXIT_INTR``: interrupted by :meth:`VcpuBackend.kick`; ``EXIT_HLT``.
* ``EXIT_HYPERCALL`` / ``EXIT_HYPERCALL_BLOCK``: a ``outl`` to the hypercall
  ports, recognised before any other decoding (the hot path); the number and
  arguments (or the block's GPA in rax) are in ``regs``.

``regs`` is a writable array of the 18 GPRs in ``kvm_regs`` order (rax, rbx,
rcx, rdx, rsi, rdi, rsp, rbp, r8..r15, rip, rflags), current at every I/O exit;
after changing it call :meth:`VcpuBackend.regs_dirty`, or (the hot path) store
``dirty_value`` into ``dirty_flag[0]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

EXIT_IO_OUT = 0
EXIT_IO_IN = 1
EXIT_MMIO_WRITE = 2
EXIT_MMIO_READ = 3
EXIT_HLT = 4
EXIT_INTR = 5
EXIT_SHUTDOWN = 6
EXIT_FAIL_ENTRY = 7
EXIT_INTERNAL_ERROR = 8
EXIT_SYSTEM_EVENT = 9
EXIT_UNKNOWN = 10
EXIT_HYPERCALL = 11        # register form: a 4-byte OUT to HC_PORT, registers synced
EXIT_HYPERCALL_BLOCK = 12  # block form: a 4-byte OUT to HC_BLOCK_PORT, rax = block GPA
EXIT_KINDS = ("IO_OUT", "IO_IN", "MMIO_WRITE", "MMIO_READ", "HLT", "INTR", "SHUTDOWN",
              "FAIL_ENTRY", "INTERNAL_ERROR", "SYSTEM_EVENT", "UNKNOWN", "HYPERCALL",
              "HYPERCALL_BLOCK")

REG_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10",
             "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP, R8, R9, R10 = range(11)
RIP, RFLAGS = 16, 17


class VcpuBackend(ABC):
    index: int
    port: int
    addr: int
    size: int
    data: memoryview
    detail: str
    regs: memoryview
    dirty_flag: memoryview   # one u64: store dirty_value in it to mark regs dirty
    dirty_value: int

    @abstractmethod
    def run(self) -> int: ...

    @abstractmethod
    def regs_dirty(self) -> None: ...

    @abstractmethod
    def kick(self) -> None:
        """Make the current or next :meth:`run` return ``EXIT_INTR`` soon;
        callable from any thread."""

    @abstractmethod
    def clear_kick(self) -> None: ...

    @abstractmethod
    def bind_thread(self) -> None:
        """Called by the thread that will call :meth:`run`."""

    @abstractmethod
    def unbind_thread(self) -> None:
        """Called by that thread when it stops calling :meth:`run`."""

    @abstractmethod
    def dump(self) -> dict[str, int]:
        """Registers for a crash report (GPRs, rip, rflags, cr0/2/3/4, efer, cs, ss)."""

    @abstractmethod
    def close(self) -> None: ...


class VmBackend(ABC):
    @abstractmethod
    def map_memory(self, gpa: int, size: int, hva: int, readonly: bool = False) -> int:
        """Map *size* bytes at host address *hva* to *gpa*; returns a slot id."""

    @abstractmethod
    def unmap_memory(self, slot: int) -> None: ...

    @abstractmethod
    def create_vcpu(self, index: int, *, entry: int, ram_size: int,
                    idt_limit: int) -> VcpuBackend: ...

    @abstractmethod
    def signal_msi(self, address: int, data: int) -> int: ...

    @abstractmethod
    def irqfd(self, fd: int, address: int, data: int) -> int:
        """Route eventfd *fd* to an MSI in-kernel; returns the GSI."""

    @abstractmethod
    def irqfd_remove(self, fd: int, gsi: int) -> None: ...

    @abstractmethod
    def ioeventfd(self, fd: int, addr: int, length: int, *, pio: bool,
                  datamatch: int | None = None, deassign: bool = False) -> None: ...

    @abstractmethod
    def tsc_khz(self) -> int: ...

    @abstractmethod
    def close(self) -> None: ...
