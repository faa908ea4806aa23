"""GVT-g's mediated pass-through services ("MPT", the ``intel_gvt_mpt`` ops) over KVM.

A mediated device model -- Python code in the VMM, acting as dom0, the way
GVT-g's core is kernel code in the host -- gets these services for each
instance ("vGPU") it binds to a domain (specs/grant-mpt.md part E).  The
operations, their arguments and their error returns are kvmgt's
(FreeBSDDesktop/kms-drm @ 27f91eb ``kvmgt.c``, the v4.18/4.19 op set that
``hypercall.h`` @ ba35164 lists); where kvmgt has no operation (it leaves
trap areas and MMIO mapping to QEMU) the semantics are XenGT's and Xen's
ioreq server's.  Results are Linux errnos, negated; handles are ints.

How each maps onto KVM here (§E5):

* **Trap areas** are GPA ranges without a memslot: every access there exits
  as ``KVM_EXIT_MMIO`` and reaches the device's ``emulate_mmio_read`` /
  ``emulate_mmio_write`` (one access of 1, 2, 4 or 8 bytes each) on the
  vCPU's thread.
* **Page tracking** moves the page into a read-only memslot of its own
  (:mod:`paravm.vm.ramslots`); a guest write exits with its data, the VMM
  stores it into the page, *then* calls the device's
  ``write_protect_handler(vgpu, gpa, data)`` -- KVM's order, which GVT's
  handler relies on when it re-reads the entry from guest memory.  Writes
  the host makes (``write_gpa``) are not reported, as with kvm_write_guest.
* **MSI** goes through an irqfd per (destination, vector), made on first use
  and fired from any thread, as kvmgt signals the eventfd QEMU wired to an
  irqfd.
* **DMA addresses** are machine addresses (MFN << 12) of the guest's RAM,
  kept in kvmgt's refcounted cache; the device reaches memory only through
  :meth:`MptService.dma_view` of an address it has mapped (the IOMMU's job).
* **read_gpa / write_gpa** go through the domain's guest memory, across
  region boundaries; any byte outside it is ``-EFAULT`` and moves nothing.

A device type is any object with these methods (all take the instance,
``vgpu``, that :meth:`MptService.attach_vgpu` bound):
``emulate_mmio_read(vgpu, gpa, data)`` / ``emulate_mmio_write(vgpu, gpa,
data)`` (*data* a writable memoryview of the access width) and
``write_protect_handler(vgpu, gpa, data) -> int`` (*data* the bytes the
guest wrote; the result is counted, as GVT's is logged).  Optional:
``release(vgpu)``, called when the instance's domain stops (KVM going away:
kvmgt's release path), before the MPT drops its state.
"""

from __future__ import annotations

import itertools
import threading

from ...arch.x86 import layout as L
from ...memory import PAGE_SHIFT, PAGE_SIZE
from ...memory.guest import GuestMemoryError
from ...vm.bus import BusError
from ...vm.vcpu import GuestStop
from . import abi as A

_U64 = 1 << 64
_FIRST_GUEST_GFN = L.RESERVED_END >> PAGE_SHIFT


class _DmaEntry:
    __slots__ = ("gfn", "size", "dma_addr", "refs", "view", "given")

    def __init__(self, gfn: int, size: int, dma_addr: int, view: memoryview) -> None:
        self.gfn, self.size, self.dma_addr, self.refs, self.view = gfn, size, dma_addr, 1, view
        self.given: list[memoryview] = []      # dma_view results, released at unmap

    def release(self) -> None:
        for v in self.given + [self.view]:
            try:
                v.release()
            except BufferError:   # the device sliced it further: its own to drop
                pass
        self.given.clear()


class _TrapArea:
    """The MMIO-bus device of one trap area: forwards each access, with its
    absolute GPA, to the device model."""

    __slots__ = ("inst", "start")

    def __init__(self, inst: "_Instance", start: int) -> None:
        self.inst, self.start = inst, start

    def read(self, offset: int, data: memoryview) -> None:
        self.inst.call("emulate_mmio_read", self.start + offset, data)

    def write(self, offset: int, data: memoryview) -> None:
        self.inst.call("emulate_mmio_write", self.start + offset, data)


