/* pvz: the PVZ connection and the example GPU from a guest (tests/kvm/test_pvz.py).
 *   pvz work        bring the GPU up, run fill / copy / checksum commands and check
 *                   them (the CRC against the guest's own), print
 *                   "RESULT osid=O prio=P crc=C", bring it down; exit 0
 *   pvz hostile     every bad call a guest can make (bad function IDs, devID 1,
 *                   heaps outside RAM / unaligned / in the low MiB / wrong size,
 *                   double map, a message outside RAM, bad commands); prints
 *                   "name=value" for each; exit 0 if all got the defined error
 *   pvz crash       bring the GPU up, queue work, print "UP", then fault
 *   pvz spin SECS   bring the GPU up, then run checksums for SECS seconds, checking
 *                   each; print "RESULT n=N"; exit 0
 *   pvz loop SECS LEN  bring the GPU up, print "UP", then keep its queue full of
 *                   fills of LEN bytes for SECS seconds (bench/pvz); print
 *                   "RESULT cmds=N ns=T" (N: commands the firmware completed)
 *   pvz calls N     N DestroyDevConfig round trips, then N bare hypercalls
 *                   (bench/pvz): "RESULT pvz_ns=A nop_ns=B"
 *   pvz noconn      without a PVZ connection: every call NOT_IMPLEMENTED; exit 0 */
#include <paravm.h>
#include <paravm/pvz_gpu.h>

#define CHECK(cond) do { if (!(cond)) { printf("FAILED line %d: %s\n", __LINE__, #cond); \
                                         return 10; } } while (0)

static struct pvz_gpu gpu;

static int up(void)
{
    PVRSRV_ERROR e = pvz_gpu_init(&gpu, 64);
    if (e != PVRSRV_OK) {
        printf("FAILED init: %d\n", e);
        return 10;
    }
    return 0;
}

static int work(void)
{
    if (up())
        return 10;
    uint32_t status = pvz_gpu_reg(&gpu, PVZ_GPU_REG_STATUS);
    CHECK(status == (PVZ_GPU_STATUS_FW_RUNNING | PVZ_GPU_STATUS_OS_ONLINE
                     | PVZ_GPU_STATUS_HEAP_READY));
    CHECK(pvz_gpu_reg(&gpu, PVZ_GPU_REG_HEAP_SIZE) == gpu.fw_size);
    uint64_t a = PVZ_GPU_DATA_OFFSET, b = a + 0x10000, n = 0x8000;
    struct pvz_gpu_cmd fill = {.op = PVZ_GPU_OP_FILL, .dst = a, .len = n, .value = 0x11223344};
    CHECK(pvz_gpu_run(&gpu, &fill, 0) == PVZ_GPU_ST_DONE);
    CHECK(gpu.fw[a] == 0x44 && gpu.fw[a + 3] == 0x11 && gpu.fw[a + n - 1] == 0x11);
    CHECK(gpu.fw[a + n] == 0);
    for (uint64_t i = 0; i < 256; i++)        /* the CPU writes, the GPU reads */
        gpu.fw[a + i] = (uint8_t)(i * 7);
    struct pvz_gpu_cmd copy = {.op = PVZ_GPU_OP_COPY, .dst = b, .src = a, .len = n};
    CHECK(pvz_gpu_run(&gpu, &copy, 0) == PVZ_GPU_ST_DONE);
    CHECK(memcmp(gpu.fw + a, gpu.fw + b, n) == 0);
    uint64_t crc = 0;
    struct pvz_gpu_cmd sum = {.op = PVZ_GPU_OP_CHECKSUM, .src = b, .len = n};
    CHECK(pvz_gpu_run(&gpu, &sum, &crc) == PVZ_GPU_ST_DONE);
    CHECK(crc == pvz_crc32(0, gpu.fw + b, n));
    /* A batch: many commands, one kick, one interrupt at the end. */
    for (int i = 0; i < 40; i++) {
        struct pvz_gpu_cmd f = {.op = PVZ_GPU_OP_FILL, .dst = a + 64 * (uint64_t)i, .len = 64,
                                .value = (uint32_t)i};
        CHECK(pvz_gpu_submit(&gpu, &f) >= 0);
    }
    pvz_gpu_kick(&gpu);
    CHECK(pvz_gpu_wait_idle(&gpu, 5000000000ull) == 0);
    CHECK(gpu.fw[a + 64 * 39] == 39);
    /* The queue drained, so the done interrupt was raised: it may still be
     * on its way (idle was seen in memory first). */
    for (int i = 0; i < 100 && !gpu.irqs; i++)
        pv_wait(10000000);
    CHECK(gpu.irqs > 0 && (gpu.irq_bits & PVZ_GPU_IRQ_DONE));
    if (gpu.gpu) {          /* a host GPU carve-out: copy into it and read it back */
        struct pvz_gpu_cmd g = {.op = PVZ_GPU_OP_COPY, .flags = PVZ_GPU_FLAG_DST_GPU,
                                .dst = 0, .src = b, .len = 4096};
        CHECK(pvz_gpu_run(&gpu, &g, 0) == PVZ_GPU_ST_DONE);
        CHECK(memcmp(gpu.gpu, gpu.fw + b, 4096) == 0);
    }
    printf("RESULT osid=%u prio=%u crc=%08x origin=%d fw=%lx gpu=%lx completed=%u\n",
           pvz_gpu_reg(&gpu, PVZ_GPU_REG_OSID), pvz_gpu_reg(&gpu, PVZ_GPU_REG_PRIORITY),
           (unsigned)crc, gpu.origin, (unsigned long)(uintptr_t)gpu.fw,
           (unsigned long)(uintptr_t)gpu.gpu, pvz_gpu_reg(&gpu, PVZ_GPU_REG_COMPLETED));
    CHECK(pvz_gpu_fini(&gpu) == PVRSRV_OK);
    return 0;
}

