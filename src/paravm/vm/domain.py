"""A Domain: guest memory, vCPUs, an in-kernel irqchip, PIO/MMIO buses, hypercalls.

Life cycle: ``CREATED -> RUNNING -> STOPPED``, or ``CREATED -> STOPPED`` for a
domain stopped before it started.  A domain stops when it calls
exit, when its last vCPU goes off, when it crashes (any vCPU), or when the
host stops it; stopping kicks every vCPU out of ``KVM_RUN`` and records a
:class:`DomainResult`.  Only the first cause is kept.  Destroying releases
every fd, mapping, memslot and thread the domain had.
"""

from __future__ import annotations

import contextlib
import enum
import os
import threading
import time

from ..arch.x86 import boot, layout as L
from ..hypercall.abi import HC_PORT
from ..hypercall.table import HypercallTable
from ..loader import Image
from ..memory import GuestMemory, MachineMemory, PAGE_SIZE, Region
from .backend import VmBackend
from .bus import Bus
from .console import Console, Sink
from .corecalls import register_core_calls
from .ramslots import RamSlots
from .vcpu import GuestStop, VcpuRunner, VcpuState, format_dump

CRASH_EXIT_CODE = 70   # sysexits EX_SOFTWARE: what `paravm run` reports for a crash


class DomainState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"


class DomainResult:
    """How a domain ended: ``exited`` with ``status``, ``crashed`` with a
    ``reason`` and a register ``dump`` of vCPU ``vcpu``, or ``stopped`` by the host."""

    __slots__ = ("how", "status", "reason", "vcpu", "dump")

    def __init__(self, how: str, status: int = 0, reason: str = "", vcpu: int | None = None,
                 dump: dict[str, int] | None = None) -> None:
        self.how = how                # "exited" | "crashed" | "stopped"
        self.status = status
        self.reason = reason
        self.vcpu = vcpu
        self.dump = dump or {}

    def __repr__(self) -> str:
        return (f"DomainResult(how={self.how!r}, status={self.status}, "
                f"reason={self.reason!r}, vcpu={self.vcpu})")

    @property
    def exit_code(self) -> int:
        if self.how == "exited":
            # A process exit code has 8 bits; a non-zero status never becomes 0.
            return (self.status & 0xFF) or (1 if self.status else 0)
        return CRASH_EXIT_CODE if self.how == "crashed" else 0

    def describe(self) -> str:
        if self.how == "exited":
            return f"exited with status {self.status}"
        if self.how == "crashed":
            text = f"crashed on vCPU {self.vcpu}: {self.reason}"
            if self.dump:
                text += "\n" + format_dump(self.dump)
            return text
        return f"stopped by the host ({self.reason})" if self.reason else "stopped by the host"


