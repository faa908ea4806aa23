/* irqwait: interrupt delivery through the ring-0 stub.
 *   irqwait wake N      register vector 0x40, print "ready", then print
 *                       "tick K" for each of N interrupts; exit 0
 *   irqwait timeout MS  wait MS ms with no interrupt; print the elapsed
 *                       time; exit 0 if the wait lasted at least MS ms
 */
#include <paravm.h>

static volatile int ticks;

static void on_irq(unsigned vector, void *ctx)
{
    (void)ctx;
    ticks++;
    printf("tick %d vector %#x\n", ticks, vector);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    long n = strtol(argv[2], 0, 0);
    if (!strcmp(argv[1], "wake")) {
        if (pv_irq_register(0x40, on_irq, 0) != 0)
            return 3;
        if (pv_irq_register(0x40, on_irq, 0) != -PV_EBUSY)
            return 4;
        if (pv_irq_register(0x10, on_irq, 0) != -PV_EINVAL)
            return 5;
        printf("ready\n");
        while (ticks < n)
            pv_wait(0);
        return 0;
    }
    if (!strcmp(argv[1], "timeout")) {
        uint64_t t0 = pv_clock_ns();
        int seen = pv_wait((uint64_t)n * 1000000);
        uint64_t dt = pv_clock_ns() - t0;
        printf("waited %lu us, %d vectors\n", (unsigned long)(dt / 1000), seen);
        return (seen == 0 && dt >= (uint64_t)n * 1000000) ? 0 : 1;
    }
    return 2;
}