static long raw(uint32_t func, uint32_t dev, uint64_t size, uint64_t paddr)
{
    struct pvz_msg m = {.func_id = func, .dev_id = dev, .fw_size = size, .fw_paddr = paddr};
    long r = pvz_call(&m);
    if (r >= 0 && (long)m.status != r)
        return -1000;       /* the message and rax disagree */
    return r;
}

static int hostile(void)
{
    const struct pv_boot_info *bi = pv_boot_info();
    uint64_t size = pvz_fw_heap_size(), ram = bi->ram_size;
    int bad = 0;
#define EXPECT(name, got, want) do { long g_ = (got); printf("%s=%ld\n", name, g_); \
                                     if (g_ != (long)(want)) bad++; } while (0)
    uint32_t ids[] = {PVZ_BRIDGE_DEFAULT, PVZ_BRIDGE_DEBUGDUMPCONFIG, PVZ_BRIDGE_LAST, 9, 100,
                      0xFFFFFFFFu};
    for (unsigned i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "func_%u", ids[i]);
        EXPECT(name, raw(ids[i], 0, size, 0), PVRSRV_ERROR_INVALID_PARAMS);
    }
    EXPECT("devid_config", raw(PVZ_BRIDGE_CREATEDEVICECONFIG, 1, 0, 0), PVRSRV_ERROR_INVALID_PARAMS);
    EXPECT("devid_heaps", raw(PVZ_BRIDGE_CREATEDEVICEPHYSHEAPS, 1, 0, 0), PVRSRV_ERROR_INVALID_PARAMS);
    uint8_t *heap = pv_page_alloc(size / 4096);
    uint64_t h = (uint64_t)(uintptr_t)heap;
    EXPECT("map_outside_ram", raw(PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, size, ram), PVRSRV_ERROR_INVALID_PARAMS);
    EXPECT("map_past_ram_end", raw(PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, size, ram - size + 4096),
           PVRSRV_ERROR_INVALID_PARAMS);
    EXPECT("map_wraps", raw(PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, size, 0xFFFFFFFFFFFFF000ull),
           PVRSRV_ERROR_INVALID_PARAMS);
    EXPECT("map_ivc_area", raw(PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, size, 0xC0000000ull),
           PVRSRV_ERROR_INVALID_PARAMS);
    EXPECT("map_unaligned", raw(PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, size, h + 8), PVRSRV_ERROR_INVALID_PARAMS);
    EXPECT("map_low_mib", raw(PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, size, 0x1000), PVRSRV_ERROR_INVALID_PARAMS);
    EXPECT("map_small", raw(PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, size - 4096, h), PVRSRV_ERROR_INVALID_PARAMS);
    EXPECT("map_big", raw(PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, size + 4096, h), PVRSRV_ERROR_INVALID_PARAMS);
    EXPECT("map_devid", raw(PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 1, size, h), PVRSRV_ERROR_INVALID_PARAMS);
    EXPECT("map", raw(PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, size, h), PVRSRV_OK);
    EXPECT("map_again", raw(PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, size, h),
           PVRSRV_ERROR_DEVICEMEM_ALREADY_MAPPED);
    EXPECT("msg_outside_ram", pv_hypercall2(PV_HC_PVZ_CALL, ram + 0x100000, 0), -PV_EFAULT);
    EXPECT("msg_wraps", pv_hypercall2(PV_HC_PVZ_CALL, 0xFFFFFFFFFFFFFFF0ull, 0), -PV_EFAULT);
    uint32_t domid = bi->domid;     /* the boot info page is in the reserved first MiB */
    EXPECT("msg_in_low_mib", pv_hypercall2(PV_HC_PVZ_CALL, PV_BOOT_INFO, 0), -PV_EFAULT);
    EXPECT("boot_info_intact", bi->domid, domid);
    /* Our own queue with garbage in it: only our error bit, and still alive. */
    volatile uint32_t *regs = (volatile uint32_t *)(uintptr_t)0xFC000000ull;
    struct pvz_gpu_ccb_ctl *ctl = (struct pvz_gpu_ccb_ctl *)heap;
    ctl->wrap_mask = 6;             /* not a power of 2 minus 1 */
    ctl->cmd_size = 64;
    ctl->write_offset = 1;
    regs[PVZ_GPU_REG_IRQ_ENABLE / 4] = 0;
    regs[PVZ_GPU_REG_KICK / 4] = 1;
    uint64_t t0 = pv_clock_ns();
    while (!(regs[PVZ_GPU_REG_IRQ_STATUS / 4] & PVZ_GPU_IRQ_ERROR) && pv_clock_ns() - t0 < 2000000000ull)
        ;
    EXPECT("bad_queue_error_bit", regs[PVZ_GPU_REG_IRQ_STATUS / 4] & PVZ_GPU_IRQ_ERROR, PVZ_GPU_IRQ_ERROR);
    regs[PVZ_GPU_REG_IRQ_STATUS / 4] = 3;
    /* A good queue with bad commands: each gets its own status. */
    struct pvz_gpu_cmd *ccb = (struct pvz_gpu_cmd *)(heap + PVZ_GPU_CCB_OFFSET);
    ctl->wrap_mask = 7;
    ctl->write_offset = 0;
    regs[PVZ_GPU_REG_KICK / 4] = 1;         /* empty: the firmware learns the new mask */
    struct pvz_gpu_cmd cmds[] = {
        {.op = PVZ_GPU_OP_FILL, .dst = size - 8, .len = 16},            /* past the end */
        {.op = PVZ_GPU_OP_COPY, .dst = 0x20000, .src = ~0ull, .len = 2},  /* wraps */
        {.op = 77},                                                     /* unknown op */
        {.op = PVZ_GPU_OP_NOP, .flags = 0x80},                           /* unknown flag */
        {.op = PVZ_GPU_OP_FILL, .flags = PVZ_GPU_FLAG_DST_GPU, .len = 4}, /* no GPU heap */
        {.op = PVZ_GPU_OP_CHECKSUM, .src = 0x20000, .len = 0},          /* fine: CRC of nothing */
    };
    unsigned n = sizeof cmds / sizeof cmds[0];
    for (unsigned i = 0; i < n; i++) {
        ccb[i] = cmds[i];
        ccb[i].status = 0xFFFF;
    }
    __atomic_store_n(&ctl->write_offset, n, __ATOMIC_RELEASE);
    regs[PVZ_GPU_REG_KICK / 4] = 1;
    t0 = pv_clock_ns();
    while (ctl->read_offset != n && pv_clock_ns() - t0 < 2000000000ull)
        ;
    EXPECT("cmd_past_end", ccb[0].status, PVZ_GPU_ST_FAULT);
    EXPECT("cmd_wraps", ccb[1].status, PVZ_GPU_ST_FAULT);
    EXPECT("cmd_bad_op", ccb[2].status, PVZ_GPU_ST_BAD);
    EXPECT("cmd_bad_flag", ccb[3].status, PVZ_GPU_ST_BAD);
    EXPECT("cmd_no_gpu_heap", ccb[4].status, PVZ_GPU_ST_FAULT);
    EXPECT("cmd_empty_sum", ccb[5].status, PVZ_GPU_ST_DONE);
    EXPECT("unmap", raw(PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP, 0, 0, 0), PVRSRV_OK);
    EXPECT("unmap_again", raw(PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP, 0, 0, 0), PVRSRV_OK);
    EXPECT("heap_ready_after_unmap", regs[PVZ_GPU_REG_STATUS / 4] & PVZ_GPU_STATUS_HEAP_READY, 0);
    EXPECT("map_after_unmap", raw(PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, size, h), PVRSRV_OK);
    EXPECT("unmap_last", raw(PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP, 0, 0, 0), PVRSRV_OK);
    printf("RESULT bad=%d\n", bad);
    return bad ? 10 : 0;
}