class Domain:
    """Use :meth:`paravm.Hypervisor.create_domain`; this class is its product."""

    def __init__(self, *, name: str, domid: int, image: Image, memory_bytes: int,
                 nr_vcpus: int, args: tuple[str, ...], vm: VmBackend,
                 machine: MachineMemory, sink: Sink | None, timing: bool = False,
                 on_stop=None, cpus: list[int] | None = None,
                 regions: tuple = (), on_start=None) -> None:
        self.name, self.domid, self.image = name, domid, image
        self.nr_vcpus, self.args = nr_vcpus, args
        self.t_create_ns = time.perf_counter_ns()
        self.vm = vm
        self.machine = machine
        self.state = DomainState.CREATED
        self.result: DomainResult | None = None
        self.hypercalls = HypercallTable()
        register_core_calls(self.hypercalls)
        self.pio_bus = Bus("PIO", 1 << 16)
        self.mmio_bus = Bus("MMIO", 1 << 64)
        self.console = Console(name, sink)
        from ..hypercall.abi import HC_RESERVED_PORTS
        # The hypercall ports are decoded by the run loop; reserving them on the
        # bus makes a device that claims them fail at registration.
        self.pio_bus.insert(HC_PORT, HC_RESERVED_PORTS, _Reserved(), "hypercall")
        self.boot_marks: dict[int, int] = {}
        self.memory = GuestMemory()
        self.vcpus: list[VcpuRunner] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._on_stop = on_stop
        self._on_start = on_start
        self._closers: list = []     # called in reverse order by destroy()
        self._irqfds: set[Irqfd] = set()
        self._slot_lock = threading.RLock()  # memslot and bus changes after build
        self._frame_slots: dict[int, int] = {}   # map_frames GPA -> memslot
        self._destroyed = False
        self.t_start_ns: int | None = None
        self.t_stop_ns: int | None = None
        try:
            self._build(memory_bytes, timing, cpus, regions)
        except BaseException:
            self.destroy()
            raise

    def _build(self, memory_bytes: int, timing: bool, cpus: list[int] | None,
               regions: tuple) -> None:
        ram = self.machine.alloc(memory_bytes // PAGE_SIZE, f"{self.name}.ram")
        self._closers.append(lambda: self.machine.free(ram))
        self.ram = ram
        self.memory.add_region(Region(0, ram))
        self._closers.append(self.memory.close)
        self.ram_slots = RamSlots(self.vm, ram, L.RESERVED_END)
        self._closers.append(self.ram_slots.close)
        self._closers.append(self._unmap_all_frames)
        # Extra regions go in before the vCPUs (and so before the irqchip):
        # a memslot added after KVM_CREATE_IRQCHIP costs ~7 ms here
        # (bench/memslot).
        for gpa, frames, readonly in regions:
            self.map_frames(gpa, frames, readonly=readonly)
        mem = self.memory
        boot.build_page_tables(mem, self.nr_vcpus)
        boot.build_gdt_tss(mem, self.nr_vcpus)
        idt_limit = boot.build_idt(mem, self.image.vectors)
        self.image.load(mem)
        for i in range(self.nr_vcpus):
            be = self.vm.create_vcpu(i, entry=self.image.entry, ram_size=ram.size,
                                     idt_limit=idt_limit)
            self.vcpus.append(VcpuRunner(self, be, timing=timing,
                                         cpu=cpus[i] if cpus else None))
        boot.write_boot_info(mem, domid=self.domid, name=self.name, nr_vcpus=self.nr_vcpus,
                             ram_size=ram.size, heap_start=self.image.end,
                             tsc_khz=self.vm.tsc_khz(), args=self.args)

    def map_frames(self, gpa: int, frames, *, readonly: bool = False) -> None:
        """Map a machine :class:`~paravm.memory.FrameRange` at *gpa* (page
        aligned, inside the identity map, not overlapping RAM or another
        region): a memslot (``KVM_MEM_READONLY`` if *readonly*) and a
        :class:`~paravm.memory.Region` of :attr:`memory`.  ``ValueError`` on
        a bad placement."""
        if gpa % PAGE_SIZE or gpa < self.ram.size or gpa + frames.size > L.LAPIC_BASE - (32 << 20):
            raise ValueError(f"{self.name}: cannot map {frames.size:#x} bytes at {gpa:#x}")
        region = Region(gpa, frames, readonly=readonly)
        with self._slot_lock:
            device = self.mmio_bus.overlaps(gpa, frames.size)
            if device is not None:
                raise ValueError(f"{self.name}: {frames.size:#x} bytes at {gpa:#x} overlap "
                                 f"MMIO {device}")
            self.memory.add_region(region)
            try:
                slot = self.vm.map_memory(gpa, frames.size, frames.hva, readonly=readonly)
            except BaseException:
                self.memory.remove_region(gpa)
                raise
            self._frame_slots[gpa] = slot

    def unmap_frames(self, gpa: int) -> None:
        """Undo :meth:`map_frames` of the range at *gpa* (``KeyError`` if
        none): the memslot goes first (KVM is done with the frames when it
        returns), then the region.  A vCPU touching the range afterwards
        takes an MMIO exit there (a crash, unless a device claims it)."""
        with self._slot_lock:
            slot = self._frame_slots.pop(gpa)
            self.vm.unmap_memory(slot)
            self.memory.remove_region(gpa)

    def _unmap_all_frames(self) -> None:
        with self._slot_lock:
            slots, self._frame_slots = self._frame_slots, {}
        for slot in slots.values():
            self.vm.unmap_memory(slot)

    # --- write tracking (specs/grant-mpt.md §E5: read-only slots) ---------------------
    @contextlib.contextmanager
    def quiesced(self, timeout: float = 5.0):
        """Hold every vCPU of this domain out of the guest for the ``with``
        body (except one running on this thread: it is out already).
        ``RuntimeError`` if a vCPU stays in the guest for *timeout* s."""
        me = threading.current_thread()
        held = []
        deadline = time.monotonic() + timeout
        try:
            for v in self.vcpus:
                if v.thread is me:
                    continue
                held.append(v)
                if not v.hold(max(0.0, deadline - time.monotonic())):
                    raise RuntimeError(f"{self.name}: vCPU {v.index} did not leave the guest "
                                       f"within {timeout}s")
            yield
        finally:
            for v in held:
                v.release_hold()

    def write_protect(self, gfn: int, on_write) -> None:
        """Write-track RAM page *gfn*: from now on every guest write to it
        exits, lands in the page, and then calls ``on_write(gpa, data)``
        (*data* the bytes written to this page: 1 to 8; a store across the
        page's edge reports only its part on the page, as KVM's
        track_write) on the writing vCPU's thread.  Reads, and writes by the host, are not reported.
        ``ValueError`` for a page outside RAM or in the reserved low MiB,
        or one tracked already; ``RuntimeError`` if the vCPUs cannot be
        held; ``OSError`` if KVM refuses (nothing changed)."""
        if not self.ram_slots.trackable(gfn):
            raise ValueError(f"{self.name}: GFN {gfn:#x} is not trackable RAM")
        gpa = gfn * PAGE_SIZE
        page = _TrackedPage(self.ram.buffer[gpa:gpa + PAGE_SIZE], gpa, on_write)
        with self._slot_lock:
            # The device goes on the bus before the page turns read-only, so
            # the first write exit finds it.
            self.mmio_bus.insert(gpa, PAGE_SIZE, page, f"tracked page {gfn:#x}")
            try:
                with self.quiesced():
                    self.ram_slots.set_readonly(gfn, True)
            except BaseException:
                self.mmio_bus.remove(gpa)
                raise

    def write_unprotect(self, gfn: int) -> None:
        """Stop tracking page *gfn* (``KeyError`` if it is not tracked).
        A write already exiting may still call its ``on_write`` once."""
        gpa = gfn * PAGE_SIZE
        with self._slot_lock:
            hit = self.mmio_bus.lookup(gpa, PAGE_SIZE)
            if hit is None or not isinstance(hit[0], _TrackedPage):
                raise KeyError(f"{self.name}: GFN {gfn:#x} is not tracked")
            with self.quiesced():
                self.ram_slots.set_readonly(gfn, False)
            self.mmio_bus.remove(gpa)

    # --- running ------------------------------------------------------------------
    def start(self) -> None:
        """Start every vCPU thread; ``RuntimeError`` unless the domain is new.
        The *on_start* callback (services that learn of a start: PVZ's
        OnVmOnline) runs first, before the guest's first instruction."""
        with self._lock:
            if self.state is not DomainState.CREATED:
                raise RuntimeError(f"domain {self.name} is {self.state.value}")
            self.state = DomainState.RUNNING
            self.t_start_ns = time.perf_counter_ns()
        if self._on_start is not None:
            self._on_start(self)
        for v in self.vcpus:
            v.start()

    def _finish(self, result: DomainResult) -> bool:
        with self._lock:
            if self.result is not None:
                return False
            self.result = result
        for v in self.vcpus:
            v.request_stop()
        return True

    def exit(self, status: int) -> None:
        """The guest asked to exit with *status* (from a vCPU thread)."""
        self._finish(DomainResult("exited", status=status))

    def crash(self, reason: str, vcpu: int | None = None,
              dump: dict[str, int] | None = None) -> None:
        """Stop this domain because of *reason*; the VMM and others go on."""
        self._finish(DomainResult("crashed", reason=reason, vcpu=vcpu, dump=dump or {}))

    def stop(self, reason: str = "") -> None:
        """Stop from the host; returns at once (see :meth:`wait`).  vCPUs that
        never ran stop at once, so a domain stopped before :meth:`start` is
        stopped when this returns."""
        self._finish(DomainResult("stopped", reason=reason))

    def _vcpu_stopped(self, runner: VcpuRunner) -> None:
        if all(v.state is VcpuState.STOPPED for v in self.vcpus):
            self._finish(DomainResult("exited", status=0))
            self._mark_stopped()

    def _mark_stopped(self) -> None:
        with self._lock:
            if self.state is DomainState.STOPPED:
                return
            self.state = DomainState.STOPPED
            self.t_stop_ns = time.perf_counter_ns()
        try:
            self.console.flush()
        finally:
            # Whatever the console sink did, waiters must learn of the stop.
            self._stopped.set()
            if self._on_stop is not None:
                self._on_stop(self)

    def wait(self, timeout: float | None = None) -> DomainResult | None:
        """Block until the domain has stopped; its result, or None on timeout."""
        if not self._stopped.wait(timeout):
            return None
        for v in self.vcpus:
            v.join()
        return self.result

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def pause(self, timeout: float = 5.0) -> bool:
        """Park every vCPU outside the guest; True when all are parked
        (False if the domain stopped or a vCPU did not park in *timeout* s)."""
        deadline = time.monotonic() + timeout
        return all([v.pause(max(0.0, deadline - time.monotonic())) for v in self.vcpus])

    def resume(self) -> None:
        """Let the vCPUs of a paused domain run again."""
        for v in self.vcpus:
            v.resume()

    # --- interrupts -------------------------------------------------------------------
    def signal_msi(self, vcpu: int, vector: int) -> int:
        """Raise *vector* on *vcpu* now (``KVM_SIGNAL_MSI``).  Returns > 0 if
        the LAPIC accepted it, 0 if it was blocked; ``ValueError`` for a vCPU
        the domain lacks or a vector outside 0x20..0xfe."""
        self._check_target(vcpu, vector)
        return self.vm.signal_msi(L.msi_address(vcpu), vector)

    def irqfd(self, vcpu: int, vector: int, *, fd: int | None = None) -> "Irqfd":
        """An eventfd that raises *vector* on *vcpu* in-kernel when written
        (an MSI route + ``KVM_IRQFD``: no exit, no Python).  With *fd*, that
        eventfd is bound and stays the caller's (closing the Irqfd unbinds
        it but does not close it); otherwise a new one is made.  Close it
        when done; the domain closes those left at destroy."""
        self._check_target(vcpu, vector)
        owned = fd is None
        if owned:
            fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            gsi = self.vm.irqfd(fd, L.msi_address(vcpu), vector)
        except BaseException:
            if owned:
                os.close(fd)
            raise
        irq = Irqfd(self, fd, gsi, owned)
        self._irqfds.add(irq)
        return irq

    def _check_target(self, vcpu: int, vector: int) -> None:
        if not 0 <= vcpu < self.nr_vcpus:
            raise ValueError(f"{self.name}: no vCPU {vcpu}")
        if not 32 <= vector <= 0xFE:
            raise ValueError(f"vector {vector:#x} outside 0x20..0xfe")

    # --- teardown -------------------------------------------------------------------------
    def destroy(self, timeout: float = 5.0) -> None:
        """Stop (if running), join the vCPU threads, release every fd, mapping,
        memslot and irqfd.  Idempotent.  ``RuntimeError`` (nothing released, so
        it can be retried) if a vCPU thread does not end within *timeout* s;
        ``RuntimeError`` naming each failure if a release step fails (the other
        steps still run)."""
        if self._destroyed:
            return
        self.stop("destroyed")
        deadline = time.monotonic() + timeout
        for v in self.vcpus:
            if not v.join(max(0.0, deadline - time.monotonic())):
                # Cannot release the vCPU under a live thread; keep everything.
                raise RuntimeError(f"{self.name}: vCPU {v.index} did not stop "
                                   f"within {timeout}s")
        self._destroyed = True
        errors: list[str] = []
        steps = [v.backend.close for v in self.vcpus]
        steps += [irq.close for irq in list(self._irqfds)]
        steps += list(reversed(self._closers)) + [self.vm.close]
        self._closers.clear()
        for step in steps:
            try:
                step()
            except Exception as e:  # noqa: BLE001 - release the rest regardless
                errors.append(f"{getattr(step, '__qualname__', step)}: {e}")
        if errors:
            raise RuntimeError(f"{self.name}: destroy: " + "; ".join(errors))

    def stats(self) -> dict:
        """Exit counts by kind, VMM time per kind (us, with timing on),
        hypercall counts by name and boot times (ms from domain create)."""
        from .backend import EXIT_KINDS
        counts = [sum(v.exit_counts[k] for v in self.vcpus) for k in range(len(EXIT_KINDS))]
        ns = [sum(v.exit_ns[k] for v in self.vcpus) for k in range(len(EXIT_KINDS))]
        hcs = {self.hypercalls.name(nr): sum(v.hypercall_counts[nr] for v in self.vcpus)
               for nr in range(len(self.hypercalls.handlers))}
        boot_ms = {}
        if self.t_start_ns is not None:
            main = self.boot_marks.get(1)
            if main is not None:
                boot_ms["main"] = (main - self.t_create_ns) / 1e6
            if self.console.first_output_ns is not None:
                boot_ms["first_output"] = (self.console.first_output_ns - self.t_create_ns) / 1e6
        return {
            "exits": {EXIT_KINDS[k]: c for k, c in enumerate(counts) if c},
            "exit_time_us": {EXIT_KINDS[k]: n / 1e3 for k, n in enumerate(ns) if n},
            "hypercalls": {k: v for k, v in hcs.items() if v},
            "boot_ms": boot_ms,
        }


class _Reserved:
    """The hypercall ports: the run loop decodes 4-byte OUTs to them itself;
    any other access (IN, or another width) is a guest error."""

    def read(self, offset: int, data: memoryview) -> None:
        raise GuestStop(f"{len(data)}-byte read of hypercall port {HC_PORT + offset:#x} "
                        "(hypercalls are 4-byte OUTs)")

    def write(self, offset: int, data: memoryview) -> None:
        raise GuestStop(f"{len(data)}-byte write to hypercall port {HC_PORT + offset:#x} "
                        "(hypercalls are 4-byte OUTs)")


class _TrackedPage:
    """The MMIO-bus device of a write-tracked page: completes the write the
    read-only memslot turned into an exit, then reports it."""

    __slots__ = ("view", "gpa", "on_write")

    def __init__(self, view: memoryview, gpa: int, on_write) -> None:
        self.view, self.gpa, self.on_write = view, gpa, on_write

    def write(self, offset: int, data: memoryview) -> None:
        n = len(data)
        self.view[offset:offset + n] = data
        self.on_write(self.gpa + offset, bytes(data))

    def read(self, offset: int, data: memoryview) -> None:
        # A read-only slot serves reads from memory; should one exit anyway,
        # it reads what the page holds.
        data[:] = self.view[offset:offset + len(data)]


class Irqfd:
    """An eventfd bound to an MSI of a domain: ``fileno()``, ``fire()``, ``close()``."""

    def __init__(self, domain: Domain, fd: int, gsi: int, owned: bool = True) -> None:
        self.domain, self.fd, self.gsi, self.owned = domain, fd, gsi, owned
        # fire() and close() from different threads: without it a fire could
        # write to the fd number after close() freed it for another file.
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self.fd

    def fire(self) -> bool:
        """Raise the MSI; False (nothing done) once closed."""
        with self._lock:
            if self.fd < 0:
                return False
            os.eventfd_write(self.fd, 1)
            return True

    def close(self) -> None:
        """Unbind the eventfd, and close it if this Irqfd made it.  Idempotent."""
        with self._lock:
            if self.fd < 0:
                return
            try:
                self.domain.vm.irqfd_remove(self.fd, self.gsi)
            except OSError:
                pass
            if self.owned:
                os.close(self.fd)
            self.fd = -1
        self.domain._irqfds.discard(self)