class _ReadOnlyRegion:
    """The MMIO-bus device of a read-only memslot (the OpRegion): reads are
    served from memory without an exit; a write exits here and is dropped
    (kvmgt refuses writes to the OpRegion region: -EINVAL, no effect)."""

    __slots__ = ("view", "dropped")

    def __init__(self, view: memoryview) -> None:
        self.view, self.dropped = view, 0

    def read(self, offset: int, data: memoryview) -> None:
        data[:] = self.view[offset:offset + len(data)]

    def write(self, offset: int, data: memoryview) -> None:
        self.dropped += 1


class _Instance:
    """One vGPU bound to one domain, and everything the MPT holds for it."""

    def __init__(self, handle: int, type_name: str, ops, vgpu, domain) -> None:
        self.handle, self.type_name, self.ops, self.vgpu = handle, type_name, ops, vgpu
        self.domain = domain
        self.tracked: set[int] = set()
        self.traps: dict[int, int] = {}        # start -> end (inclusive)
        self.mapped: dict[int, int] = {}       # gfn -> pages mapped by map_gfn_to_mfn
        self.dma_by_gfn: dict[int, _DmaEntry] = {}
        self.dma_by_addr: dict[int, _DmaEntry] = {}
        self.irqfds: dict[tuple[int, int], object] = {}
        self.vfio_refs = 0
        self.opregion = None                   # (FrameRange, _ReadOnlyRegion)
        self.track_errors = 0                  # write_protect_handler results < 0

    def call(self, name: str, gpa: int, data) -> int:
        try:
            return getattr(self.ops, name)(self.vgpu, gpa, data)
        except GuestStop:
            raise
        except Exception as e:  # noqa: BLE001 - a device model's bug stops its guest only
            raise GuestStop(f"mediated device {self.type_name}: {name} at {gpa:#x} "
                            f"failed: {type(e).__name__}: {e}") from None