static int crash(void)
{
    if (up())
        return 10;
    struct pvz_gpu_cmd f = {.op = PVZ_GPU_OP_FILL, .dst = PVZ_GPU_DATA_OFFSET, .len = 4096,
                            .value = 0xDEADBEEF};
    CHECK(pvz_gpu_run(&gpu, &f, 0) == PVZ_GPU_ST_DONE);
    for (int i = 0; i < 32; i++)
        pvz_gpu_submit(&gpu, &f);
    pvz_gpu_kick(&gpu);
    printf("UP heap=%lx\n", (unsigned long)(uintptr_t)gpu.fw);
    volatile int *volatile null_page = 0;
    null_page[2] = 1;                       /* the null page: a page fault */
    return 0;
}

static int spin(long secs)
{
    if (up())
        return 10;
    printf("UP\n");
    uint64_t end = pv_clock_ns() + (uint64_t)secs * 1000000000ull;
    long n = 0;
    uint64_t a = PVZ_GPU_DATA_OFFSET;
    while (pv_clock_ns() < end) {
        gpu.fw[a] = (uint8_t)n;
        uint64_t crc;
        struct pvz_gpu_cmd sum = {.op = PVZ_GPU_OP_CHECKSUM, .src = a, .len = 1024};
        CHECK(pvz_gpu_run(&gpu, &sum, &crc) == PVZ_GPU_ST_DONE);
        CHECK(crc == pvz_crc32(0, gpu.fw + a, 1024));
        n++;
    }
    printf("RESULT n=%ld\n", n);
    CHECK(pvz_gpu_fini(&gpu) == PVRSRV_OK);
    return 0;
}

