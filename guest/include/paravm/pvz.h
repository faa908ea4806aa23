/*
 * The PowerVR PVZ connection, guest side (docs/pvz.md; specs/ivc-lguest-pvz.md
 * part C).
 *
 * A para-virtualised PowerVR guest driver reaches the host driver through
 * the DDK's connection tables: sHostFuncTab (implemented here by the
 * VMM-type code: one blocking hypercall per call) and sConfigFuncTab (this
 * guest's own view of its physical heaps).  The PvzClient* calls are
 * vmm_pvz_client.c's: each takes the client lock and passes its function ID.
 * The VMM stamps every call with this domain's OSID from the manifest; a
 * guest never says which OSID it is.
 *
 * Every call returns a PVRSRV_ERROR: PVRSRV_OK, or the host's or the VMM's
 * error (the numbers of one pinned pvrsrv_errors.h, DDK 25.2, see
 * src/paravm/services/pvz/abi.py).  Without a PVZ connection (boot info
 * pvz == 0) calls return PVRSRV_ERROR_NOT_IMPLEMENTED, as the DDK's stub.
 */
#ifndef PARAVM_PVZ_H
#define PARAVM_PVZ_H

#include <stdint.h>

#define PV_HC_PVZ_CALL 40           /* (struct pvz_msg *) -> PVRSRV_ERROR, or -PV_EFAULT */

typedef enum PVRSRV_ERROR_TAG {
    PVRSRV_OK = 0,
    PVRSRV_ERROR_OUT_OF_MEMORY = 1,
    PVRSRV_ERROR_INVALID_PARAMS = 3,
    PVRSRV_ERROR_INIT_FAILURE = 4,
    PVRSRV_ERROR_INVALID_DEVICE = 6,
    PVRSRV_ERROR_NOT_IMPLEMENTED = 10,
    PVRSRV_ERROR_NOT_SUPPORTED = 20,
    PVRSRV_ERROR_DEVICEMEM_ALREADY_MAPPED = 86,
    PVRSRV_ERROR_NO_DEVICENODE_FOUND = 193,
    PVRSRV_ERROR_NOT_INITIALISED = 324,
    PVRSRV_ERROR_INVALID_PVZ_CONFIG = 344,
    PVRSRV_ERROR_INVALID_PVZ_OSID = 348,
    PVRSRV_ERROR_PVZ_OSID_IS_OFFLINE = 349,
    PVRSRV_ERROR_FORCE_I32 = 0x7fffffff
} PVRSRV_ERROR;

/* Function IDs (vmm_pvz_common.h). */
#define PVZ_BRIDGE_DEFAULT                  0
#define PVZ_BRIDGE_CREATEDEVICECONFIG       1
#define PVZ_BRIDGE_DESTROYDEVICECONFIG      2
#define PVZ_BRIDGE_CREATEDEVICEPHYSHEAPS    3
#define PVZ_BRIDGE_DESTROYDEVICEPHYSHEAPS   4
#define PVZ_BRIDGE_MAPDEVICEPHYSHEAP        5
#define PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP      6
#define PVZ_BRIDGE_DEBUGDUMPCONFIG          7   /* a vendor's; not served */
#define PVZ_BRIDGE_LAST                     8

typedef enum {
    PVRSRV_DEVICE_PHYS_HEAP_GPU_LOCAL = 0,
    PVRSRV_DEVICE_PHYS_HEAP_CPU_LOCAL = 1,
    PVRSRV_DEVICE_PHYS_HEAP_FW_LOCAL = 2,
    PVRSRV_DEVICE_PHYS_HEAP_LAST
} PVRSRV_DEVICE_PHYS_HEAP;

typedef enum {
    PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_HOST = 0,
    PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_GUEST = 1,
    PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_LAST
} PVRSRV_DEVICE_PHYS_HEAP_ORIGIN;

typedef enum {
    PHYS_HEAP_TYPE_UNKNOWN = 0,
    PHYS_HEAP_TYPE_UMA = 1,
    PHYS_HEAP_TYPE_LMA = 2,
    PHYS_HEAP_TYPE_DMA = 3
} PHYS_HEAP_TYPE;

/* The message of one call (paravm's transport; 64 bytes). */
struct pvz_msg {
    uint32_t func_id;       /* in: PVZ_BRIDGE_* */
    uint32_t dev_id;        /* in: 0 */
    uint32_t status;        /* out: PVRSRV_ERROR */
    uint32_t irq;           /* out: CreateDevConfig */
    uint32_t regs_size;     /* out: CreateDevConfig, bytes */
    uint32_t heap_type;     /* out: CreateDevPhysHeaps, PHYS_HEAP_TYPE_* */
    uint64_t regs_pbase;    /* out: CreateDevConfig */
    uint64_t fw_size;       /* out: CreateDevPhysHeaps; in: MapDevPhysHeap */
    uint64_t fw_paddr;      /* out: CreateDevPhysHeaps; in: MapDevPhysHeap (GPA) */
    uint64_t gpu_size;      /* out: CreateDevPhysHeaps */
    uint64_t gpu_paddr;     /* out: CreateDevPhysHeaps */
};

