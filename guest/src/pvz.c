/*
 * The PVZ connection, guest side (see paravm/pvz.h, docs/pvz.md).
 *
 * sHostFuncTab is the VMM-type code: each entry packs its arguments into a
 * struct pvz_msg on its stack (guest RAM: ring-3 stacks are), makes the
 * blocking pvz_call hypercall and unpacks the outputs only on success, as
 * the DDK's VMM types do.  The PvzClient* wrappers are vmm_pvz_client.c's:
 * they take the client lock, so one call at a time leaves this guest (the
 * VMM serialises per OSID too, whatever the guest does).
 */
#include "paravm.h"
#include "paravm/pvz.h"

int pvz_present(void)
{
    return pv_boot_info()->pvz != 0;
}

PVRSRV_DEVICE_PHYS_HEAP_ORIGIN pvz_fw_origin(void)
{
    return pvz_present() ? (PVRSRV_DEVICE_PHYS_HEAP_ORIGIN)pv_boot_info()->pvz_fw_origin
                         : PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_LAST;
}

uint64_t pvz_fw_heap_size(void)
{
    return pvz_present() ? pv_boot_info()->pvz_fw_heap_size : 0;
}

long pvz_call(struct pvz_msg *msg)
{
    if (!pvz_present()) {
        msg->status = PVRSRV_ERROR_NOT_IMPLEMENTED;
        return PVRSRV_ERROR_NOT_IMPLEMENTED;
    }
    return pv_hypercall2(PV_HC_PVZ_CALL, (uint64_t)(uintptr_t)msg, 0);
}

static PVRSRV_ERROR call(struct pvz_msg *m)
{
    long r = pvz_call(m);
    return r < 0 ? PVRSRV_ERROR_INVALID_PARAMS : (PVRSRV_ERROR)r;
}

/* --- sHostFuncTab: the VMM type ------------------------------------------------ */
static PVRSRV_ERROR vmm_create_dev_config(uint32_t func, uint32_t dev, uint32_t *irq,
                                          uint32_t *regs_size, uint64_t *regs_pbase)
{
    struct pvz_msg m = {.func_id = func, .dev_id = dev};
    PVRSRV_ERROR e = call(&m);
    if (e == PVRSRV_OK) {
        *irq = m.irq;
        *regs_size = m.regs_size;
        *regs_pbase = m.regs_pbase;
    }
    return e;
}

static PVRSRV_ERROR vmm_simple(uint32_t func, uint32_t dev)
{
    struct pvz_msg m = {.func_id = func, .dev_id = dev};
    return call(&m);
}

static PVRSRV_ERROR vmm_create_dev_phys_heaps(uint32_t func, uint32_t dev, uint32_t *type,
                                              uint64_t *fw_size, uint64_t *fw_paddr,
                                              uint64_t *gpu_size, uint64_t *gpu_paddr)
{
    struct pvz_msg m = {.func_id = func, .dev_id = dev};
    PVRSRV_ERROR e = call(&m);
    if (e == PVRSRV_OK) {
        *type = m.heap_type;
        *fw_size = m.fw_size;
        *fw_paddr = m.fw_paddr;
        *gpu_size = m.gpu_size;
        *gpu_paddr = m.gpu_paddr;
    }
    return e;
}

static PVRSRV_ERROR vmm_map_dev_phys_heap(uint32_t func, uint32_t dev, uint64_t size,
                                          uint64_t paddr)
{
    struct pvz_msg m = {.func_id = func, .dev_id = dev, .fw_size = size, .fw_paddr = paddr};
    return call(&m);
}

/* --- sConfigFuncTab: this guest's heaps ----------------------------------------------- */
static PVRSRV_ERROR cfg_origin(void *dev_config, PVRSRV_DEVICE_PHYS_HEAP heap,
                               PVRSRV_DEVICE_PHYS_HEAP_ORIGIN *origin)
{
    (void)dev_config;
    if (heap == PVRSRV_DEVICE_PHYS_HEAP_FW_LOCAL) {
        if (!pvz_present())
            return PVRSRV_ERROR_NOT_IMPLEMENTED;
        *origin = pvz_fw_origin();
    } else if (heap == PVRSRV_DEVICE_PHYS_HEAP_GPU_LOCAL) {
        *origin = PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_GUEST;
    } else {
        return PVRSRV_ERROR_INVALID_PARAMS;
    }
    return PVRSRV_OK;
}

static PVRSRV_ERROR cfg_addr_size(void *dev_config, PVRSRV_DEVICE_PHYS_HEAP heap,
                                  uint64_t *size, uint64_t *addr)
{
    (void)dev_config;
    if (heap == PVRSRV_DEVICE_PHYS_HEAP_GPU_LOCAL) {
        *size = 0;          /* UMA: this guest's own RAM */
        *addr = 0;
    } else if (heap == PVRSRV_DEVICE_PHYS_HEAP_FW_LOCAL) {
        if (!pvz_present())
            return PVRSRV_ERROR_NOT_IMPLEMENTED;
        *size = pvz_fw_heap_size();
        /* HOST: the carve-out (OSID 0's slice base; ours comes from
         * CreateDevPhysHeaps); GUEST: 0/N, a DMA heap this guest allocates. */
        *addr = pvz_fw_origin() == PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_HOST ? PV_PVZ_FW_CARVEOUT_GPA : 0;
    } else {
        return PVRSRV_ERROR_INVALID_PARAMS;
    }
    return PVRSRV_OK;
}

