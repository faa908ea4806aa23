/* Ring-3 runtime: start-up, hypercall wrappers, interrupt dispatch, SMP. */
#include "paravm.h"

extern char pv_vectors[];

__attribute__((section(".paravm_image"), used))
const struct pv_image_header pv_image_header = {
    .magic = PV_IMAGE_MAGIC,
    .version = PV_IMAGE_VERSION,
    .vectors = (uint64_t)pv_vectors,
};

static char pv_argbuf[2048];
static char *pv_argv[258];

const struct pv_boot_info *pv_boot_info(void)
{
    return (const struct pv_boot_info *)PV_BOOT_INFO;
}

unsigned pv_nr_cpus(void) { return pv_boot_info()->nr_vcpus; }

static long (*pv_console_writer)(const void *buf, size_t len);

void pv_set_console_writer(long (*fn)(const void *buf, size_t len))
{
    __atomic_store_n(&pv_console_writer, fn, __ATOMIC_RELEASE);
}

long pv_console_write(const void *buf, size_t len)
{
    long (*fn)(const void *, size_t) = __atomic_load_n(&pv_console_writer, __ATOMIC_ACQUIRE);
    if (fn)
        return fn(buf, len);
    return pv_hypercall2(PV_HC_CONSOLE_WRITE, (uint64_t)buf, len);
}

_Noreturn void pv_exit(int status)
{
    pv_hypercall2(PV_HC_EXIT, (uint64_t)(int64_t)status, 0);
    for (;;)
        pv_block(0);
}

_Noreturn void pv_vcpu_off(void)
{
    pv_hypercall0(PV_HC_VCPU_OFF);
    for (;;)
        pv_block(0);
}

uint64_t pv_clock_ns(void) { return (uint64_t)pv_hypercall0(PV_HC_CLOCK_NS); }

long pv_boot_mark(unsigned id) { return pv_hypercall2(PV_HC_BOOT_MARK, id, 0); }

long pv_hypercall_block(struct pv_hcall_block *blk)
{
    __asm__ volatile("outl %%eax, %[port]"
                     : : [port] "i"(PV_HC_BLOCK_PORT), "a"((uint32_t)(uint64_t)blk)
                     : "memory");
    return blk->ret;
}

/* --- interrupts ----------------------------------------------------------- */
static struct {
    pv_irq_handler fn;
    void *ctx;
} pv_handlers[256];

static volatile struct pv_vcpu_page *vcpu_page(void)
{
    uint64_t self;
    __asm__ volatile("movq %%gs:%c1, %0" : "=r"(self) : "i"(PV_VP_SELF));
    return (volatile struct pv_vcpu_page *)self;
}

/* A slot being claimed: its ctx is not written yet; dispatch skips it. */
#define PV_HANDLER_CLAIMING ((pv_irq_handler)1)

