/*
 * Xen event channels, 2-level ABI (see paravm/evtchn.h, docs/evtchn.md and
 * specs/grant-mpt.md §D1.2).
 *
 * The shared_info page is written by the VMM and by every vCPU of this
 * domain at once, so each read-modify-write of it is one locked instruction
 * (gcc turns the single-bit __atomic_fetch_and/or below into lock btr/bts),
 * and each word is read with a fresh atomic load.  The order of the upcall's
 * steps is the one Xen's guests use and the VMM's raise rule expects:
 * clear evtchn_upcall_pending, then take evtchn_pending_sel, then the
 * pending words; loop while the VMM set evtchn_upcall_pending again
 * meanwhile.  A port's pending bit is cleared before its handler runs, so
 * an event during the handler raises a new upcall instead of being lost.
 *
 * The raise rule only fires on 0->1 transitions: an event that arrives while
 * its port is masked sets the pending bit and nothing else.  So unmasking
 * re-checks the pending bit (and binding a handler does too), delivering a
 * pending event by doing the rule's remaining steps itself and sending the
 * upcall vector to the port's vCPU as an IPI.
 */
#include "paravm.h"
#include "paravm/evtchn.h"

#define NR_PORTS EVTCHN_2L_NR_CHANNELS
#define WORD(p) ((p) / 64)
#define BIT(p) ((p) % 64)

static struct {
    evtchn_handler fn;
    void *ctx;
} handlers[NR_PORTS];
/* The notify vCPU of each port, as far as our own calls set it (new ports
 * notify vCPU 0; bind_ipi and bind_vcpu change it). */
static uint8_t port_vcpu[NR_PORTS];
/* 0: not yet, 1: being set up, 2: ready, < 0: -errno */
static int init_state;

static inline int bit_test_and_clear(uint64_t *word, unsigned bit)
{
    uint64_t m = 1ull << bit;
    return (__atomic_fetch_and(word, ~m, __ATOMIC_SEQ_CST) & m) != 0;
}

static inline int bit_test_and_set(uint64_t *word, unsigned bit)
{
    uint64_t m = 1ull << bit;
    return (__atomic_fetch_or(word, m, __ATOMIC_SEQ_CST) & m) != 0;
}

static inline int bit_test(uint64_t *word, unsigned bit)
{
    return (int)((__atomic_load_n(word, __ATOMIC_SEQ_CST) >> bit) & 1);
}

struct shared_info *evtchn_shared_info(void)
{
    return (struct shared_info *)(uintptr_t)pv_boot_info()->xen_shared_info;
}

int evtchn_do_upcall(void)
{
    struct shared_info *s = evtchn_shared_info();
    unsigned cpu = pv_cpu();
    if (!s || cpu >= XEN_LEGACY_MAX_VCPUS)
        return 0;
    struct vcpu_info *vi = &s->vcpu_info[cpu];
    int ran = 0;
    do {
        __atomic_store_n(&vi->evtchn_upcall_pending, 0, __ATOMIC_SEQ_CST);
        uint64_t sel = __atomic_exchange_n(&vi->evtchn_pending_sel, 0, __ATOMIC_SEQ_CST);
        while (sel) {
            unsigned w = (unsigned)__builtin_ctzll(sel);
            sel &= sel - 1;
            uint64_t bits = __atomic_load_n(&s->evtchn_pending[w], __ATOMIC_SEQ_CST) &
                            ~__atomic_load_n(&s->evtchn_mask[w], __ATOMIC_SEQ_CST);
            while (bits) {
                unsigned b = (unsigned)__builtin_ctzll(bits);
                bits &= bits - 1;
                evtchn_port_t port = w * 64 + b;
                evtchn_handler fn = __atomic_load_n(&handlers[port].fn, __ATOMIC_ACQUIRE);
                if (!fn)
                    continue;   /* left pending for evtchn_test_and_clear / evtchn_wait */
                if (!bit_test_and_clear(&s->evtchn_pending[w], b))
                    continue;   /* another vCPU took it */
                fn(port, handlers[port].ctx);
                ran++;
            }
        }
    } while (__atomic_load_n(&vi->evtchn_upcall_pending, __ATOMIC_SEQ_CST));
    return ran;
}

