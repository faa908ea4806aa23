"""Fakes for the MPT, RamSlots and mediated-GPU unit tests (no /dev/kvm).

* :class:`SlotVm` is a :class:`~paravm.vm.backend.VmBackend` that keeps the
  memslot table as KVM would (gpa, size, hva, read-only), records every call,
  can be told to fail the n-th ``map_memory`` / ``unmap_memory`` once, and
  records irqfd routes.
* :func:`make_domain` builds a *real* :class:`paravm.vm.domain.Domain` over a
  SlotVm: real guest memory, RamSlots, MMIO bus, write_protect/quiesced,
  map_frames and irqfds (eventfds; a fire is read back with :func:`fires`).
* :class:`Guest` plays the CPU of such a domain the way KVM does: an access
  to a read-write memslot goes to memory through the slot's host address; a
  write to a read-only slot, or any access where no slot is, becomes an MMIO
  exit handed to the real :func:`paravm.vm.vcpu.handle_exit`.
"""

from __future__ import annotations

import os
import threading
from array import array

from paravm.arch.x86 import layout as L
from paravm.loader import Image, Segment
from paravm.vm.backend import EXIT_INTR, EXIT_MMIO_READ, EXIT_MMIO_WRITE, VcpuBackend, VmBackend
from paravm.vm.domain import Domain, DomainState
from paravm.vm.vcpu import handle_exit