int pv_irq_register(unsigned vector, pv_irq_handler fn, void *ctx)
{
    if (vector < PV_VEC_USER_FIRST || vector > PV_VEC_USER_LAST || !fn)
        return -PV_EINVAL;
    pv_irq_handler expected = 0;
    if (!__atomic_compare_exchange_n(&pv_handlers[vector].fn, &expected, PV_HANDLER_CLAIMING,
                                     0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return -PV_EBUSY;
    pv_handlers[vector].ctx = ctx;
    __atomic_store_n(&pv_handlers[vector].fn, fn, __ATOMIC_RELEASE);
    return 0;
}

int pv_irq_unregister(unsigned vector)
{
    if (vector < PV_VEC_USER_FIRST || vector > PV_VEC_USER_LAST)
        return -PV_EINVAL;
    __atomic_store_n(&pv_handlers[vector].fn, 0, __ATOMIC_RELEASE);
    return 0;
}

int pv_irq_dispatch(void)
{
    volatile struct pv_vcpu_page *vp = vcpu_page();
    int ran = 0;
    for (unsigned w = 0; w < 4; w++) {
        uint64_t bits = __atomic_exchange_n(&vp->pending[w], 0, __ATOMIC_ACQ_REL);
        while (bits) {
            unsigned vector = w * 64 + (unsigned)__builtin_ctzll(bits);
            bits &= bits - 1;
            if (vector == PV_VEC_TIMER)
                continue;
            ran++;
            pv_irq_handler fn = __atomic_load_n(&pv_handlers[vector].fn, __ATOMIC_ACQUIRE);
            if (fn && fn != PV_HANDLER_CLAIMING)
                fn(vector, pv_handlers[vector].ctx);
        }
    }
    return ran;
}

/* ns since (start_tsc, start_ns), without overflow for any run time. */
static uint64_t pv_elapsed_ns(uint64_t khz, uint64_t start_tsc, uint64_t start_ns)
{
    if (!khz)
        return pv_clock_ns() - start_ns;
    uint64_t c = pv_rdtsc() - start_tsc;
    return (c / khz) * 1000000 + (c % khz) * 1000000 / khz;
}

int pv_wait(uint64_t timeout_ns)
{
    int ran;
    if (timeout_ns == 0) {
        /* No timeout: a stale timer wake-up does not count as a return. */
        do {
            pv_block(0);
        } while (!(ran = pv_irq_dispatch()));
        return ran;
    }
    uint64_t khz = pv_boot_info()->tsc_khz;
    uint64_t start_tsc = pv_rdtsc(), start_ns = khz ? 0 : pv_clock_ns();
    for (;;) {
        uint64_t elapsed = pv_elapsed_ns(khz, start_tsc, start_ns);
        if (elapsed >= timeout_ns)
            return pv_irq_dispatch();
        uint64_t left = timeout_ns - elapsed;
        pv_block(left > 0xFFFFFFFFu ? 0xFFFFFFFFu : (uint32_t)left);
        if ((ran = pv_irq_dispatch()))
            return ran;
    }
}

int pv_send_ipi(unsigned cpu, unsigned vector)
{
    if (cpu >= pv_nr_cpus() || vector < 32 || vector > 0xEF)
        return -PV_EINVAL;
    long op = PV_STUB_IPI;
    __asm__ volatile("int3" : "+a"(op) : "D"((uint64_t)cpu), "S"((uint64_t)vector) : "memory");
    return (int)op;
}

/* --- SMP -------------------------------------------------------------------- */
static struct {
    void (*fn)(void *);
    void *arg;
    int busy;
} pv_slots[PV_MAX_VCPUS];

int pv_smp_start(unsigned cpu, void (*fn)(void *), void *arg)
{
    /* vCPU 0 runs main(), never jobs. */
    if (cpu == 0 || cpu >= pv_nr_cpus() || cpu == pv_cpu() || !fn)
        return -PV_EINVAL;
    int idle = 0;
    if (!__atomic_compare_exchange_n(&pv_slots[cpu].busy, &idle, 1, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        return -PV_EBUSY;
    pv_slots[cpu].arg = arg;
    __atomic_store_n(&pv_slots[cpu].fn, fn, __ATOMIC_RELEASE);
    return pv_send_ipi(cpu, PV_VEC_SMP);
}

int pv_smp_join(unsigned cpu)
{
    if (cpu == 0 || cpu >= pv_nr_cpus() || cpu == pv_cpu())
        return -PV_EINVAL;
    while (__atomic_load_n(&pv_slots[cpu].busy, __ATOMIC_ACQUIRE))
        pv_wait(1000000);
    return 0;
}

static _Noreturn void pv_ap_loop(unsigned cpu)
{
    for (;;) {
        void (*fn)(void *) = __atomic_exchange_n(&pv_slots[cpu].fn, 0, __ATOMIC_ACQ_REL);
        if (fn) {
            fn(pv_slots[cpu].arg);
            __atomic_store_n(&pv_slots[cpu].busy, 0, __ATOMIC_RELEASE);
            pv_send_ipi(0, PV_VEC_SMP);
            continue;
        }
        pv_wait(0);
    }
}

_Noreturn void pv_start_c(unsigned cpu, const struct pv_boot_info *bi)
{
    if (cpu != 0)
        pv_ap_loop(cpu);
    /* argv[0] is the domain's name, then the manifest's args. */
    static char name[sizeof(bi->name)];
    memcpy(name, bi->name, sizeof(name) - 1);
    pv_argv[0] = name;
    int argc = 1;
    size_t len = bi->args_len < sizeof(pv_argbuf) ? bi->args_len : sizeof(pv_argbuf);
    memcpy(pv_argbuf, bi->args, len);
    for (size_t off = 0; off < len && argc < 257; argc++) {
        pv_argv[argc] = &pv_argbuf[off];
        off += strlen(&pv_argbuf[off]) + 1;
    }
    pv_argv[argc] = 0;
    pv_boot_mark(PV_BOOT_MARK_MAIN);
    pv_exit(main(argc, pv_argv));
}