static void upcall(unsigned vector, void *ctx)
{
    (void)vector;
    (void)ctx;
    evtchn_do_upcall();
}

/* The rest of the raise rule for a pending, unmasked port, done here: its
 * selector bit, then evtchn_upcall_pending, then the vector to its vCPU. */
static void kick(struct shared_info *s, evtchn_port_t port)
{
    unsigned v = port_vcpu[port];
    if (v >= pv_nr_cpus() || v >= XEN_LEGACY_MAX_VCPUS)
        v = 0;
    struct vcpu_info *vi = &s->vcpu_info[v];
    if (bit_test_and_set(&vi->evtchn_pending_sel, WORD(port)))
        return;
    if (__atomic_exchange_n(&vi->evtchn_upcall_pending, 1, __ATOMIC_SEQ_CST))
        return;
    pv_send_ipi(v, pv_boot_info()->evtchn_vector);
}

int evtchn_init(void)
{
    int st = __atomic_load_n(&init_state, __ATOMIC_ACQUIRE);
    for (;;) {
        if (st == 2)
            return 0;
        if (st < 0)
            return st;
        if (st == 1) {          /* another vCPU is setting up */
            pv_wait(100000);
            st = __atomic_load_n(&init_state, __ATOMIC_ACQUIRE);
            continue;
        }
        if (__atomic_compare_exchange_n(&init_state, &st, 1, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            break;
    }
    const struct pv_boot_info *bi = pv_boot_info();
    struct shared_info *s = evtchn_shared_info();
    int err = 0;
    if (!s)
        err = -PV_ENODEV;
    else
        err = pv_irq_register(bi->evtchn_vector, upcall, 0);
    __atomic_store_n(&init_state, err ? err : 2, __ATOMIC_RELEASE);
    if (err)
        return err;
    /* An upcall raised before the handler existed was dropped by the
     * dispatcher, leaving evtchn_upcall_pending set: the VMM would never
     * raise that vCPU's vector again.  Raise it once more ourselves. */
    unsigned n = pv_nr_cpus();
    for (unsigned v = 0; v < n && v < XEN_LEGACY_MAX_VCPUS; v++)
        if (__atomic_load_n(&s->vcpu_info[v].evtchn_upcall_pending, __ATOMIC_SEQ_CST))
            pv_send_ipi(v, bi->evtchn_vector);
    return 0;
}

static long op(int cmd, void *arg)
{
    if (!evtchn_shared_info())
        return -PV_ENODEV;
    return HYPERVISOR_event_channel_op(cmd, arg);
}

int evtchn_alloc_unbound(domid_t remote_domid)
{
    struct evtchn_alloc_unbound a = { .dom = DOMID_SELF, .remote_dom = remote_domid };
    long r = op(EVTCHNOP_alloc_unbound, &a);
    if (r < 0)
        return (int)r;
    if (a.port < NR_PORTS)
        port_vcpu[a.port] = 0;
    return (int)a.port;
}

int evtchn_bind_interdomain(domid_t remote_domid, evtchn_port_t remote_port)
{
    struct evtchn_bind_interdomain b = { .remote_dom = remote_domid,
                                         .remote_port = remote_port };
    long r = op(EVTCHNOP_bind_interdomain, &b);
    if (r < 0)
        return (int)r;
    if (b.local_port < NR_PORTS)
        port_vcpu[b.local_port] = 0;
    return (int)b.local_port;
}

int evtchn_bind_ipi(unsigned vcpu)
{
    struct evtchn_bind_ipi b = { .vcpu = vcpu };
    long r = op(EVTCHNOP_bind_ipi, &b);
    if (r < 0)
        return (int)r;
    if (b.port < NR_PORTS)
        port_vcpu[b.port] = (uint8_t)vcpu;
    return (int)b.port;
}

int evtchn_bind_vcpu(evtchn_port_t port, unsigned vcpu)
{
    struct evtchn_bind_vcpu b = { .port = port, .vcpu = vcpu };
    long r = op(EVTCHNOP_bind_vcpu, &b);
    if (r == 0 && port < NR_PORTS)
        port_vcpu[port] = (uint8_t)vcpu;
    return (int)r;
}

int evtchn_send(evtchn_port_t port)
{
    struct evtchn_send a = { .port = port };
    return (int)op(EVTCHNOP_send, &a);
}

int evtchn_close(evtchn_port_t port)
{
    if (port < NR_PORTS)
        __atomic_store_n(&handlers[port].fn, 0, __ATOMIC_RELEASE);
    struct evtchn_close a = { .port = port };
    long r = op(EVTCHNOP_close, &a);
    if (r == 0 && port < NR_PORTS)
        port_vcpu[port] = 0;
    return (int)r;
}

int evtchn_status(evtchn_port_t port, struct evtchn_status *out)
{
    memset(out, 0, sizeof(*out));
    out->dom = DOMID_SELF;
    out->port = port;
    return (int)op(EVTCHNOP_status, out);
}

int evtchn_mask(evtchn_port_t port)
{
    struct shared_info *s = evtchn_shared_info();
    if (!s)
        return -PV_ENODEV;
    if (port >= NR_PORTS)
        return -PV_EINVAL;
    bit_test_and_set(&s->evtchn_mask[WORD(port)], BIT(port));
    return 0;
}

int evtchn_unmask(evtchn_port_t port)
{
    struct shared_info *s = evtchn_shared_info();
    if (!s)
        return -PV_ENODEV;
    if (port >= NR_PORTS)
        return -PV_EINVAL;
    uint64_t *pending = &s->evtchn_pending[WORD(port)];
    if (bit_test(pending, BIT(port))) {
        /* Pending now: the VMM clears the mask and runs the raise rule for
         * the port's vCPU (as Linux does on HVM). */
        struct evtchn_unmask a = { .port = port };
        return (int)op(EVTCHNOP_unmask, &a);
    }
    bit_test_and_clear(&s->evtchn_mask[WORD(port)], BIT(port));
    /* An event between the test above and the clear found the port masked:
     * it only set the pending bit.  Deliver it. */
    if (bit_test(pending, BIT(port)))
        kick(s, port);
    return 0;
}

int evtchn_bind_handler(evtchn_port_t port, evtchn_handler fn, void *ctx)
{
    int err = evtchn_init();
    if (err)
        return err;
    if (port == 0 || port >= NR_PORTS)
        return -PV_EINVAL;
    __atomic_store_n(&handlers[port].fn, 0, __ATOMIC_RELEASE);
    handlers[port].ctx = ctx;
    __atomic_store_n(&handlers[port].fn, fn, __ATOMIC_RELEASE);
    struct shared_info *s = evtchn_shared_info();
    /* Pending from before (a fresh interdomain port always is): the upcall
     * that saw it had no handler to call and left it. */
    if (fn && bit_test(&s->evtchn_pending[WORD(port)], BIT(port)) &&
        !bit_test(&s->evtchn_mask[WORD(port)], BIT(port)))
        kick(s, port);
    return 0;
}

int evtchn_test_and_clear(evtchn_port_t port)
{
    struct shared_info *s = evtchn_shared_info();
    if (!s)
        return -PV_ENODEV;
    if (port >= NR_PORTS)
        return -PV_EINVAL;
    return bit_test_and_clear(&s->evtchn_pending[WORD(port)], BIT(port));
}

/* ns since start_tsc (or start_ns without a known TSC rate). */
static uint64_t elapsed_ns(uint64_t khz, uint64_t start_tsc, uint64_t start_ns)
{
    if (!khz)
        return pv_clock_ns() - start_ns;
    uint64_t c = pv_rdtsc() - start_tsc;
    return (c / khz) * 1000000 + (c % khz) * 1000000 / khz;
}

int evtchn_wait(evtchn_port_t port, uint64_t timeout_ns)
{
    int err = evtchn_init();
    if (err)
        return err;
    if (port >= NR_PORTS)
        return -PV_EINVAL;
    uint64_t khz = pv_boot_info()->tsc_khz;
    uint64_t start_tsc = pv_rdtsc(), start_ns = (timeout_ns && !khz) ? pv_clock_ns() : 0;
    for (;;) {
        if (evtchn_test_and_clear(port) > 0)
            return 1;
        uint64_t left = 0;
        if (timeout_ns) {
            uint64_t e = elapsed_ns(khz, start_tsc, start_ns);
            if (e >= timeout_ns)
                return 0;
            left = timeout_ns - e;
        }
        pv_wait(left);
    }
}
