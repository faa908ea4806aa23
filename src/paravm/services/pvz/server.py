"""The host side of the PVZ connection: Imagination's PvzServer, in Python.

In the PowerVR DDK (specs/ivc-lguest-pvz.md part C) a guest driver reaches
the host driver through a *PVZ connection* of four function tables.  The
host implements two of them, and this module is those two plus the config
table, with the reference's checks:

* ``sGuestFuncTab`` (guest-originated calls, which the VMM stamps with the
  caller's OSID): :meth:`PvzServer.create_dev_config`,
  :meth:`~PvzServer.destroy_dev_config`, :meth:`~PvzServer.create_dev_phys_heaps`,
  :meth:`~PvzServer.destroy_dev_phys_heaps`, :meth:`~PvzServer.map_dev_phys_heap`,
  :meth:`~PvzServer.unmap_dev_phys_heap` (``vmm_pvz_server.c``'s
  ``PvzServer*``);
* ``sVmmFuncTab`` (the VMM only, never a guest): :meth:`~PvzServer.on_vm_online`,
  :meth:`~PvzServer.on_vm_offline`, :meth:`~PvzServer.vmm_configure`;
* ``sConfigFuncTab``: :meth:`~PvzServer.get_dev_phys_heap_origin`,
  :meth:`~PvzServer.get_dev_phys_heap_addr_size`, answered from a
  :class:`HeapConfig` per heap; :func:`decode_heap` reads an (addr, size)
  answer as the DDK does (UMA / DMA / carve-out / LMA).

Every call returns a ``PVRSRV_ERROR`` number (:mod:`.abi`), as the
reference does, never raises for a bad argument.  Guest-originated calls
pass the reference's gate first (``SysVzIsVmOnline``: OSID 0 or
``>= NUM_OS`` -> ``INVALID_PVZ_OSID``, an offline OSID ->
``PVZ_OSID_IS_OFFLINE``), then run one at a time under the server's lock
(the DDK's global PVZ lock).  What the reference checks only in debug builds
(the function ID of each entry) is always checked here.

What the host driver *does* for each call is its system layer: a
:class:`PvzSystem` (the DDK's sysconfig and RGX code).  The device model
:class:`paravm.devices.pvzgpu.PvzGpu` is one; a user writes another to serve
a different device.  Addresses the server sees are host physical: paravm
uses machine addresses (``mfn * 4096 + offset``, :mod:`paravm.memory`), into
which the VMM has translated the guest's (:mod:`.service`).

Generation: the 1.1x four-table connection of the seed; where the newer
three-table code orders things differently (Unmap sets the firmware OS state
offline before unmapping) paravm does the newer, safer thing and says so.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import NamedTuple

from . import abi as A


@dataclass(frozen=True)
class HeapConfig:
    """What ``sConfigFuncTab`` answers for one physical heap: its *origin*
    (``PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_*``) and the (*addr*, *size*) pair
    that :func:`decode_heap` reads (bytes; *addr* a host physical address,
    for a carve-out the base of OSID 0's slice; *size* per OSID)."""

    origin: int = A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_GUEST
    addr: int = 0
    size: int = 0


class DevConfig(NamedTuple):
    """CreateDevConfig's outputs: the device's IRQ, register bank size
    (bytes) and register base (physical)."""
    irq: int
    regs_size: int
    regs_pbase: int


class PhysHeaps(NamedTuple):
    """CreateDevPhysHeaps's outputs (bytes / physical addresses; 0/0 =
    the guest uses its own memory)."""
    heap_type: int
    fw_size: int
    fw_paddr: int
    gpu_size: int
    gpu_paddr: int


class HeapKind(NamedTuple):
    """:func:`decode_heap`'s answer: a ``PHYS_HEAP_TYPE_*`` and whether the
    region is a carve-out (a fixed [addr, addr+size) the driver does not
    allocate)."""
    heap_type: int
    carveout: bool


def decode_heap(heap: int, origin: int, addr: int, size: int, *,
                lma_platform: bool = False) -> tuple[int, HeapKind | None]:
    """Read a ``pfnGetDevPhysHeapAddrSize`` answer as the DDK's
    ``vz_physheap_generic.c`` does (specs §C.1 table):

    ========  ======  ==========================  ==========================
    addr      size    GPU heap                    FW heap
    ========  ======  ==========================  ==========================
    0         0       UMA (page allocator)        UMA; INVALID_PVZ_CONFIG if origin HOST
    0         N       DMA, N bytes contiguous     same
    A         N       carve-out [A, A+N) as LMA   same
    ========  ======  ==========================  ==========================

    On an LMA platform every A/N is LMA.  *heap*: ``PVRSRV_DEVICE_PHYS_HEAP_*``;
    *origin*: ``..._ORIGIN_HOST`` / ``_GUEST``.  Returns ``(PVRSRV_OK, kind)``
    or ``(INVALID_PVZ_CONFIG, None)`` (also for A/0, a bad origin or heap:
    paravm's choice, the table has no such row)."""
    bad = (A.PVRSRV_ERROR_INVALID_PVZ_CONFIG, None)
    if heap not in (A.PVRSRV_DEVICE_PHYS_HEAP_GPU_LOCAL, A.PVRSRV_DEVICE_PHYS_HEAP_FW_LOCAL):
        return bad
    if origin not in (A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_HOST, A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_GUEST):
        return bad
    if addr and size:
        return A.PVRSRV_OK, HeapKind(A.PHYS_HEAP_TYPE_LMA, not lma_platform)
    if lma_platform or addr:
        return bad
    if size:
        return A.PVRSRV_OK, HeapKind(A.PHYS_HEAP_TYPE_DMA, False)
    if heap == A.PVRSRV_DEVICE_PHYS_HEAP_FW_LOCAL and origin == A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_HOST:
        return bad
    return A.PVRSRV_OK, HeapKind(A.PHYS_HEAP_TYPE_UMA, False)


class PvzSystem:
    """The host driver's system layer: what the server asks the device to
    do.  Subclass it to serve a device of your own; these defaults are the
    vanilla IMG stub (nothing to do, every call succeeds).  Methods run
    under the server's lock, one at a time; none may block for long."""

    def dev_config(self) -> DevConfig:
        """The device as the host sees it (CreateDevConfig's outputs)."""
        return DevConfig(0, 0, 0)

    def init_device(self) -> int:
        """Bring the device and its firmware up (once, at the first
        OnVmOnline while the device is still in its INIT state)."""
        return A.PVRSRV_OK

    def set_os_state(self, osid: int, online: bool) -> None:
        """The firmware's OS state of *osid* (RGXFW ONLINE / OFFLINE)."""

    def set_os_priority(self, osid: int, priority: int) -> None:
        """The firmware's scheduling priority of *osid*."""

    def set_hcs_deadline(self, deadline_ms: int) -> None:
        """The firmware's hard context switch deadline, ms."""

    def map_fw_heap(self, osid: int, paddr: int, size: int) -> int:
        """Map *osid*'s guest-allocated firmware heap [paddr, paddr+size)
        (host physical) into the firmware ("GuestFirmware<OSID>")."""
        return A.PVRSRV_OK

    def unmap_fw_heap(self, osid: int) -> None:
        """Undo :meth:`map_fw_heap` (a no-op if nothing is mapped)."""


class PvzServer:
    """The host driver's PVZ server for one device (devID 0).

    *system*: the :class:`PvzSystem`; *fw_heap*, *gpu_heap*: this host's
    :class:`HeapConfig` answers; *fw_heap_size*: ``RGX_FIRMWARE_HEAP_SIZE``,
    the size the host maps for each guest whatever the guest says; *num_os*:
    ``RGXFW_NUM_OS`` (OSIDs 0..num_os-1, 0 the host).  The host (OSID 0) is
    online from the start.  Thread-safe."""

    def __init__(self, system: PvzSystem | None = None, *, fw_heap: HeapConfig = HeapConfig(),
                 gpu_heap: HeapConfig = HeapConfig(), fw_heap_size: int = 8 << 20,
                 num_os: int = A.RGXFW_NUM_OS) -> None:
        if not 2 <= num_os <= 8:
            raise ValueError(f"num_os must be 2..8, got {num_os}")
        self.system = system if system is not None else PvzSystem()
        self.fw_heap, self.gpu_heap = fw_heap, gpu_heap
        self.fw_heap_size, self.num_os = fw_heap_size, num_os
        self.lock = threading.RLock()
        self.online = [False] * num_os
        self.online[0] = True
        self.priority = [0] * num_os
        self.hcs_deadline_ms = 0
        self.device_initialised = False
        self.fw_mapped: dict[int, tuple[int, int]] = {}   # OSID -> (paddr, size) of "GuestFirmware<OSID>"

    # --- the gate every guest-originated call passes -----------------------------------
    def _gate(self, osid: int, func_id: int, expected: int, dev_id: int = 0) -> int:
        if not 0 < osid < self.num_os:
            return A.PVRSRV_ERROR_INVALID_PVZ_OSID
        if not self.online[osid]:
            return A.PVRSRV_ERROR_PVZ_OSID_IS_OFFLINE
        if func_id != expected or dev_id != 0:
            return A.PVRSRV_ERROR_INVALID_PARAMS
        return A.PVRSRV_OK

    def _drop_heap(self, osid: int) -> None:
        """Unmap *osid*'s heap if one is mapped (its firmware OS state is
        OFFLINE already: the firmware never runs on a heap being unmapped)."""
        if self.fw_mapped.pop(osid, None) is not None:
            self.system.unmap_fw_heap(osid)

    # --- sGuestFuncTab -----------------------------------------------------------------
    def create_dev_config(self, osid: int, func_id: int, dev_id: int
                          ) -> tuple[int, DevConfig | None]:
        """The host's register base, size and IRQ (the reference assumes every
        VM sees the device alike).  ``INVALID_PARAMS`` for a devID other than 0."""
        with self.lock:
            err = self._gate(osid, func_id, A.PVZ_BRIDGE_CREATEDEVICECONFIG, dev_id)
            return (err, None) if err else (err, self.system.dev_config())

    def destroy_dev_config(self, osid: int, func_id: int, dev_id: int) -> int:
        """Nothing to undo: ``PVRSRV_OK`` after the same checks."""
        with self.lock:
            return self._gate(osid, func_id, A.PVZ_BRIDGE_DESTROYDEVICECONFIG, dev_id)

    def create_dev_phys_heaps(self, osid: int, func_id: int, dev_id: int
                              ) -> tuple[int, PhysHeaps | None]:
        """Heap type UMA; for a GPU or FW heap of origin HOST that has a
        region, OSID's slice ``(size, addr + osid * size)``, else 0/0."""
        with self.lock:
            err = self._gate(osid, func_id, A.PVZ_BRIDGE_CREATEDEVICEPHYSHEAPS, dev_id)
            if err:
                return err, None
            fw = self._slice(self.fw_heap, osid)
            gpu = self._slice(self.gpu_heap, osid)
            return A.PVRSRV_OK, PhysHeaps(A.PHYS_HEAP_TYPE_UMA, fw[0], fw[1], gpu[0], gpu[1])

    @staticmethod
    def _slice(heap: HeapConfig, osid: int) -> tuple[int, int]:
        if heap.origin == A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_HOST and heap.addr and heap.size:
            return heap.size, heap.addr + osid * heap.size
        return 0, 0

    def destroy_dev_phys_heaps(self, osid: int, func_id: int, dev_id: int) -> int:
        """Nothing to undo: ``PVRSRV_OK`` after the same checks."""
        with self.lock:
            return self._gate(osid, func_id, A.PVZ_BRIDGE_DESTROYDEVICEPHYSHEAPS, dev_id)

    def map_dev_phys_heap(self, osid: int, func_id: int, dev_id: int, size: int,
                          paddr: int) -> int:
        """Map OSID's firmware heap at host physical *paddr* into the
        firmware: ``INVALID_PVZ_CONFIG`` unless this host's FW heap origin is
        GUEST ("host and guest(s) must use the same FW physheap origin"),
        ``INVALID_PARAMS`` for devID != 0.  As the reference, the size mapped
        is the host's ``fw_heap_size`` whatever *size* says (the VMM refuses
        a mismatch before it gets here), and the firmware OS state goes
        ONLINE once mapped (the newer generation's order).  A second Map
        without an Unmap would leak the first in the reference; here it is
        ``INVALID_PARAMS`` (and the VMM refuses it before)."""
        with self.lock:
            # The reference checks the origin before the devID.
            err = self._gate(osid, func_id, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP)
            if err:
                return err
            if self.fw_heap.origin != A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_GUEST:
                return A.PVRSRV_ERROR_INVALID_PVZ_CONFIG
            if dev_id != 0:
                return A.PVRSRV_ERROR_INVALID_PARAMS
            if osid in self.fw_mapped:
                return A.PVRSRV_ERROR_INVALID_PARAMS
            err = self.system.map_fw_heap(osid, paddr, self.fw_heap_size)
            if err == A.PVRSRV_OK:
                self.fw_mapped[osid] = (paddr, self.fw_heap_size)
                self.system.set_os_state(osid, True)
            return err

    def unmap_dev_phys_heap(self, osid: int, func_id: int, dev_id: int) -> int:
        """Unmap OSID's firmware heap: the firmware OS state goes OFFLINE
        first, then the memory goes (the newer generation's order, so the
        firmware never touches a heap being unmapped).  Nothing mapped: OK."""
        with self.lock:
            err = self._gate(osid, func_id, A.PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP, dev_id)
            if err == A.PVRSRV_OK and osid in self.fw_mapped:
                self.system.set_os_state(osid, False)
                self._drop_heap(osid)
            return err

    # --- sVmmFuncTab: the VMM only ------------------------------------------------------------
    def on_vm_online(self, osid: int, priority: int) -> int:
        """OSID *osid* starts: ``INVALID_PARAMS`` for OSID 0, one out of range,
        one online already, or a *priority* above 2^30 - 1 (newer DDKs keep
        bits 30 and 31 for the firmware; a higher number is a higher priority); the device is initialised now if it is still in
        its INIT state (its error is returned); then firmware OS state ONLINE,
        the priority set, the OSID marked online."""
        with self.lock:
            if not 0 < osid < self.num_os or self.online[osid]:
                return A.PVRSRV_ERROR_INVALID_PARAMS
            if not 0 <= priority <= A.PRIORITY_MAX:
                return A.PVRSRV_ERROR_INVALID_PARAMS
            if not self.device_initialised:
                err = self.system.init_device()
                if err:
                    return err
                self.device_initialised = True
            self.system.set_os_state(osid, True)
            self.system.set_os_priority(osid, priority)
            self.priority[osid] = priority
            self.online[osid] = True
            return A.PVRSRV_OK

    def on_vm_offline(self, osid: int) -> int:
        """OSID *osid* stops: ``INVALID_PARAMS`` out of range or offline
        already; firmware OS state OFFLINE, then marked offline.  A heap
        still mapped is unmapped on the way (the VMM unmaps first; a host
        that calls this directly must not leave the firmware a view of a
        guest that is gone)."""
        with self.lock:
            if not 0 < osid < self.num_os or not self.online[osid]:
                return A.PVRSRV_ERROR_INVALID_PARAMS
            self.system.set_os_state(osid, False)
            self._drop_heap(osid)
            self.online[osid] = False
            return A.PVRSRV_OK

    def vmm_configure(self, param: int, value: int) -> int:
        """``VMM_CONF_PRIO_OSID0 + n``: OSID n's priority (n >= num_os or a
        priority above 2^30 - 1 -> ``INVALID_PARAMS``); ``VMM_CONF_HCS_DEADLINE``: the firmware's hard
        context switch deadline, ms; anything else ``INVALID_PARAMS``."""
        with self.lock:
            if not 0 <= value <= 0xFFFFFFFF:
                return A.PVRSRV_ERROR_INVALID_PARAMS
            if A.VMM_CONF_PRIO_OSID0 <= param <= A.VMM_CONF_PRIO_OSID7:
                osid = param - A.VMM_CONF_PRIO_OSID0
                if osid >= self.num_os or value > A.PRIORITY_MAX:
                    return A.PVRSRV_ERROR_INVALID_PARAMS
                self.priority[osid] = value
                self.system.set_os_priority(osid, value)
                return A.PVRSRV_OK
            if param == A.VMM_CONF_HCS_DEADLINE:
                self.hcs_deadline_ms = value
                self.system.set_hcs_deadline(value)
                return A.PVRSRV_OK
            return A.PVRSRV_ERROR_INVALID_PARAMS

    # --- sConfigFuncTab ---------------------------------------------------------------------
    def _heap(self, heap: int) -> HeapConfig | None:
        return {A.PVRSRV_DEVICE_PHYS_HEAP_GPU_LOCAL: self.gpu_heap,
                A.PVRSRV_DEVICE_PHYS_HEAP_FW_LOCAL: self.fw_heap}.get(heap)

    def get_dev_phys_heap_origin(self, heap: int) -> tuple[int, int]:
        """``(PVRSRV_OK, origin)``; ``INVALID_PARAMS`` for a heap other than
        GPU_LOCAL / FW_LOCAL."""
        h = self._heap(heap)
        return (A.PVRSRV_ERROR_INVALID_PARAMS, A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_LAST) \
            if h is None else (A.PVRSRV_OK, h.origin)

    def get_dev_phys_heap_addr_size(self, heap: int) -> tuple[int, int, int]:
        """``(PVRSRV_OK, size, addr)`` as :func:`decode_heap` reads them."""
        h = self._heap(heap)
        return (A.PVRSRV_ERROR_INVALID_PARAMS, 0, 0) if h is None \
            else (A.PVRSRV_OK, h.size, h.addr)

    # --- connection validation (vz_support.c SysVzPvzConnectionValidate, host side) --------
    def validate(self) -> int:
        """The host's connection check at device init: ``INVALID_PVZ_CONFIG``
        if a config answer is not OK, the FW origin is not HOST/GUEST, the FW
        heap decodes badly (HOST with 0/0), or an entry of the guest / VMM
        tables is missing (a subclass that sets one to ``None``)."""
        return validate_connection(self, host=True)


_HOST_ENTRIES = ("create_dev_config", "destroy_dev_config", "create_dev_phys_heaps",
                 "destroy_dev_phys_heaps", "map_dev_phys_heap", "unmap_dev_phys_heap",
                 "on_vm_online", "on_vm_offline", "vmm_configure")


def validate_connection(conn, *, host: bool) -> int:
    """``SysVzPvzConnectionValidate`` over a connection object *conn*: one
    with ``get_dev_phys_heap_origin(heap)`` and
    ``get_dev_phys_heap_addr_size(heap)`` (the config table) and the
    entries of its side's function table as attributes (the host's
    ``sGuestFuncTab`` + ``sVmmFuncTab`` when *host*, else the guest's
    ``sHostFuncTab``).  ``PVRSRV_OK`` or ``INVALID_PVZ_CONFIG`` when: no
    connection; a config function missing; AddrSize(GPU) or AddrSize(FW) not
    OK; Origin(FW) not OK or LAST; a guest of origin GUEST without Map; a
    host with any entry missing; origin HOST with a FW heap of 0/0."""
    bad = A.PVRSRV_ERROR_INVALID_PVZ_CONFIG
    if conn is None:
        return bad
    origin_fn = getattr(conn, "get_dev_phys_heap_origin", None)
    addr_size_fn = getattr(conn, "get_dev_phys_heap_addr_size", None)
    if origin_fn is None or addr_size_fn is None:
        return bad
    err_gpu, _, _ = addr_size_fn(A.PVRSRV_DEVICE_PHYS_HEAP_GPU_LOCAL)
    err_fw, fw_size, fw_addr = addr_size_fn(A.PVRSRV_DEVICE_PHYS_HEAP_FW_LOCAL)
    if err_gpu or err_fw:
        return bad
    err, origin = origin_fn(A.PVRSRV_DEVICE_PHYS_HEAP_FW_LOCAL)
    if err or origin not in (A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_HOST,
                             A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_GUEST):
        return bad
    if host:
        if any(getattr(conn, name, None) is None for name in _HOST_ENTRIES):
            return bad
    elif origin == A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_GUEST \
            and getattr(conn, "map_dev_phys_heap", None) is None:
        return bad
    if origin == A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_HOST and not fw_size and not fw_addr:
        return bad
    return A.PVRSRV_OK
