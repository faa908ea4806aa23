"""The VMM's part of the PVZ connection: the hypercall, the OSID stamp, the checks.

In the DDK's runtime sequence (specs/ivc-lguest-pvz.md §C.1) a guest's
``PvzClientX`` issues a blocking hypercall, and the VMM "decides: finish in
VMM, or forward to host driver; VMM MUST supply the caller's OSID (translate
guest IPA -> PA for Map)".  The reference leaves the rest to each VMM (§C.3);
paravm does this:

* **One hypercall**, ``pvz_call(msg_gpa)`` = 40: the 64-byte ``struct pvz_msg``
  (:mod:`.abi`) is copied in once, the function ID checked (1..6; anything else,
  DEFAULT, the vendor's DEBUGDUMPCONFIG, or a made-up ID for a VMM-only call, is
  ``INVALID_PARAMS`` before the host sees it: sVmmFuncTab has no function ID
  and is never reachable from a guest), the call forwarded to the
  :class:`~.server.PvzServer` with the OSID of the manifest's
  ``[domain.pvz]``, and the status and outputs written back; rax = the
  ``PVRSRV_ERROR`` (>= 0), or ``-EFAULT`` if the message is not in guest RAM.
* **Serialised per OSID**: a lock per OSID around each call (the DDK's client
  lock, held here so a guest cannot get round it), inside which the server
  takes its global lock.  The calling vCPU blocks until the answer.
* **MapDevPhysHeap** is checked before the host sees it: the size must be
  the host's firmware heap size; the heap [GPA, GPA + size) must be page
  aligned and lie in the guest's RAM above the reserved first MiB
  (``INVALID_PARAMS``); a second Map without an Unmap is
  ``DEVICEMEM_ALREADY_MAPPED``.  The GPA is then translated to the host
  physical (machine) address the server works in.
* **CreateDevPhysHeaps**' host carve-out slice is translated back: each guest
  has only its own slice mapped, at ``PVZ_FW_CARVEOUT_GPA + OSID * size``
  (and the same for the GPU heap), and is told that GPA.
* **Lifecycle**: a domain's start calls OnVmOnline(OSID, priority); its stop
  or crash calls UnmapDevPhysHeap (firmware OS state OFFLINE, then the heap
  unmapped) and then OnVmOffline, in that order, whatever the guest did.
"""

from __future__ import annotations

import threading
from typing import Callable

from ...arch.x86 import layout as L
from ...hypercall.table import guest_buffer
from ...memory.frames import PAGE_SHIFT, PAGE_SIZE
from . import abi as A
from .server import HeapConfig, PvzServer, PvzSystem