static int loop(long secs, long len)
{
    if (up())
        return 10;
    printf("UP\n");
    CHECK(len > 0 && PVZ_GPU_DATA_OFFSET + (uint64_t)len <= gpu.fw_size);
    uint32_t done0 = pvz_gpu_reg(&gpu, PVZ_GPU_REG_COMPLETED);
    uint64_t t0 = pv_clock_ns(), end = t0 + (uint64_t)secs * 1000000000ull;
    long n = 0;
    while (pv_clock_ns() < end) {
        /* Keep the queue full: an interrupt every 16 commands says to refill. */
        int queued = 0;
        for (;;) {
            struct pvz_gpu_cmd f = {.op = PVZ_GPU_OP_FILL, .dst = PVZ_GPU_DATA_OFFSET,
                                    .len = (uint64_t)len, .value = (uint32_t)n,
                                    .flags = n % 16 == 15 ? PVZ_GPU_FLAG_IRQ : 0};
            if (pvz_gpu_submit(&gpu, &f) < 0)
                break;
            n++;
            queued++;
        }
        if (queued)
            pvz_gpu_kick(&gpu);
        pv_wait(10000000);
    }
    uint64_t ns = pv_clock_ns() - t0;
    uint32_t done = pvz_gpu_reg(&gpu, PVZ_GPU_REG_COMPLETED) - done0;
    printf("RESULT cmds=%u ns=%lu\n", done, (unsigned long)ns);
    CHECK(pvz_gpu_wait_idle(&gpu, 60000000000ull) == 0);
    return 0;
}

static int calls(long n)
{
    uint64_t t0 = pv_clock_ns();
    for (long i = 0; i < n; i++)
        CHECK(PvzClientDestroyDevConfig(0) == PVRSRV_OK);
    uint64_t t1 = pv_clock_ns();
    for (long i = 0; i < n; i++)
        pv_hypercall0(PV_HC_NOP);
    uint64_t t2 = pv_clock_ns();
    printf("RESULT pvz_ns=%lu nop_ns=%lu\n", (unsigned long)((t1 - t0) / n),
           (unsigned long)((t2 - t1) / n));
    return 0;
}

static int noconn(void)
{
    uint32_t irq, sz, type;
    uint64_t base, a, b, c, d;
    CHECK(!pvz_present());
    CHECK(PvzClientCreateDevConfig(0, &irq, &sz, &base) == PVRSRV_ERROR_NOT_IMPLEMENTED);
    CHECK(PvzClientCreateDevPhysHeaps(0, &type, &a, &b, &c, &d) == PVRSRV_ERROR_NOT_IMPLEMENTED);
    CHECK(PvzClientMapDevPhysHeap(0, 4096, 0x200000) == PVRSRV_ERROR_NOT_IMPLEMENTED);
    /* The hypercall itself is not there either. */
    CHECK(pv_hypercall2(PV_HC_PVZ_CALL, 0, 0) == -PV_ENOSYS);
    struct pvz_gpu g;
    CHECK(pvz_gpu_init(&g, 8) == PVRSRV_ERROR_INVALID_PVZ_CONFIG);
    printf("RESULT noconn\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    if (!strcmp(argv[1], "work"))
        return work();
    if (!strcmp(argv[1], "hostile"))
        return hostile();
    if (!strcmp(argv[1], "crash"))
        return crash();
    if (!strcmp(argv[1], "spin") && argc > 2)
        return spin(strtol(argv[2], 0, 10));
    if (!strcmp(argv[1], "loop") && argc > 3)
        return loop(strtol(argv[2], 0, 10), strtol(argv[3], 0, 10));
    if (!strcmp(argv[1], "calls") && argc > 2)
        return calls(strtol(argv[2], 0, 10));
    if (!strcmp(argv[1], "noconn"))
        return noconn();
    return 2;
}