class FakeVcpu(VcpuBackend):
    """Never runs a guest; holds the fields of a fabricated exit."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.regs = memoryview(array("Q", [0] * 18))
        self.port = self.addr = self.size = 0
        self.data = memoryview(bytearray(8))
        self.detail = ""
        self.dirty_flag = memoryview(array("Q", [0]))
        self.dirty_value = 1
        self.kicked = threading.Event()

    def run(self) -> int:
        self.kicked.wait()
        return EXIT_INTR

    def regs_dirty(self) -> None:
        pass

    def kick(self) -> None:
        self.kicked.set()

    def clear_kick(self) -> None:
        self.kicked.clear()

    def bind_thread(self) -> None:
        pass

    def unbind_thread(self) -> None:
        pass

    def dump(self) -> dict[str, int]:
        return {"rip": 0}

    def close(self) -> None:
        pass


class SlotVm(VmBackend):
    """The memslot table KVM would hold, plus a log of the calls.

    ``slots``: slot id -> (gpa, size, hva, readonly).  ``fail_map`` /
    ``fail_unmap``: when set to n >= 1, the n-th following call of that kind
    raises ``OSError(ENOSPC)`` (and changes nothing); counted down once."""

    def __init__(self) -> None:
        self.slots: dict[int, tuple[int, int, int, bool]] = {}
        self.calls: list[tuple] = []
        self._next = 0
        self.fail_map = 0
        self.fail_unmap = 0
        self.irqfds: dict[int, tuple[int, int, int]] = {}   # fd -> (address, data, gsi)
        self.irqfd_removed: list[tuple[int, int]] = []
        self.fail_irqfd = False
        self.vcpus: list[FakeVcpu] = []
        self._gsi = 24

    # --- memslots ----------------------------------------------------------------------
    def map_memory(self, gpa, size, hva, readonly=False):
        if self.fail_map:
            self.fail_map -= 1
            if not self.fail_map:
                self.calls.append(("map_failed", gpa, size, readonly))
                raise OSError(28, "fake KVM: no memslot left")
        slot = self._next
        self._next += 1
        self.slots[slot] = (gpa, size, hva, readonly)
        self.calls.append(("map", gpa, size, readonly))
        return slot

    def unmap_memory(self, slot):
        if self.fail_unmap:
            self.fail_unmap -= 1
            if not self.fail_unmap:
                self.calls.append(("unmap_failed", slot))
                raise OSError(22, "fake KVM: cannot delete the memslot")
        gpa, size, _, ro = self.slots.pop(slot)
        self.calls.append(("unmap", gpa, size, ro))

    def table(self) -> list[tuple[int, int, int, bool]]:
        """The memslots as (gpa, size, hva, readonly), sorted by GPA."""
        return sorted(self.slots.values())

    def slot_at(self, gpa: int):
        """The (gpa, size, hva, readonly) of the slot holding *gpa*, or None."""
        for s in self.slots.values():
            if s[0] <= gpa < s[0] + s[1]:
                return s
        return None

    # --- the rest of the interface ------------------------------------------------------
    def create_vcpu(self, index, *, entry, ram_size, idt_limit):
        v = FakeVcpu(index)
        self.vcpus.append(v)
        return v

    def signal_msi(self, address, data):
        return 1

    def irqfd(self, fd, address, data):
        if self.fail_irqfd:
            raise OSError(28, "fake KVM: no GSI left")
        self._gsi += 1
        self.irqfds[fd] = (address, data, self._gsi)
        return self._gsi

    def irqfd_remove(self, fd, gsi):
        self.irqfd_removed.append((fd, gsi))

    def ioeventfd(self, fd, addr, length, *, pio, datamatch=None, deassign=False):
        pass

    def tsc_khz(self):
        return 0

    def close(self):
        pass


def make_domain(machine, name: str = "d", memory_bytes: int = 4 << 20,
                nr_vcpus: int = 1) -> Domain:
    """A real Domain (never started) over a :class:`SlotVm` (``dom.vm``)."""
    image = Image(f"{name}.elf", L.RESERVED_END,
                  (Segment(L.RESERVED_END, b"\xf4", 0x1000, True),), None,
                  L.RESERVED_END + 0x1000)
    return Domain(name=name, domid=1, image=image, memory_bytes=memory_bytes,
                  nr_vcpus=nr_vcpus, args=(), vm=SlotVm(), machine=machine, sink=None)


def destroy(dom: Domain) -> None:
    if dom.state is DomainState.RUNNING:
        dom.stop("test teardown")
    dom.destroy()


def fires(irq) -> int:
    """How many times *irq* (a Domain Irqfd) fired since the last look."""
    try:
        return os.eventfd_read(irq.fd)
    except BlockingIOError:
        return 0


class Guest:
    """The CPU of *dom* (vCPU *vcpu*), as KVM runs it: see the module docstring.

    ``exits`` counts the MMIO exits taken."""

    def __init__(self, dom: Domain, machine, vcpu: int = 0) -> None:
        self.dom, self.machine = dom, machine
        self.runner = dom.vcpus[vcpu]
        self.exits = 0

    def _memory(self, gpa: int, n: int, write: bool):
        """The host buffer and offset behind [gpa, gpa+n) if KVM would serve
        the access from memory, else None (an exit)."""
        s = self.dom.vm.slot_at(gpa)
        if s is None or (write and s[3]):
            return None
        sgpa, size, hva, _ = s
        assert gpa + n <= sgpa + size, "a test access crosses a memslot"
        fr = self.machine.range_at_hva(hva + gpa - sgpa)
        assert fr is not None, f"memslot at {sgpa:#x} has no frames behind it"
        return fr.buffer, hva + gpa - sgpa - fr.hva

    def _exit(self, kind: int, gpa: int, data: bytearray) -> None:
        be = self.runner.backend
        be.addr, be.size, be.data = gpa, len(data), memoryview(data)
        self.exits += 1
        assert handle_exit(self.runner, kind) is True

    def write(self, gpa: int, data: bytes) -> None:
        """One store of len(data) (1, 2, 4 or 8) bytes."""
        hit = self._memory(gpa, len(data), True)
        if hit is None:
            self._exit(EXIT_MMIO_WRITE, gpa, bytearray(data))
        else:
            buf, off = hit
            buf[off:off + len(data)] = data

    def read(self, gpa: int, n: int) -> bytes:
        """One load of *n* (1, 2, 4 or 8) bytes."""
        hit = self._memory(gpa, n, False)
        if hit is None:
            data = bytearray(n)
            self._exit(EXIT_MMIO_READ, gpa, data)
            return bytes(data)
        buf, off = hit
        return bytes(buf[off:off + n])

    def write_u32(self, gpa: int, value: int) -> None:
        self.write(gpa, value.to_bytes(4, "little"))

    def write_u64(self, gpa: int, value: int) -> None:
        self.write(gpa, value.to_bytes(8, "little"))

    def read_u32(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 4), "little")