/* The connection: sHostFuncTab as the VMM-type code implements it (each
 * takes its function ID first, as the DDK's), and sConfigFuncTab. */
typedef struct VMM_PVZ_CONNECTION_TAG {
    struct {
        PVRSRV_ERROR (*pfnCreateDevConfig)(uint32_t ui32FuncID, uint32_t ui32DevID,
                                           uint32_t *pui32IRQ, uint32_t *pui32RegsSize,
                                           uint64_t *pui64RegsPAddr);
        PVRSRV_ERROR (*pfnDestroyDevConfig)(uint32_t ui32FuncID, uint32_t ui32DevID);
        PVRSRV_ERROR (*pfnCreateDevPhysHeaps)(uint32_t ui32FuncID, uint32_t ui32DevID,
                                              uint32_t *peType, uint64_t *pui64FwSize,
                                              uint64_t *pui64FwPAddr, uint64_t *pui64GpuSize,
                                              uint64_t *pui64GpuPAddr);
        PVRSRV_ERROR (*pfnDestroyDevPhysHeaps)(uint32_t ui32FuncID, uint32_t ui32DevID);
        PVRSRV_ERROR (*pfnMapDevPhysHeap)(uint32_t ui32FuncID, uint32_t ui32DevID,
                                          uint64_t ui64Size, uint64_t ui64PAddr);
        PVRSRV_ERROR (*pfnUnmapDevPhysHeap)(uint32_t ui32FuncID, uint32_t ui32DevID);
    } sHostFuncTab;
    struct {
        PVRSRV_ERROR (*pfnGetDevPhysHeapOrigin)(void *psDevConfig, PVRSRV_DEVICE_PHYS_HEAP eHeap,
                                                PVRSRV_DEVICE_PHYS_HEAP_ORIGIN *peOrigin);
        PVRSRV_ERROR (*pfnGetDevPhysHeapAddrSize)(void *psDevConfig, PVRSRV_DEVICE_PHYS_HEAP eHeap,
                                                  uint64_t *pui64Size, uint64_t *pui64Addr);
    } sConfigFuncTab;
} VMM_PVZ_CONNECTION;

/* The connection of this domain: its sConfigFuncTab answers from the boot
 * info (FW heap: the host's origin, and for origin GUEST the heap size with
 * address 0, a DMA-type heap the guest allocates; GPU heap: UMA 0/0). */
PVRSRV_ERROR VMMCreatePvzConnection(VMM_PVZ_CONNECTION **ppsConnection);
void VMMDestroyPvzConnection(VMM_PVZ_CONNECTION *psConnection);

/* vz_support.c SysVzPvzConnectionValidate, guest side: PVRSRV_OK or
 * PVRSRV_ERROR_INVALID_PVZ_CONFIG (no connection; a config function missing;
 * AddrSize of the GPU or FW heap not OK; Origin(FW) not OK or LAST; origin
 * GUEST without pfnMapDevPhysHeap; origin HOST with a FW heap of 0/0). */
PVRSRV_ERROR PvzConnectionValidate(const VMM_PVZ_CONNECTION *psConnection);

/* vmm_pvz_client.c: one call at a time per guest (the client lock). */
PVRSRV_ERROR PvzClientCreateDevConfig(uint32_t ui32DevID, uint32_t *pui32IRQ,
                                      uint32_t *pui32RegsSize, uint64_t *pui64RegsPAddr);
PVRSRV_ERROR PvzClientDestroyDevConfig(uint32_t ui32DevID);
PVRSRV_ERROR PvzClientCreateDevPhysHeaps(uint32_t ui32DevID, uint32_t *peType,
                                         uint64_t *pui64FwSize, uint64_t *pui64FwPAddr,
                                         uint64_t *pui64GpuSize, uint64_t *pui64GpuPAddr);
PVRSRV_ERROR PvzClientDestroyDevPhysHeaps(uint32_t ui32DevID);
PVRSRV_ERROR PvzClientMapDevPhysHeap(uint32_t ui32DevID, uint64_t ui64Size, uint64_t ui64PAddr);
PVRSRV_ERROR PvzClientUnmapDevPhysHeap(uint32_t ui32DevID);

/* The raw call with any function ID (what the stubs use; tests use it to
 * send what no stub would): msg->status and the return value are the
 * PVRSRV_ERROR; -PV_EFAULT (negative) if msg is not in guest RAM. */
long pvz_call(struct pvz_msg *msg);

/* This domain's boot info: 1 with a PVZ connection; its FW heap origin and
 * RGX_FIRMWARE_HEAP_SIZE. */
int pvz_present(void);
PVRSRV_DEVICE_PHYS_HEAP_ORIGIN pvz_fw_origin(void);
uint64_t pvz_fw_heap_size(void);

#endif
