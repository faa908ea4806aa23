/*
 * The guest of bench/mpt.
 *   guest.elf mmio N ADDR   N 4-byte writes to the trap area at ADDR, then N
 *                           bare hypercalls (HC_NOP):
 *                           "RESULT mmio_ns=A nop_ns=B" (per operation)
 *   guest.elf track N       allocate two pages, print "page 0x<gpa>", wait
 *                           until the host writes 1 to the second page's first
 *                           word (after tracking the first), then N 8-byte
 *                           stores to the tracked page and N to the untracked
 *                           one, then N bare hypercalls:
 *                           "RESULT track_ns=A plain_ns=B nop_ns=C"; then waits
 *                           for a 2 there (the host untracks meanwhile)
 *   guest.elf mgpu N W      N commands to the example mediated GPU in
 *                           doorbells of 64: NOPs, then WxW-pixel FILLs:
 *                           "RESULT nop_ns=A fill_ns=B" (per command)
 */
#include <paravm.h>
#include <paravm/mgpu.h>

static int mmio(long n, uint64_t addr)
{
    volatile uint32_t *reg = (volatile uint32_t *)(uintptr_t)addr;
    uint64_t t0 = pv_clock_ns();
    for (long i = 0; i < n; i++)
        *reg = (uint32_t)i;
    uint64_t t1 = pv_clock_ns();
    for (long i = 0; i < n; i++)
        pv_hypercall0(PV_HC_NOP);
    uint64_t t2 = pv_clock_ns();
    printf("RESULT mmio_ns=%lu nop_ns=%lu\n", (unsigned long)((t1 - t0) / n),
           (unsigned long)((t2 - t1) / n));
    return 0;
}

static int track(long n)
{
    volatile uint64_t *page = pv_page_alloc(2);
    if (!page)
        return 1;
    volatile uint64_t *plain = page + 512;
    printf("page 0x%lx\n", (unsigned long)(uintptr_t)page);
    while (plain[0] != 1)
        pv_wait(1000000);
    uint64_t t0 = pv_clock_ns();
    for (long i = 0; i < n; i++)
        page[i & 511] = (uint64_t)i;
    uint64_t t1 = pv_clock_ns();
    for (long i = 0; i < n; i++)
        plain[1 + (i & 255)] = (uint64_t)i;
    uint64_t t2 = pv_clock_ns();
    for (long i = 0; i < n; i++)
        pv_hypercall0(PV_HC_NOP);
    uint64_t t3 = pv_clock_ns();
    printf("RESULT track_ns=%lu plain_ns=%lu nop_ns=%lu\n", (unsigned long)((t1 - t0) / n),
           (unsigned long)((t2 - t1) / n), (unsigned long)((t3 - t2) / n));
    while (plain[0] != 2)       /* the host times disable_page_track meanwhile */
        pv_wait(1000000);
    return 0;
}

static struct mgpu g;

static uint64_t batches(long n, int op, uint32_t surface, uint16_t w)
{
    uint64_t t0 = pv_clock_ns();
    for (long done = 0; done < n;) {
        int k = 0;
        for (; k < 64 && done < n; k++, done++) {
            int r = op == MGPU_OP_NOP ? mgpu_submit(&g, &(struct mgpu_cmd){.op = MGPU_OP_NOP})
                    : mgpu_fill(&g, surface, 1024 * 4, 0, 0, w, w, (uint32_t)done);
            if (r < 0)
                return 0;
        }
        if (mgpu_kick(&g))
            return 0;
    }
    return pv_clock_ns() - t0;
}

static int gpu(long n, int w)
{
    if (mgpu_init(&g, 4, 64) < 0 || w < 1 || w > 1024)
        return 1;
    /* A 1024 x 1024 surface (4 MiB): all 1024 graphics pages of the GTT. */
    uint8_t *surf = pv_page_alloc(1024);
    if (!surf)
        return 1;
    mgpu_gtt_map(&g, 0, (uint64_t)(uintptr_t)surf, 1024);
    mgpu_gtt_load(&g);
    uint64_t nop = batches(n, MGPU_OP_NOP, 0, 0);
    uint64_t fill = batches(n, MGPU_OP_FILL, 0, (uint16_t)w);
    if (!nop || !fill)
        return 1;
    printf("RESULT nop_ns=%lu fill_ns=%lu\n", (unsigned long)(nop / n),
           (unsigned long)(fill / n));
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 3 && !strcmp(argv[1], "mmio"))
        return mmio(strtol(argv[2], 0, 10), (uint64_t)strtol(argv[3], 0, 0));
    if (argc > 2 && !strcmp(argv[1], "track"))
        return track(strtol(argv[2], 0, 10));
    if (argc > 3 && !strcmp(argv[1], "mgpu"))
        return gpu(strtol(argv[2], 0, 10), (int)strtol(argv[3], 0, 10));
    return 2;
}
