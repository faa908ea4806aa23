/* sdk: checks of the guest SDK's interrupt, wait and SMP calls.
 *   sdk irqctx    a refused registration leaves the first handler's ctx alone
 *   sdk smp       vCPU 0 takes no jobs; a busy vCPU refuses a second job
 *   sdk wait      pv_wait(t) never returns 0 before t has passed
 * Prints "ok <mode>" and exits 0, or prints the failure and exits 1. */
#include <paravm.h>

static const char *seen;

static void handler(unsigned vector, void *ctx)
{
    (void)vector;
    seen = ctx;
}

static volatile int release;

static void job(void *arg)
{
    (void)arg;
    long r = pv_smp_start(0, job, 0);
    printf("from vCPU 1: pv_smp_start(0) = %ld\n", r);
    while (!__atomic_load_n(&release, __ATOMIC_ACQUIRE))
        pv_wait(1000000);
}

static void other(void *arg) { (void)arg; }

#define FAIL(...) do { printf(__VA_ARGS__); return 1; } while (0)

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    if (!strcmp(argv[1], "irqctx")) {
        if (pv_irq_register(0x40, handler, "first") != 0)
            FAIL("first registration refused\n");
        if (pv_irq_register(0x40, handler, "second") != -PV_EBUSY)
            FAIL("second registration not refused\n");
        pv_send_ipi(pv_cpu(), 0x40);
        pv_wait(0);
        if (!seen || strcmp(seen, "first"))
            FAIL("handler saw ctx %s\n", seen ? seen : "(none)");
    } else if (!strcmp(argv[1], "smp")) {
        if (pv_smp_start(0, job, 0) != -PV_EINVAL)
            FAIL("vCPU 0 accepted a job\n");
        if (pv_smp_start(1, job, 0) != 0)
            FAIL("vCPU 1 refused a job\n");
        if (pv_smp_start(1, other, 0) != -PV_EBUSY)
            FAIL("busy vCPU 1 accepted a second job\n");
        __atomic_store_n(&release, 1, __ATOMIC_RELEASE);
        pv_smp_join(1);
        if (pv_smp_start(1, other, 0) != 0)
            FAIL("idle vCPU 1 refused a job\n");
        pv_smp_join(1);
    } else if (!strcmp(argv[1], "wait")) {
        for (int i = 0; i < 20; i++) {
            uint64_t t0 = pv_clock_ns();
            int n = pv_wait(5000000);
            uint64_t dt = pv_clock_ns() - t0;
            if (n != 0 || dt < 5000000)
                FAIL("pv_wait(5 ms) returned %d after %lu ns\n", n, (unsigned long)dt);
        }
    } else {
        return 2;
    }
    printf("ok %s\n", argv[1]);
    return 0;
}
