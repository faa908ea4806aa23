"""The PVZ ABI: the PowerVR DDK's numbers and paravm's message between guest and VMM.

Numbers (specs/ivc-lguest-pvz.md §C.1), each pinned to one source:

* function IDs ``PVZ_BRIDGE_*``: ``vmm_pvz_common.h`` of the 1.1x DDK
  (jianghong-023/semidrive-linux ``drivers/gpu/rogue_km/services/system/include``,
  commit 56d7f91); 7 (DEBUGDUMPCONFIG) is the vendor's and not served;
* ``PVRSRV_ERROR``: an enum whose values are positions in ``pvrsrv_errors.h``
  after ``PVRSRV_OK = 0``; they move between DDK releases, so paravm pins one
  header, TexasInstruments/ti-img-rogue-driver ``include/pvrsrv_errors.h`` at
  commit f88784d (DDK 25.2, 387 errors);
* ``VMM_CONF_*``: the 1.1x ``vmm_impl.h`` (PRIO_OSID0..7 = 0..7,
  HCS_DEADLINE = 8; the semidrive tree inserts ISOL_THRES = 8 before it, which
  paravm does not model);
* heaps, origins and ``PHYS_HEAP_TYPE``: ``pvrsrv_device.h`` / ``physheap.h``.

The message (``struct pvz_msg``, 64 bytes, little-endian) is paravm's
transport, the part the reference leaves to each VMM type: the guest stub
packs a call's function ID and arguments, makes one blocking hypercall
``pvz_call(msg_gpa)`` = :data:`HC_PVZ_CALL`, and the VMM writes the outputs and
the ``PVRSRV_ERROR`` back into it (also returned in rax)::

    struct pvz_msg {
        uint32_t func_id;     //  0 in: PVZ_BRIDGE_*
        uint32_t dev_id;      //  4 in: device, 0
        uint32_t status;      //  8 out: PVRSRV_ERROR
        uint32_t irq;         // 12 out: CreateDevConfig
        uint32_t regs_size;   // 16 out: CreateDevConfig, bytes
        uint32_t heap_type;   // 20 out: CreateDevPhysHeaps, PHYS_HEAP_TYPE_*
        uint64_t regs_pbase;  // 24 out: CreateDevConfig
        uint64_t fw_size;     // 32 out: CreateDevPhysHeaps; in: MapDevPhysHeap size
        uint64_t fw_paddr;    // 40 out: CreateDevPhysHeaps; in: MapDevPhysHeap GPA
        uint64_t gpu_size;    // 48 out: CreateDevPhysHeaps
        uint64_t gpu_paddr;   // 56 out: CreateDevPhysHeaps
    };

``guest/include/paravm/pvz.h`` declares the same; ``tests/unit/test_pvz_abi.py``
compiles it and checks both agree.
"""

from __future__ import annotations

import struct

HC_PVZ_CALL = 40

RGXFW_NUM_OS = 8           # OSIDs 0 (the host) .. 7
PRIORITY_MAX = (1 << 30) - 1   # newer DDKs: bits 30, 31 are the firmware's

# --- function IDs (ui32FuncID) ------------------------------------------------------
PVZ_BRIDGE_DEFAULT = 0
PVZ_BRIDGE_CREATEDEVICECONFIG = 1
PVZ_BRIDGE_DESTROYDEVICECONFIG = 2
PVZ_BRIDGE_CREATEDEVICEPHYSHEAPS = 3
PVZ_BRIDGE_DESTROYDEVICEPHYSHEAPS = 4
PVZ_BRIDGE_MAPDEVICEPHYSHEAP = 5
PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP = 6
PVZ_BRIDGE_DEBUGDUMPCONFIG = 7     # semidrive only; not served (INVALID_PARAMS)
PVZ_BRIDGE_LAST = 8

FUNC_NAMES = {
    PVZ_BRIDGE_CREATEDEVICECONFIG: "CreateDevConfig",
    PVZ_BRIDGE_DESTROYDEVICECONFIG: "DestroyDevConfig",
    PVZ_BRIDGE_CREATEDEVICEPHYSHEAPS: "CreateDevPhysHeaps",
    PVZ_BRIDGE_DESTROYDEVICEPHYSHEAPS: "DestroyDevPhysHeaps",
    PVZ_BRIDGE_MAPDEVICEPHYSHEAP: "MapDevPhysHeap",
    PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP: "UnmapDevPhysHeap",
}

# --- VMM_CONF_PARAM -----------------------------------------------------------------
VMM_CONF_PRIO_OSID0 = 0
VMM_CONF_PRIO_OSID7 = 7
VMM_CONF_HCS_DEADLINE = 8

# --- physical heaps -----------------------------------------------------------------
PVRSRV_DEVICE_PHYS_HEAP_GPU_LOCAL = 0
PVRSRV_DEVICE_PHYS_HEAP_CPU_LOCAL = 1
PVRSRV_DEVICE_PHYS_HEAP_FW_LOCAL = 2
PVRSRV_DEVICE_PHYS_HEAP_LAST = 3

PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_HOST = 0
PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_GUEST = 1
PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_LAST = 2

PHYS_HEAP_TYPE_UNKNOWN = 0
PHYS_HEAP_TYPE_UMA = 1
PHYS_HEAP_TYPE_LMA = 2
PHYS_HEAP_TYPE_DMA = 3

# --- PVRSRV_ERROR (pvrsrv_errors.h, DDK 25.2, TI f88784d) ------------------------------------
PVRSRV_OK = 0
PVRSRV_ERROR_OUT_OF_MEMORY = 1
PVRSRV_ERROR_INVALID_PARAMS = 3
PVRSRV_ERROR_INIT_FAILURE = 4
PVRSRV_ERROR_INVALID_DEVICE = 6
PVRSRV_ERROR_NOT_IMPLEMENTED = 10
PVRSRV_ERROR_NOT_SUPPORTED = 20
PVRSRV_ERROR_DEVICEMEM_ALREADY_MAPPED = 86
PVRSRV_ERROR_NO_DEVICENODE_FOUND = 193
PVRSRV_ERROR_NOT_INITIALISED = 324
PVRSRV_ERROR_INVALID_PVZ_CONFIG = 344
PVRSRV_ERROR_INVALID_PVZ_OSID = 348
PVRSRV_ERROR_PVZ_OSID_IS_OFFLINE = 349

ERROR_NAMES = {v: k for k, v in globals().items()
               if k == "PVRSRV_OK" or k.startswith("PVRSRV_ERROR_")}

# --- the message ------------------------------------------------------------------------
PVZ_MSG = struct.Struct("<IIIIIIQQQQQ")
PVZ_MSG_SIZE = PVZ_MSG.size     # 64
# Byte offset of each field (the C layout above).
MSG_FIELDS = ("func_id", "dev_id", "status", "irq", "regs_size", "heap_type",
              "regs_pbase", "fw_size", "fw_paddr", "gpu_size", "gpu_paddr")
MSG_OFFSETS = dict(zip(MSG_FIELDS, (0, 4, 8, 12, 16, 20, 24, 32, 40, 48, 56)))


def error_name(err: int) -> str:
    """``PVRSRV_ERROR_INVALID_PARAMS`` for 3; ``PVRSRV_ERROR_#n`` for a number
    paravm has no name for."""
    return ERROR_NAMES.get(err, f"PVRSRV_ERROR_#{err}")
