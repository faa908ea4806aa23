/*
 * exit_roundtrip guest: time N no-op hypercalls from ring 3.
 *
 *   args: N MODE     MODE = "regs"  (register form: pv_hypercall0(PV_HC_NOP))
 *                         | "block" (argument block: pv_hypercall_block, nr = PV_HC_NOP)
 *
 * Warm-up of WARMUP calls, then N calls timed two ways: pv_clock_ns() (the
 * VMM's CLOCK_MONOTONIC, as the C baseline uses) and rdtsc (converted with the
 * boot info's tsc_khz).  Prints one line for bench/exit_roundtrip/run.py:
 *
 *   RESULT mode=regs n=20000 ns_per_call=29123.4 tsc_ns_per_call=29120.9 cycles_per_call=61234
 *
 * The two pv_clock_ns() calls bracketing the loop add about one round trip
 * to N of them (< 0.01% at the default N).
 */
#include <paravm.h>

#define WARMUP 1000

static struct pv_hcall_block blk;

/* Returns the number of calls that did not return 0. */
static unsigned long run_calls(int block, unsigned long n)
{
    unsigned long bad = 0;
    if (block) {
        for (unsigned long i = 0; i < n; i++) {
            blk.nr = PV_HC_NOP;
            bad += pv_hypercall_block(&blk) != 0;
        }
    } else {
        for (unsigned long i = 0; i < n; i++)
            bad += pv_hypercall0(PV_HC_NOP) != 0;
    }
    return bad;
}

/* "x.y" of total/n with one decimal, no floating point. */
static void fixed1(char *buf, size_t size, uint64_t total, uint64_t n)
{
    uint64_t tenths = (total * 10 + n / 2) / n;
    snprintf(buf, size, "%lu.%lu", (unsigned long)(tenths / 10), (unsigned long)(tenths % 10));
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        printf("usage: guest N regs|block\n");
        return 2;
    }
    long n = strtol(argv[1], 0, 0);
    int block;
    if (strcmp(argv[2], "regs") == 0)
        block = 0;
    else if (strcmp(argv[2], "block") == 0)
        block = 1;
    else {
        printf("unknown mode %s (regs|block)\n", argv[2]);
        return 2;
    }
    if (n <= 0) {
        printf("N must be > 0, got %s\n", argv[1]);
        return 2;
    }

    unsigned long bad = run_calls(block, WARMUP);
    uint64_t t0 = pv_clock_ns();
    uint64_t c0 = pv_rdtsc();
    bad += run_calls(block, (unsigned long)n);
    uint64_t c1 = pv_rdtsc();
    uint64_t t1 = pv_clock_ns();
    if (bad) {
        printf("%lu hypercalls returned an error\n", bad);
        return 1;
    }

    uint64_t cycles = c1 - c0, khz = pv_boot_info()->tsc_khz;
    char ns[32], tsc_ns[32] = "0";
    fixed1(ns, sizeof(ns), t1 - t0, (uint64_t)n);
    if (khz) {
        uint64_t tsc_total = cycles / khz * 1000000 + cycles % khz * 1000000 / khz;
        fixed1(tsc_ns, sizeof(tsc_ns), tsc_total, (uint64_t)n);
    }
    printf("RESULT mode=%s n=%ld ns_per_call=%s tsc_ns_per_call=%s cycles_per_call=%lu\n",
           argv[2], n, ns, tsc_ns, (unsigned long)(cycles / (uint64_t)n));
    return 0;
}