class MptService:
    """The MPT services of one hypervisor (``hv.mpt``): device types
    registered by :meth:`host_init`, instances bound by :meth:`attach_vgpu`.
    Thread-safe; the device callbacks run on vCPU threads."""

    def __init__(self, machine) -> None:
        self.machine = machine
        self._lock = threading.RLock()
        self._types: dict[str, object] = {}
        self._instances: dict[int, _Instance] = {}
        self._by_domain: dict[tuple[int, str], int] = {}   # (id(domain), type) -> handle
        self._pages: dict[tuple[int, int], set[int]] = {}  # (id(domain), gfn) -> handles
        self._handles = itertools.count(A.HANDLE_MIN)
        self._autos: dict[str, list] = {}                  # domain name -> [fn(domain)]

    # --- device types (host_init / host_exit) ------------------------------------------
    def host_init(self, type_name: str, ops) -> int:
        """Register device type *type_name* with its *ops* (see the module
        docstring): 0, ``-EEXIST`` if the name is taken, ``-EINVAL`` for an
        empty name or ops without the MMIO and page-track methods (kvmgt
        fails only if the type's attributes cannot be had: -EFAULT)."""
        needed = ("emulate_mmio_read", "emulate_mmio_write", "write_protect_handler")
        if not type_name or not all(callable(getattr(ops, n, None)) for n in needed):
            return -A.EINVAL
        with self._lock:
            if type_name in self._types:
                return -A.EEXIST
            self._types[type_name] = ops
        return 0

    def host_exit(self, type_name: str) -> int:
        """Unregister *type_name*: 0, ``-ENODEV`` if unknown, ``-EBUSY``
        while an instance is bound (GVT's is void and runs after every vGPU
        is gone; here the caller learns of the ones left)."""
        with self._lock:
            if type_name not in self._types:
                return -A.ENODEV
            if any(i.type_name == type_name for i in self._instances.values()):
                return -A.EBUSY
            del self._types[type_name]
        return 0

    # --- instances (attach_vgpu / detach_vgpu) ---------------------------------------------
    def attach_vgpu(self, type_name: str, vgpu, domain) -> tuple[int, int]:
        """Bind *vgpu* (the device model's instance) of *type_name* to
        *domain*: ``(0, handle)``; ``(-ENODEV, 0)`` for an unknown type,
        ``(-EEXIST, 0)`` if the domain has an instance of that type (kvmgt:
        one vGPU per VM), ``(-ESRCH, 0)`` for a stopped domain."""
        with self._lock:
            ops = self._types.get(type_name)
            if ops is None:
                return -A.ENODEV, 0
            if domain.stopped:
                return -A.ESRCH, 0
            key = (id(domain), type_name)
            if key in self._by_domain:
                return -A.EEXIST, 0
            handle = next(self._handles)
            self._instances[handle] = _Instance(handle, type_name, ops, vgpu, domain)
            self._by_domain[key] = handle
        return 0, handle

    def detach_vgpu(self, handle: int) -> int:
        """Unbind: 0; ``-ESRCH`` for an unknown handle, ``-EBUSY`` while
        :meth:`get_vfio_device` references are held (kvmgt refuses to remove
        an mdev still open).  Untracks its pages, removes its trap areas,
        mappings and OpRegion, drops its DMA cache and MSI routes; a step
        that fails is reported on the domain's console and the rest still
        run (the handle is gone either way)."""
        with self._lock:
            inst = self._instances.get(handle)
            if inst is None:
                return -A.ESRCH
            if inst.vfio_refs:
                return -A.EBUSY
            self._drop(inst)
        return 0

    def _drop(self, inst: _Instance) -> list[str]:
        """Release everything *inst* holds (the lock is held).  Every step
        runs whatever the others did; the failures, as text.  A page whose
        unprotect failed stays read-only and on the bus (its writes land,
        no one is told) until its next tracker leaves or the domain goes."""
        dom = inst.domain
        del self._instances[inst.handle]
        del self._by_domain[(id(dom), inst.type_name)]
        live = not getattr(dom, "_destroyed", False)
        steps = [lambda g=gfn: self._untrack(inst, g, live, dropping=True)
                 for gfn in list(inst.tracked)]
        if live:
            steps += [lambda s=start: dom.mmio_bus.remove(s) for start in list(inst.traps)]
            steps += [lambda g=gfn: dom.unmap_frames(g << PAGE_SHIFT) for gfn in list(inst.mapped)]
        steps.append(lambda: self._drop_opregion(inst, live))
        steps += [e.release for e in inst.dma_by_gfn.values()]
        steps += [irq.close for irq in inst.irqfds.values()]
        errors = []
        for step in steps:
            try:
                step()
            except Exception as e:  # noqa: BLE001 - release the rest regardless
                errors.append(f"{type(e).__name__}: {e}")
        inst.tracked.clear()
        inst.traps.clear()
        inst.mapped.clear()
        inst.dma_by_gfn.clear()
        inst.dma_by_addr.clear()
        inst.irqfds.clear()
        if errors:
            _report(dom, f"{inst.type_name}: releasing the instance: " + "; ".join(errors))
        return errors

    def get_vfio_device(self, handle: int) -> int:
        """Take a reference that keeps the instance bound (an exported
        resource lives): 0, or ``-ENODEV`` (kvmgt's when the VFIO device is gone)."""
        with self._lock:
            inst = self._instances.get(handle)
            if inst is None:
                return -A.ENODEV
            inst.vfio_refs += 1
        return 0

    def put_vfio_device(self, handle: int) -> None:
        """Drop a :meth:`get_vfio_device` reference (unknown handle or none
        held: nothing, as kvmgt's WARN-and-return)."""
        with self._lock:
            inst = self._instances.get(handle)
            if inst is not None and inst.vfio_refs:
                inst.vfio_refs -= 1

    def instance(self, handle: int):
        """The vgpu object bound with *handle*, or None."""
        inst = self._instances.get(handle)
        return None if inst is None else inst.vgpu

    # --- interrupts ------------------------------------------------------------------------
    def inject_msi(self, handle: int, addr: int, data: int) -> int:
        """Raise the MSI (*addr*, *data*) in the instance's domain: 0;
        ``-ESRCH`` for an unknown handle; ``-EINVAL`` for an address that is
        not a local APIC (0xFEExxxxx, destination ID in bits 12..19) of a
        vCPU the domain has, or a vector (data bits 0..7) outside
        0x20..0xfe; ``-EFAULT`` if the kernel refuses the irqfd."""
        inst = self._instances.get(handle)
        if inst is None:
            return -A.ESRCH
        if not isinstance(addr, int) or not isinstance(data, int) or \
                not 0 <= addr <= 0xFFFFFFFF or addr & A.MSI_ADDRESS_MASK != A.MSI_ADDRESS_BASE \
                or not 0 <= data <= 0xFFFF:
            return -A.EINVAL
        dest, vector = (addr >> 12) & 0xFF, data & 0xFF
        # Under the lock: a detach closing the eventfd cannot come between
        # the lookup and the write (whose fd number could be reused).
        with self._lock:
            if handle not in self._instances:
                return -A.ESRCH
            irq = inst.irqfds.get((dest, vector))
            if irq is None:
                try:
                    irq = inst.domain.irqfd(dest, vector)
                except ValueError:
                    return -A.EINVAL
                except OSError:
                    return -A.EFAULT
                inst.irqfds[(dest, vector)] = irq
            try:
                irq.fire()
            except (OSError, ValueError):
                return -A.EFAULT
        return 0

    def inject_msi_capability(self, handle: int, control: int, address: int,
                              data: int) -> int:
        """GVT's wrapper (mpt.h ``intel_gvt_hypervisor_inject_msi``) over a
        device's virtual MSI capability: control bit 0 clear -> 0, nothing
        raised; any of bits 1..15 set (multi-message, 64-bit, masking) ->
        ``-EINVAL``; else :meth:`inject_msi` of (*address*, *data*)."""
        if not control & A.MSI_CONTROL_ENABLE:
            return 0
        if control & A.MSI_CONTROL_UNSUPPORTED:
            return -A.EINVAL
        return self.inject_msi(handle, address, data)

    # --- addresses -------------------------------------------------------------------------
    def virt_to_mfn(self, addr: int) -> int:
        """The MFN of the machine frame at VMM address *addr* (a frame
        range's mapping), or ``INTEL_GVT_INVALID_ADDR``."""
        fr = self.machine.range_at_hva(addr) if isinstance(addr, int) else None
        if fr is None:
            return A.INTEL_GVT_INVALID_ADDR
        return fr.mfn + (addr - fr.hva) // PAGE_SIZE

    def gfn_to_mfn(self, handle: int, gfn: int) -> int:
        """The MFN behind *gfn* in the instance's domain: its RAM, or frames
        :meth:`map_gfn_to_mfn` put there; ``INTEL_GVT_INVALID_ADDR`` for an
        unknown handle or any other GFN (shared windows whose pages change
        under them have no stable answer)."""
        inst = self._instances.get(handle)
        if inst is None or not isinstance(gfn, int) or not 0 <= gfn < _U64 >> PAGE_SHIFT:
            return A.INTEL_GVT_INVALID_ADDR
        dom = inst.domain
        if gfn < dom.ram.nframes:
            return dom.ram.mfn + gfn
        for start, n in list(inst.mapped.items()):
            if start <= gfn < start + n:
                region, _ = dom.memory.check_range(start << PAGE_SHIFT, PAGE_SIZE)
                return region.frames.mfn + gfn - start
        return A.INTEL_GVT_INVALID_ADDR

    def is_valid_gfn(self, handle: int, gfn: int) -> bool:
        """True if *gfn* is a page of the domain's own RAM above the reserved
        first MiB (kvmgt asks ``kvm_is_visible_gfn``; here shared windows,
        carve-outs and mapped device frames are not pages a device may be
        pointed at, nor the page tables, GDT, IDT and stub stacks the VMM
        built); False for an unknown handle."""
        inst = self._instances.get(handle)
        return inst is not None and isinstance(gfn, int) and \
            _FIRST_GUEST_GFN <= gfn < inst.domain.ram.nframes

    # --- guest memory ----------------------------------------------------------------------
    def read_gpa(self, handle: int, gpa: int, buf) -> int:
        """Fill the writable buffer *buf* from guest memory at *gpa*: 0;
        ``-ESRCH`` for an unknown handle; ``-EFAULT`` if any byte is outside
        the guest's memory (nothing is copied then)."""
        return self._rw(handle, gpa, buf, False)

    def write_gpa(self, handle: int, gpa: int, data) -> int:
        """Copy *data* into guest memory at *gpa*: 0; ``-ESRCH``; ``-EFAULT``
        if any byte is outside the guest's memory, read-only, or in the
        reserved first MiB the VMM built (page tables, GDT, IDT, stub
        stacks: never written on a guest's behalf) -- nothing is written
        then.  Tracked pages are not reported (host writes)."""
        return self._rw(handle, gpa, data, True)

    def _rw(self, handle: int, gpa: int, buf, write: bool) -> int:
        inst = self._instances.get(handle)
        if inst is None:
            return -A.ESRCH
        mv = memoryview(buf).cast("B")
        mem = inst.domain.memory
        pieces = []
        try:
            # Check every piece first (a range may span regions, as a
            # kvm_read_guest spans memslots), then copy.
            at, left = gpa, mv.nbytes
            while True:
                region, off = mem.check_range(at, min(left, 1))
                n = min(left, region.size - off)
                if write and (region.readonly or at < L.RESERVED_END):
                    return -A.EFAULT
                pieces.append((region, off, n))
                at, left = at + n, left - n
                if left <= 0:
                    break
        except (GuestMemoryError, TypeError):
            return -A.EFAULT
        pos = 0
        for region, off, n in pieces:
            if write:
                region.view[off:off + n] = mv[pos:pos + n]
            else:
                mv[pos:pos + n] = region.view[off:off + n]
            pos += n
        return 0

    # --- page tracking ---------------------------------------------------------------------
    def enable_page_track(self, handle: int, gfn: int) -> int:
        """Report the guest's writes to page *gfn* to the type's
        ``write_protect_handler``: 0 (also when tracked already);
        ``-ESRCH`` for an unknown handle; ``-EINVAL`` for a GFN outside the
        domain's RAM (kvmgt: no memslot) or in its reserved first MiB (the
        page tables the CPU writes accessed bits into); ``-EBUSY`` if the
        vCPUs could not be held out of the guest; ``-ENOMEM`` if KVM
        refuses the memslots."""
        with self._lock:
            inst = self._instances.get(handle)
            if inst is None:
                return -A.ESRCH
            dom = inst.domain
            if not isinstance(gfn, int) or not dom.ram_slots.trackable(gfn):
                return -A.EINVAL
            if gfn in inst.tracked:
                return 0
            key = (id(dom), gfn)
            users = self._pages.get(key)
            if users is None:
                try:
                    dom.write_protect(gfn, lambda gpa, data, d=dom: self._tracked_write(d, gpa, data))
                except RuntimeError:
                    return -A.EBUSY
                except (OSError, BusError, ValueError):
                    return -A.ENOMEM
                users = self._pages[key] = set()
            users.add(handle)
            inst.tracked.add(gfn)
        return 0

    def disable_page_track(self, handle: int, gfn: int) -> int:
        """Stop reporting writes to *gfn*: 0 (also when not tracked, or for
        an unknown handle, as kvmgt); ``-EINVAL`` for a GFN outside RAM;
        ``-EBUSY`` if the vCPUs could not be held out of the guest;
        ``-ENOMEM`` if KVM refuses the memslots (the page stays tracked)."""
        with self._lock:
            inst = self._instances.get(handle)
            if inst is None:
                return 0
            if not isinstance(gfn, int) or not 0 <= gfn < inst.domain.ram.nframes:
                return -A.EINVAL
            if gfn not in inst.tracked:
                return 0
            try:
                self._untrack(inst, gfn, True)
            except RuntimeError:
                return -A.EBUSY
            except OSError:
                return -A.ENOMEM
        return 0

    def _untrack(self, inst: _Instance, gfn: int, live: bool, dropping: bool = False) -> None:
        """Stop *inst* tracking *gfn*; the page turns read-write with its
        last tracker.  A page in ``_pages`` is write-protected, even with no
        tracker left (an unprotect that failed while *dropping*: the next
        tracker to leave tries again).  If the memslot change fails, *inst*
        still tracks the page unless *dropping*; the error propagates."""
        key = (id(inst.domain), gfn)
        users = self._pages[key]
        try:
            if live and users <= {inst.handle}:
                inst.domain.write_unprotect(gfn)
                del self._pages[key]
        except BaseException:
            if dropping:
                users.discard(inst.handle)
                inst.tracked.discard(gfn)
            raise
        users.discard(inst.handle)
        inst.tracked.discard(gfn)
        if not live and not users:
            self._pages.pop(key, None)

    def _tracked_write(self, dom, gpa: int, data: bytes) -> None:
        """On the writing vCPU's thread, after the write has landed: each
        instance still tracking the page (checked now, under the lock, so an
        untrack racing with the write is seen: GVT's 2023 fix)."""
        with self._lock:
            handles = self._pages.get((id(dom), gpa >> PAGE_SHIFT), ())
            insts = [self._instances[h] for h in handles if h in self._instances]
        for inst in insts:
            ret = inst.call("write_protect_handler", gpa, data)
            if isinstance(ret, int) and ret < 0:
                inst.track_errors += 1

    # --- DMA ---------------------------------------------------------------------------------
    def dma_map_guest_page(self, handle: int, gfn: int, size: int) -> tuple[int, int]:
        """Map *size* bytes (a multiple of 4096) of guest RAM from *gfn* for
        the device: ``(0, dma_addr)``.  kvmgt's refcounted cache: the same
        GFN and size again -> the same address, one more reference; the
        same GFN with another size -> the old entry is dropped whatever its
        references, and a new one made.  ``(-EINVAL, 0)`` for an unknown
        handle or a bad size; ``(-EFAULT, 0)`` if a page is not the guest's
        RAM above the reserved first MiB (kvmgt: a non-RAM pfn)."""
        with self._lock:
            inst = self._instances.get(handle)
            if inst is None or not isinstance(size, int) or size <= 0 or size % PAGE_SIZE:
                return -A.EINVAL, 0
            ram = inst.domain.ram
            if not isinstance(gfn, int) or not _FIRST_GUEST_GFN <= gfn \
                    or gfn + size // PAGE_SIZE > ram.nframes:
                return -A.EFAULT, 0
            e = inst.dma_by_gfn.get(gfn)
            if e is not None:
                if e.size == size:
                    e.refs += 1
                    return 0, e.dma_addr
                self._dma_drop(inst, e)
            off = gfn << PAGE_SHIFT
            e = _DmaEntry(gfn, size, (ram.mfn + gfn) << PAGE_SHIFT,
                          ram.buffer[off:off + size])
            inst.dma_by_gfn[gfn] = e
            inst.dma_by_addr[e.dma_addr] = e
            return 0, e.dma_addr

    def dma_unmap_guest_page(self, handle: int, dma_addr: int) -> None:
        """Drop one reference of the mapping at *dma_addr*; the last one
        unmaps it.  An unknown handle or address is ignored (kvmgt)."""
        with self._lock:
            inst = self._instances.get(handle)
            e = None if inst is None else inst.dma_by_addr.get(dma_addr)
            if e is not None:
                e.refs -= 1
                if e.refs == 0:
                    self._dma_drop(inst, e)

    def _dma_drop(self, inst: _Instance, e: _DmaEntry) -> None:
        del inst.dma_by_gfn[e.gfn]
        del inst.dma_by_addr[e.dma_addr]
        e.release()

    def dma_view(self, handle: int, dma_addr: int, length: int) -> memoryview | None:
        """The device's own access to memory it mapped (what the GPU does
        through the IOMMU): a view of *length* bytes at *dma_addr*, which
        must lie inside one live :meth:`dma_map_guest_page` mapping of this
        instance; else None.  The view is released when the mapping goes
        (its last unmap, a remap with another size, detach, the domain's
        stop), so a device cannot reach the page after that -- but a slice
        it took of the view is its own to release."""
        inst = self._instances.get(handle)
        if inst is None or not isinstance(dma_addr, int) or not isinstance(length, int):
            return None
        base = dma_addr & ~(PAGE_SIZE - 1)
        e = inst.dma_by_addr.get(base)
        if e is None:
            # The address may be inside a multi-page mapping.
            for cand in list(inst.dma_by_addr.values()):
                if cand.dma_addr <= dma_addr < cand.dma_addr + cand.size:
                    e = cand
                    break
        if e is None or length < 0:
            return None
        off = dma_addr - e.dma_addr
        if off + length > e.size:
            return None
        with self._lock:
            if inst.dma_by_addr.get(e.dma_addr) is not e:
                return None       # unmapped meanwhile
            v = e.view[off:off + length]
            if len(e.given) >= 64:
                e.given = [g for g in e.given if not _released(g)]
            e.given.append(v)
            return v

    # --- the domain's GPA space ------------------------------------------------------------
    def map_gfn_to_mfn(self, handle: int, gfn: int, mfn: int, nr: int, map: bool) -> int:
        """Map *nr* machine frames from *mfn* (one frame range's) into the
        domain at *gfn* (``map``), or unmap what this instance mapped at
        *gfn* (``not map``): 0; ``-EINVAL`` for an unknown handle, frames
        that are not one live range, a GFN range not in the 32-bit hole
        (above RAM, below the local APIC less 32 MiB) or nothing mapped
        there; ``-EEXIST`` if the range overlaps memory or a trap area;
        ``-ENOMEM`` if KVM refuses the memslot.
        Device memory the host owns (an aperture); mapping another
        domain's frames is the host's privilege, as Xen's
        iomem_permission is dom0's."""
        with self._lock:
            inst = self._instances.get(handle)
            if inst is None or not all(isinstance(v, int) for v in (gfn, mfn, nr)):
                return -A.EINVAL
            dom = inst.domain
            if not map:
                if inst.mapped.get(gfn) != nr:
                    return -A.EINVAL
                dom.unmap_frames(gfn << PAGE_SHIFT)
                del inst.mapped[gfn]
                return 0
            if nr < 1 or gfn < 0:
                return -A.EINVAL
            hit = self.machine.lookup(mfn) if mfn >= 0 else None
            if hit is None or hit[1] + nr > hit[0].nframes:
                return -A.EINVAL
            gpa = gfn << PAGE_SHIFT
            size = nr * PAGE_SIZE
            if gpa < dom.ram.size or gpa + size > L.LAPIC_BASE - (32 << 20):
                return -A.EINVAL
            fr, index = hit
            frames = fr if index == 0 and nr == fr.nframes else fr.part(index, nr)
            try:
                # The placement is checked above; map_frames refuses only an
                # overlap with memory or a device now.
                dom.map_frames(gpa, frames)
            except ValueError:
                return -A.EEXIST
            except OSError:
                return -A.ENOMEM
            inst.mapped[gfn] = nr
        return 0

    def set_trap_area(self, handle: int, start: int, end: int, map: bool) -> int:
        """Trap guest accesses to GPAs *start*..*end* (inclusive, as GVT's)
        to the type's ``emulate_mmio_read``/``emulate_mmio_write``
        (``map``), or stop trapping them (``not map``; a part of a trapped
        range may be released, as from Xen's rangeset).  0; ``-EINVAL`` for
        an unknown handle, ``start > end`` or a range beyond 64 bits;
        ``-EEXIST`` if the range overlaps a trap area, a device or memory
        (a RAM page cannot trap: it has a memslot); ``-ENOENT`` when
        releasing a range not wholly trapped by this instance (Xen's ioreq
        server returns the same two)."""
        with self._lock:
            inst = self._instances.get(handle)
            if inst is None or not isinstance(start, int) or not isinstance(end, int) \
                    or not 0 <= start <= end < _U64:
                return -A.EINVAL
            dom = inst.domain
            size = end - start + 1
            if map:
                if dom.mmio_bus.overlaps(start, size) or _overlaps_memory(dom.memory, start, size):
                    return -A.EEXIST
                dom.mmio_bus.insert(start, size, _TrapArea(inst, start),
                                    f"trap area of {inst.type_name}")
                inst.traps[start] = end
                return 0
            for s, e in inst.traps.items():
                if s <= start and end <= e:
                    break
            else:
                return -A.ENOENT
            dom.mmio_bus.remove(s)
            del inst.traps[s]
            for lo, hi in ((s, start - 1), (end + 1, e)):
                if lo <= hi:
                    dom.mmio_bus.insert(lo, hi - lo + 1, _TrapArea(inst, lo),
                                        f"trap area of {inst.type_name}")
                    inst.traps[lo] = hi
        return 0

    def set_opregion(self, handle: int, opregion: bytes | None,
                     gpa: int = L.MPT_OPREGION_GPA) -> int:
        """Show *opregion* (at most 8 KiB, starting with the signature
        "IntelGraphicsMem") to the guest, read-only, at *gpa* (zero-padded
        to 8 KiB; a second call replaces the first, which stays if the
        second fails).  0; ``-ENOMEM`` for no
        OpRegion (kvmgt: no mapping) or if frames cannot be had;
        ``-EINVAL`` for an unknown handle, a bad signature or size, or a
        GPA that is taken.  Guest writes to it are dropped (kvmgt: -EINVAL
        to the writer, no effect)."""
        if opregion is None:
            return -A.ENOMEM
        data = bytes(opregion)
        if data[:16] != A.OPREGION_SIGNATURE or len(data) > A.OPREGION_SIZE:
            return -A.EINVAL
        with self._lock:
            inst = self._instances.get(handle)
            if inst is None:
                return -A.EINVAL
            dom = inst.domain
            if inst.opregion is not None and inst.opregion[2] == gpa:
                buf = inst.opregion[0].buffer
                buf[:] = data + bytes(A.OPREGION_SIZE - len(data))
                return 0
            try:
                fr = self.machine.alloc(A.OPREGION_SIZE // PAGE_SIZE,
                                        f"{dom.name}.{inst.type_name}.opregion")
            except (MemoryError, OSError):
                return -A.ENOMEM
            fr.buffer[:len(data)] = data
            dev = _ReadOnlyRegion(fr.buffer)
            try:
                dom.map_frames(gpa, fr, readonly=True)
            except (ValueError, OSError):
                self.machine.free(fr)
                return -A.EINVAL
            try:
                # Writes exit (the slot is read-only) and land here.
                dom.mmio_bus.insert(gpa, fr.size, dev, "OpRegion")
            except BusError:
                dom.unmap_frames(gpa)
                self.machine.free(fr)
                return -A.EINVAL
            self._drop_opregion(inst, True)
            inst.opregion = (fr, dev, gpa)
        return 0

    def _drop_opregion(self, inst: _Instance, live: bool) -> None:
        if inst.opregion is None:
            return
        fr, _, gpa = inst.opregion
        inst.opregion = None
        if live:
            inst.domain.unmap_frames(gpa)
            inst.domain.mmio_bus.remove(gpa)
        self.machine.free(fr)

    def opregion_writes(self, handle: int) -> int:
        """Guest writes to the instance's OpRegion dropped so far."""
        inst = self._instances.get(handle)
        return 0 if inst is None or inst.opregion is None else inst.opregion[1].dropped

    # --- the hypervisor's service protocol -------------------------------------------------
    def on_domain(self, name: str, fn) -> None:
        """Call ``fn(domain)`` for each new instance of domain *name* (at
        create and at every restart): where a manifest's devices attach."""
        self._autos.setdefault(name, []).append(fn)

    def attach(self, domain) -> None:
        for fn in self._autos.get(domain.name, ()):
            fn(domain)

    def domain_stopped(self, domain) -> None:
        """The domain is gone (KVM going away, kvmgt's release): each of its
        instances' ``release(vgpu)`` runs, then the MPT drops its state,
        references or not."""
        with self._lock:
            insts = [i for i in self._instances.values() if i.domain is domain]
        for inst in insts:
            release = getattr(inst.ops, "release", None)
            try:
                if release is not None:
                    release(inst.vgpu)
            except Exception as e:  # noqa: BLE001 - the other instances go on
                _report(domain, f"{inst.type_name}: release failed: {type(e).__name__}: {e}")
            with self._lock:
                if inst.handle in self._instances:
                    self._drop(inst)
        with self._lock:
            # Pages left protected with no tracker die with the domain (their
            # key must not match a later domain object at the same id).
            for key in [k for k in self._pages if k[0] == id(domain)]:
                del self._pages[key]

    def close(self) -> None:
        with self._lock:
            for inst in list(self._instances.values()):
                self._drop(inst)

    def track_errors(self, handle: int) -> int:
        """Negative results of the instance's ``write_protect_handler`` so far."""
        inst = self._instances.get(handle)
        return 0 if inst is None else inst.track_errors


def _released(view: memoryview) -> bool:
    try:
        view.nbytes
    except ValueError:
        return True
    return False


def _report(domain, text: str) -> None:
    """Tell the domain's console (where a user of `paravm run` sees it)."""
    try:
        domain.console.write(f"[paravm] mpt: {text}\n".encode())
    except Exception:  # noqa: BLE001 - a report must not fail a teardown
        pass


def _overlaps_memory(mem, gpa: int, size: int) -> bool:
    return any(r.gpa < gpa + size and gpa < r.end for r in mem.regions)
