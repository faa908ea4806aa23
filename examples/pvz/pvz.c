/* examples/pvz: a para-virtualised GPU driver, the PowerVR way.
 *
 *   pvz SECS   bring the example GPU up through the PVZ connection, keep it
 *              busy with FILL commands for SECS seconds, then copy and
 *              checksum a buffer on the GPU and check the result on the CPU.
 *
 * The bring-up (paravm/pvz_gpu.h) is the DDK's: CreateDevConfig for the
 * registers and IRQ, CreateDevPhysHeaps, then the firmware heap, allocated
 * here and mapped by the host with MapDevPhysHeap.  The VMM adds our OSID. */
#include <paravm.h>
#include <paravm/pvz_gpu.h>

static struct pvz_gpu gpu;

int main(int argc, char **argv)
{
    long secs = argc > 1 ? strtol(argv[1], 0, 10) : 1;
    PVRSRV_ERROR e = pvz_gpu_init(&gpu, 64);
    if (e != PVRSRV_OK) {
        printf("GPU bring-up failed: PVRSRV_ERROR %d\n", e);
        return 1;
    }
    printf("GPU up: OSID %u, priority %u, registers at %#lx, IRQ vector %#x, "
           "firmware heap %lu KiB at %#lx (origin %s)\n",
           pvz_gpu_reg(&gpu, PVZ_GPU_REG_OSID), pvz_gpu_reg(&gpu, PVZ_GPU_REG_PRIORITY),
           (unsigned long)(uintptr_t)gpu.regs, gpu.irq, (unsigned long)(gpu.fw_size >> 10),
           (unsigned long)(uintptr_t)gpu.fw,
           gpu.origin == PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_GUEST ? "guest" : "host");

    /* Keep the queue full; an interrupt every 16 commands says to refill. */
    uint32_t done0 = pvz_gpu_reg(&gpu, PVZ_GPU_REG_COMPLETED);
    uint64_t end = pv_clock_ns() + (uint64_t)secs * 1000000000ull;
    uint32_t n = 0;
    while (pv_clock_ns() < end) {
        for (;;) {
            struct pvz_gpu_cmd fill = {.op = PVZ_GPU_OP_FILL, .dst = PVZ_GPU_DATA_OFFSET,
                                       .len = 65536, .value = n,
                                       .flags = n % 16 == 15 ? PVZ_GPU_FLAG_IRQ : 0};
            if (pvz_gpu_submit(&gpu, &fill) < 0)
                break;
            n++;
        }
        pvz_gpu_kick(&gpu);
        pv_wait(10000000);
    }
    uint32_t done = pvz_gpu_reg(&gpu, PVZ_GPU_REG_COMPLETED) - done0;
    if (pvz_gpu_wait_idle(&gpu, 10000000000ull) < 0) {
        printf("GPU did not finish\n");
        return 1;
    }

    /* Correctness: the CPU writes a pattern, the GPU copies and checksums it. */
    uint64_t src = PVZ_GPU_DATA_OFFSET, dst = src + 0x40000, len = 0x20000, crc = 0;
    for (uint64_t i = 0; i < len; i++)
        gpu.fw[src + i] = (uint8_t)(i * 31 + 7);
    struct pvz_gpu_cmd copy = {.op = PVZ_GPU_OP_COPY, .dst = dst, .src = src, .len = len};
    struct pvz_gpu_cmd sum = {.op = PVZ_GPU_OP_CHECKSUM, .src = dst, .len = len};
    if (pvz_gpu_run(&gpu, &copy, 0) != PVZ_GPU_ST_DONE
        || pvz_gpu_run(&gpu, &sum, &crc) != PVZ_GPU_ST_DONE) {
        printf("GPU command failed\n");
        return 1;
    }
    int ok = crc == pvz_crc32(0, gpu.fw + src, len);
    printf("%u commands in %ld s while sharing the GPU; GPU checksum %08x %s\n", done, secs,
           (unsigned)crc, ok ? "matches the CPU's" : "DIFFERS from the CPU's");
    e = pvz_gpu_fini(&gpu);
    return ok && e == PVRSRV_OK ? 0 : 1;
}