class PvzService:
    """The PVZ connection of one hypervisor: a host driver server, its device,
    the carve-outs, and the guests of the manifest's ``[domain.pvz]`` tables.

    *spec*: the manifest's :class:`~paravm.config.PvzSpec`; *specs*: its
    domains; *device*: ``fn(service) -> PvzSystem`` making the host driver's
    system layer (default: the DDK's stub, :class:`~.server.PvzSystem`, which
    does nothing; :class:`paravm.Hypervisor` passes the example GPU,
    :class:`paravm.devices.pvzgpu.PvzGpu`, unless told otherwise).
    ``MemoryError``/``OSError`` if the carve-outs cannot be allocated."""

    def __init__(self, machine, spec, specs, *,
                 device: Callable[["PvzService"], PvzSystem] | None = None) -> None:
        self.machine, self.spec = machine, spec
        self.guests = {s.name: s.pvz for s in specs if s.pvz is not None}
        self.fw_heap_size, self.gpu_heap_size = spec.fw_heap_size, spec.gpu_heap_size
        self.fw_carveout = self.gpu_carveout = None
        try:
            if spec.origin == "host":
                self.fw_carveout = machine.alloc(A.RGXFW_NUM_OS * self.fw_heap_size // PAGE_SIZE,
                                                 "pvz.fw-carveout")
            if self.gpu_heap_size:
                self.gpu_carveout = machine.alloc(
                    A.RGXFW_NUM_OS * self.gpu_heap_size // PAGE_SIZE, "pvz.gpu-carveout")
            self.device = PvzSystem() if device is None else device(self)
        except BaseException:
            self._free_carveouts()
            raise
        self.server = PvzServer(self.device, fw_heap=self._heap(self.fw_carveout, self.fw_heap_size),
                                gpu_heap=self._heap(self.gpu_carveout, self.gpu_heap_size),
                                fw_heap_size=self.fw_heap_size)
        self.server.vmm_configure(A.VMM_CONF_HCS_DEADLINE, spec.hcs_deadline_ms)
        self._locks = [threading.Lock() for _ in range(A.RGXFW_NUM_OS)]
        self._domains: dict[int, object] = {}    # OSID -> the attached domain

    @staticmethod
    def _heap(carveout, size: int) -> HeapConfig:
        if carveout is None:
            return HeapConfig(A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_GUEST, 0, 0)
        return HeapConfig(A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_HOST, carveout.mfn << PAGE_SHIFT, size)

    def osid_of(self, name: str) -> int | None:
        spec = self.guests.get(name)
        return None if spec is None else spec.osid

    # --- domains ----------------------------------------------------------------------
    def regions(self, name: str) -> tuple:
        """The guest's own slices of the host carve-outs, at the GPAs it is
        told (none for a domain without PVZ or without carve-outs)."""
        osid = self.osid_of(name)
        if osid is None:
            return ()
        out = []
        for carveout, size, base in ((self.fw_carveout, self.fw_heap_size, L.PVZ_FW_CARVEOUT_GPA),
                                     (self.gpu_carveout, self.gpu_heap_size,
                                      L.PVZ_GPU_CARVEOUT_GPA)):
            if carveout is not None:
                pages = size // PAGE_SIZE
                out.append((base + osid * size, carveout.part(osid * pages, pages), False))
        return tuple(out)

    def attach(self, domain) -> None:
        """Register ``pvz_call`` for a PVZ guest, give it the device (when the
        device has an ``attach(domain, osid)``), fill its boot info."""
        osid = self.osid_of(domain.name)
        if osid is None:
            return
        self._domains[osid] = domain
        attach = getattr(self.device, "attach", None)
        if attach is not None:
            attach(domain, osid)
        mem = domain.memory
        mem.write_u32(L.BOOT_INFO + L.BI_OFF_PVZ, 1)
        mem.write_u32(L.BOOT_INFO + L.BI_OFF_PVZ_FW_ORIGIN, self.server.fw_heap.origin)
        mem.write_u64(L.BOOT_INFO + L.BI_OFF_PVZ_FW_HEAP_SIZE, self.fw_heap_size)

        def pvz_call(vcpu, msg_gpa, *_):
            return self._call(domain, osid, msg_gpa)

        domain.hypercalls.register(A.HC_PVZ_CALL, "pvz_call", pvz_call)

    def domain_starting(self, domain) -> None:
        """OnVmOnline(OSID, priority) before the guest's first instruction."""
        osid = self.osid_of(domain.name)
        if osid is None:
            return
        with self._locks[osid]:
            err = self.server.on_vm_online(osid, self.guests[domain.name].priority)
        if err:
            domain.console.write(f"[paravm] pvz: OnVmOnline(OSID {osid}) failed: "
                                 f"{A.error_name(err)}\n".encode())

    def domain_stopped(self, domain) -> None:
        """UnmapDevPhysHeap, then OnVmOffline, then the device forgets the domain."""
        osid = self.osid_of(domain.name)
        if osid is None or self._domains.get(osid) is not domain:
            return
        with self._locks[osid]:
            if self.server.online[osid]:
                self.server.unmap_dev_phys_heap(osid, A.PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP, 0)
                self.server.on_vm_offline(osid)
            del self._domains[osid]
        detach = getattr(self.device, "detach", None)
        if detach is not None:
            detach(osid)

    # --- the hypercall ----------------------------------------------------------------------
    def _call(self, domain, osid: int, msg_gpa: int) -> int:
        mem = domain.memory
        # The message must be where the answer can go: in writable memory
        # above the reserved first MiB (the VMM never writes the boot
        # structures for a guest), checked before the call runs.
        # (GuestMemoryError from guest_buffer is -EFAULT to the guest.)
        with guest_buffer(mem, msg_gpa, A.PVZ_MSG_SIZE, writable=True) as view:
            msg = list(A.PVZ_MSG.unpack(view))     # copied once
            with self._locks[osid]:
                status, outs = self._dispatch(domain, osid, msg[0], msg[1], msg[7], msg[8])
            msg[2] = status
            if outs is not None:
                msg[3:] = outs
            A.PVZ_MSG.pack_into(view, 0, *msg)
        return status

    def _dispatch(self, domain, osid: int, func: int, dev: int, size: int, paddr: int):
        """``(PVRSRV_ERROR, outputs or None)``; outputs are the message's
        fields from ``irq`` on."""
        srv = self.server
        if func == A.PVZ_BRIDGE_CREATEDEVICECONFIG:
            err, cfg = srv.create_dev_config(osid, func, dev)
            if err:
                return err, None
            return err, (cfg.irq, cfg.regs_size, 0, cfg.regs_pbase, 0, 0, 0, 0)
        if func == A.PVZ_BRIDGE_DESTROYDEVICECONFIG:
            return srv.destroy_dev_config(osid, func, dev), None
        if func == A.PVZ_BRIDGE_CREATEDEVICEPHYSHEAPS:
            err, h = srv.create_dev_phys_heaps(osid, func, dev)
            if err:
                return err, None
            fw = self._to_gpa(self.fw_carveout, L.PVZ_FW_CARVEOUT_GPA, osid, h.fw_size, h.fw_paddr)
            gpu = self._to_gpa(self.gpu_carveout, L.PVZ_GPU_CARVEOUT_GPA, osid, h.gpu_size,
                               h.gpu_paddr)
            if fw is None or gpu is None:
                return A.PVRSRV_ERROR_INVALID_PVZ_CONFIG, None
            return err, (0, 0, h.heap_type, 0, h.fw_size, fw, h.gpu_size, gpu)
        if func == A.PVZ_BRIDGE_DESTROYDEVICEPHYSHEAPS:
            return srv.destroy_dev_phys_heaps(osid, func, dev), None
        if func == A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP:
            return self._map(domain, osid, func, dev, size, paddr), None
        if func == A.PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP:
            return srv.unmap_dev_phys_heap(osid, func, dev), None
        return A.PVRSRV_ERROR_INVALID_PARAMS, None

    def _map(self, domain, osid: int, func: int, dev: int, size: int, gpa: int) -> int:
        if osid in self.server.fw_mapped:
            return A.PVRSRV_ERROR_DEVICEMEM_ALREADY_MAPPED
        if size != self.fw_heap_size or gpa % PAGE_SIZE or gpa < L.RESERVED_END \
                or gpa > domain.ram.size - size:
            return A.PVRSRV_ERROR_INVALID_PARAMS
        return self.server.map_dev_phys_heap(osid, func, dev, size,
                                             (domain.ram.mfn << PAGE_SHIFT) + gpa)

    @staticmethod
    def _to_gpa(carveout, base_gpa: int, osid: int, size: int, paddr: int) -> int | None:
        """The GPA at which the guest sees the host's slice (paddr, size);
        0 for 0/0; None for an address the VMM has not mapped there."""
        if not paddr and not size:
            return 0
        if carveout is not None and paddr == (carveout.mfn << PAGE_SHIFT) + osid * size:
            return base_gpa + osid * size
        return None

    # --- the host and the VMM ----------------------------------------------------------------
    def vmm_configure(self, param: int, value: int) -> int:
        """VMMConfigure(param, value) (sVmmFuncTab): a priority or the HCS
        deadline; its ``PVRSRV_ERROR``."""
        return self.server.vmm_configure(param, value)

    def heap_view(self, name: str) -> memoryview | None:
        """The host's view of *name*'s firmware heap (its mapped guest pages
        or its carve-out slice), or None; release it when done."""
        osid = self.osid_of(name)
        if osid is None:
            return None
        if self.fw_carveout is not None:
            return self.fw_carveout.buffer[osid * self.fw_heap_size:(osid + 1) * self.fw_heap_size]
        dom, mapped = self._domains.get(osid), self.server.fw_mapped.get(osid)
        if dom is None or mapped is None:
            return None
        return dom.memory.view(mapped[0] - (dom.ram.mfn << PAGE_SHIFT), self.fw_heap_size)

    def close(self) -> None:
        close = getattr(self.device, "close", None)
        if close is not None:
            close()
        self._free_carveouts()

    def _free_carveouts(self) -> None:
        for fr in (self.fw_carveout, self.gpu_carveout):
            if fr is not None:
                self.machine.free(fr)
        self.fw_carveout = self.gpu_carveout = None