static VMM_PVZ_CONNECTION connection = {
    .sHostFuncTab = {
        .pfnCreateDevConfig = vmm_create_dev_config,
        .pfnDestroyDevConfig = vmm_simple,
        .pfnCreateDevPhysHeaps = vmm_create_dev_phys_heaps,
        .pfnDestroyDevPhysHeaps = vmm_simple,
        .pfnMapDevPhysHeap = vmm_map_dev_phys_heap,
        .pfnUnmapDevPhysHeap = vmm_simple,
    },
    .sConfigFuncTab = {
        .pfnGetDevPhysHeapOrigin = cfg_origin,
        .pfnGetDevPhysHeapAddrSize = cfg_addr_size,
    },
};

PVRSRV_ERROR VMMCreatePvzConnection(VMM_PVZ_CONNECTION **conn)
{
    if (!conn)
        return PVRSRV_ERROR_INVALID_PARAMS;
    *conn = &connection;
    return PVRSRV_OK;
}

void VMMDestroyPvzConnection(VMM_PVZ_CONNECTION *conn)
{
    (void)conn;
}

PVRSRV_ERROR PvzConnectionValidate(const VMM_PVZ_CONNECTION *c)
{
    PVRSRV_DEVICE_PHYS_HEAP_ORIGIN origin;
    uint64_t size, addr, fw_size, fw_addr;
    if (!c || !c->sConfigFuncTab.pfnGetDevPhysHeapOrigin
        || !c->sConfigFuncTab.pfnGetDevPhysHeapAddrSize)
        return PVRSRV_ERROR_INVALID_PVZ_CONFIG;
    if (c->sConfigFuncTab.pfnGetDevPhysHeapAddrSize(0, PVRSRV_DEVICE_PHYS_HEAP_GPU_LOCAL,
                                                    &size, &addr) != PVRSRV_OK
        || c->sConfigFuncTab.pfnGetDevPhysHeapAddrSize(0, PVRSRV_DEVICE_PHYS_HEAP_FW_LOCAL,
                                                       &fw_size, &fw_addr) != PVRSRV_OK)
        return PVRSRV_ERROR_INVALID_PVZ_CONFIG;
    if (c->sConfigFuncTab.pfnGetDevPhysHeapOrigin(0, PVRSRV_DEVICE_PHYS_HEAP_FW_LOCAL,
                                                  &origin) != PVRSRV_OK
        || origin >= PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_LAST)
        return PVRSRV_ERROR_INVALID_PVZ_CONFIG;
    if (origin == PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_GUEST && !c->sHostFuncTab.pfnMapDevPhysHeap)
        return PVRSRV_ERROR_INVALID_PVZ_CONFIG;
    if (origin == PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_HOST && !fw_size && !fw_addr)
        return PVRSRV_ERROR_INVALID_PVZ_CONFIG;
    return PVRSRV_OK;
}

/* --- vmm_pvz_client.c -------------------------------------------------------------------- */
static volatile int client_lock;

static void lock(void)
{
    while (__atomic_test_and_set(&client_lock, __ATOMIC_ACQUIRE))
        __builtin_ia32_pause();
}

static void unlock(void)
{
    __atomic_clear(&client_lock, __ATOMIC_RELEASE);
}

PVRSRV_ERROR PvzClientCreateDevConfig(uint32_t dev, uint32_t *irq, uint32_t *regs_size,
                                      uint64_t *regs_pbase)
{
    lock();
    PVRSRV_ERROR e = connection.sHostFuncTab.pfnCreateDevConfig(
        PVZ_BRIDGE_CREATEDEVICECONFIG, dev, irq, regs_size, regs_pbase);
    unlock();
    return e;
}

PVRSRV_ERROR PvzClientDestroyDevConfig(uint32_t dev)
{
    lock();
    PVRSRV_ERROR e = connection.sHostFuncTab.pfnDestroyDevConfig(PVZ_BRIDGE_DESTROYDEVICECONFIG, dev);
    unlock();
    return e;
}

PVRSRV_ERROR PvzClientCreateDevPhysHeaps(uint32_t dev, uint32_t *type, uint64_t *fw_size,
                                         uint64_t *fw_paddr, uint64_t *gpu_size,
                                         uint64_t *gpu_paddr)
{
    lock();
    PVRSRV_ERROR e = connection.sHostFuncTab.pfnCreateDevPhysHeaps(
        PVZ_BRIDGE_CREATEDEVICEPHYSHEAPS, dev, type, fw_size, fw_paddr, gpu_size, gpu_paddr);
    unlock();
    return e;
}

PVRSRV_ERROR PvzClientDestroyDevPhysHeaps(uint32_t dev)
{
    lock();
    PVRSRV_ERROR e = connection.sHostFuncTab.pfnDestroyDevPhysHeaps(
        PVZ_BRIDGE_DESTROYDEVICEPHYSHEAPS, dev);
    unlock();
    return e;
}

PVRSRV_ERROR PvzClientMapDevPhysHeap(uint32_t dev, uint64_t size, uint64_t paddr)
{
    lock();
    PVRSRV_ERROR e = connection.sHostFuncTab.pfnMapDevPhysHeap(PVZ_BRIDGE_MAPDEVICEPHYSHEAP, dev,
                                                               size, paddr);
    unlock();
    return e;
}

PVRSRV_ERROR PvzClientUnmapDevPhysHeap(uint32_t dev)
{
    lock();
    PVRSRV_ERROR e = connection.sHostFuncTab.pfnUnmapDevPhysHeap(PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP,
                                                                 dev);
    unlock();
    return e;
}
