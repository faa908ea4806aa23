/* The example PVZ GPU's guest driver: see paravm/pvz_gpu.h. */
#include "paravm.h"
#include "paravm/pvz_gpu.h"

static void gpu_irq(unsigned vector, void *ctx)
{
    struct pvz_gpu *g = ctx;
    (void)vector;
    uint32_t bits = g->regs[PVZ_GPU_REG_IRQ_STATUS / 4];
    g->regs[PVZ_GPU_REG_IRQ_STATUS / 4] = bits;     /* ack */
    g->irq_bits |= bits;
    g->irqs++;
}

PVRSRV_ERROR pvz_gpu_init(struct pvz_gpu *g, uint32_t slots)
{
    VMM_PVZ_CONNECTION *conn;
    uint32_t type;
    uint64_t regs_pbase, fw_size, fw_paddr, gpu_size, gpu_paddr;
    PVRSRV_ERROR e;

    memset(g, 0, sizeof *g);
    if (!slots || slots > PVZ_GPU_CCB_MAX_SLOTS || (slots & (slots - 1)))
        return PVRSRV_ERROR_INVALID_PARAMS;
    if ((e = VMMCreatePvzConnection(&conn)) != PVRSRV_OK
        || (e = PvzConnectionValidate(conn)) != PVRSRV_OK)
        return e;
    if ((e = PvzClientCreateDevConfig(0, &g->irq, &g->regs_size, &regs_pbase)) != PVRSRV_OK)
        return e;
    g->regs = (volatile uint32_t *)(uintptr_t)regs_pbase;
    if (!g->regs || g->regs[PVZ_GPU_REG_ID / 4] != PVZ_GPU_ID)
        return PVRSRV_ERROR_NO_DEVICENODE_FOUND;
    if ((e = PvzClientCreateDevPhysHeaps(0, &type, &fw_size, &fw_paddr, &gpu_size,
                                         &gpu_paddr)) != PVRSRV_OK)
        return e;
    g->origin = pvz_fw_origin();
    g->gpu = (uint8_t *)(uintptr_t)gpu_paddr;
    g->gpu_size = gpu_size;
    if (g->origin == PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_HOST) {
        if (!fw_paddr || !fw_size)
            return PVRSRV_ERROR_INVALID_PVZ_CONFIG;
        g->fw = (uint8_t *)(uintptr_t)fw_paddr;
        g->fw_size = fw_size;
    } else {
        /* SysVzRegisterFwPhysHeap: our own heap, mapped by the host. */
        g->fw_size = pvz_fw_heap_size();
        g->fw = pv_page_alloc(g->fw_size / 4096);
        if (!g->fw)
            return PVRSRV_ERROR_OUT_OF_MEMORY;
        if ((e = PvzClientMapDevPhysHeap(0, g->fw_size, (uint64_t)(uintptr_t)g->fw)) != PVRSRV_OK)
            return e;
        g->mapped = 1;
    }
    g->ctl = (struct pvz_gpu_ccb_ctl *)g->fw;
    g->ccb = (struct pvz_gpu_cmd *)(g->fw + PVZ_GPU_CCB_OFFSET);
    g->slots = slots;
    g->ctl->read_offset = 0;
    g->ctl->write_offset = 0;
    g->ctl->wrap_mask = slots - 1;
    g->ctl->cmd_size = sizeof(struct pvz_gpu_cmd);
    if (pv_irq_register(g->irq, gpu_irq, g) < 0)     /* -PV_EBUSY: someone else's vector */
        return PVRSRV_ERROR_INIT_FAILURE;
    g->regs[PVZ_GPU_REG_IRQ_ENABLE / 4] = PVZ_GPU_IRQ_DONE | PVZ_GPU_IRQ_ERROR;
    return PVRSRV_OK;
}

PVRSRV_ERROR pvz_gpu_fini(struct pvz_gpu *g)
{
    PVRSRV_ERROR e = PVRSRV_OK, e2;
    if (g->regs)
        g->regs[PVZ_GPU_REG_IRQ_ENABLE / 4] = 0;
    pv_irq_unregister(g->irq);
    if (g->mapped) {
        e = PvzClientUnmapDevPhysHeap(0);
        g->mapped = 0;
    }
    if ((e2 = PvzClientDestroyDevPhysHeaps(0)) != PVRSRV_OK && e == PVRSRV_OK)
        e = e2;
    if ((e2 = PvzClientDestroyDevConfig(0)) != PVRSRV_OK && e == PVRSRV_OK)
        e = e2;
    return e;
}

int pvz_gpu_submit(struct pvz_gpu *g, const struct pvz_gpu_cmd *cmd)
{
    uint32_t next = (g->write + 1) & (g->slots - 1);
    if (next == __atomic_load_n(&g->ctl->read_offset, __ATOMIC_ACQUIRE))
        return -PV_EBUSY;
    int slot = (int)g->write;
    struct pvz_gpu_cmd *c = &g->ccb[slot];
    *c = *cmd;
    c->status = 0xFFFFFFFFu;
    g->write = next;
    return slot;
}

void pvz_gpu_kick(struct pvz_gpu *g)
{
    __atomic_store_n(&g->ctl->write_offset, g->write, __ATOMIC_RELEASE);
    g->regs[PVZ_GPU_REG_KICK / 4] = 1;
}

int pvz_gpu_idle(const struct pvz_gpu *g)
{
    return __atomic_load_n(&g->ctl->read_offset, __ATOMIC_ACQUIRE) == g->write;
}

int pvz_gpu_wait_idle(struct pvz_gpu *g, uint64_t timeout_ns)
{
    uint64_t deadline = pv_clock_ns() + timeout_ns;
    while (!pvz_gpu_idle(g)) {
        uint64_t now = pv_clock_ns();
        if (now >= deadline)
            return -PV_ETIMEDOUT;
        /* The firmware interrupts when the queue drains; the slice bounds
         * a wait on an interrupt that raced with the check above. */
        uint64_t left = deadline - now;
        pv_wait(left < 10000000 ? left : 10000000);
    }
    return 0;
}

int pvz_gpu_run(struct pvz_gpu *g, const struct pvz_gpu_cmd *cmd, uint64_t *result)
{
    int slot = pvz_gpu_submit(g, cmd);
    if (slot < 0)
        return slot;
    pvz_gpu_kick(g);
    int r = pvz_gpu_wait_idle(g, 5000000000ull);
    if (r < 0)
        return r;
    if (result)
        *result = g->ccb[slot].result;
    return (int)g->ccb[slot].status;
}

uint32_t pvz_crc32(uint32_t crc, const void *p, size_t n)
{
    return pv_crc32(crc, p, n);
}
