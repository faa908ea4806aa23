/* evtchn: Xen event channels from a guest (tests/kvm/test_evtchn.py).
 *   evtchn ping PEER N   alloc a port for PEER (the peer binds it), wait for its
 *                        hello, then N rounds: send, wait for the reply; exit 0
 *   evtchn pong PEER N   bind PEER's port 1 (retrying until it exists), check it
 *                        starts pending, send hello, then echo N events; exit 0
 *   evtchn host N HP     alloc a port for the host and print it; bind the host's
 *                        unbound port HP; N rounds: wait for the host's event on
 *                        mine, answer on the other channel; exit 0
 *   evtchn api           single-guest checks (loopback, masks, IPIs, errors);
 *                        prints the results; exit 0 if all hold
 *   evtchn evil          scribble over shared_info, 4000 event_channel_op calls
 *                        with random commands and arguments, then check that a
 *                        loopback channel still works; exit 0
 * Every wait is an interrupt (pv_wait halts the vCPU), never a spin. */
#include <paravm.h>
#include <paravm/evtchn.h>

#define CHECK(cond) do { if (!(cond)) { printf("FAILED line %d: %s\n", __LINE__, #cond); \
                                         return 10; } } while (0)

static volatile unsigned events[EVTCHN_2L_NR_CHANNELS];
static volatile unsigned last_cpu;

static void count(evtchn_port_t port, void *ctx)
{
    (void)ctx;
    events[port]++;
    last_cpu = pv_cpu();
}

/* Wait (halted between interrupts) until events[port] >= want; -1 after
 * ~5 s of timeouts (wake-ups by other interrupts do not count). */
static int wait_events(evtchn_port_t port, unsigned want)
{
    int timeouts = 0;
    while (events[port] < want) {
        if (pv_wait(50000000) == 0 && ++timeouts > 100)
            return -1;
    }
    return 0;
}

static int ping(int peer, long n)
{
    CHECK(evtchn_init() == 0);
    int p = evtchn_alloc_unbound((domid_t)peer);
    CHECK(p == 1);                      /* the lowest free port: the peer binds 1 */
    CHECK(evtchn_bind_handler(p, count, 0) == 0);
    CHECK(wait_events(p, 1) == 0);      /* hello */
    for (long i = 0; i < n; i++) {
        CHECK(evtchn_send(p) == 0);
        CHECK(wait_events(p, (unsigned)i + 2) == 0);
    }
    printf("RESULT ping n=%ld events=%u\n", n, events[p]);
    return 0;
}

static int pong(int peer, long n)
{
    CHECK(evtchn_init() == 0);
    int p = -1;
    for (int i = 0; i < 5000 && p < 0; i++) {
        p = evtchn_bind_interdomain((domid_t)peer, 1);
        if (p == -PV_EINVAL)
            pv_wait(1000000);
    }
    CHECK(p > 0);
    CHECK(evtchn_test_and_clear(p) == 1);   /* a new binding starts pending */
    CHECK(evtchn_bind_handler(p, count, 0) == 0);
    CHECK(evtchn_send(p) == 0);             /* hello */
    for (long i = 0; i < n; i++) {
        CHECK(wait_events(p, (unsigned)i + 1) == 0);
        CHECK(evtchn_send(p) == 0);
    }
    printf("pong echoed %ld events on port %d\n", n, p);
    return 0;
}

static int host(long n, int host_port)
{
    CHECK(evtchn_init() == 0);
    int mine = evtchn_alloc_unbound(0);
    CHECK(mine > 0);
    CHECK(evtchn_bind_handler(mine, count, 0) == 0);
    int back = evtchn_bind_interdomain(0, (evtchn_port_t)host_port);
    CHECK(back > 0);
    printf("ready port=%d back=%d\n", mine, back);
    for (long i = 0; i < n; i++) {
        CHECK(wait_events(mine, (unsigned)i + 1) == 0);
        CHECK(evtchn_send(back) == 0);
    }
    printf("host rounds %ld\n", n);
    return 0;
}

static int api(void)
{
    struct evtchn_alloc_unbound au = { .dom = 0, .remote_dom = 0 };   /* the host's table */
    long eperm = HYPERVISOR_event_channel_op(EVTCHNOP_alloc_unbound, &au);
    au.dom = 99;
    long esrch = HYPERVISOR_event_channel_op(EVTCHNOP_alloc_unbound, &au);
    long enosys = HYPERVISOR_event_channel_op(EVTCHNOP_init_control, &au);
    long efault = HYPERVISOR_event_channel_op(EVTCHNOP_send, (void *)0x1000);
    printf("errors: eperm=%ld esrch=%ld enosys=%ld efault=%ld\n", eperm, esrch, enosys, efault);
    CHECK(evtchn_init() == 0 && evtchn_init() == 0);

    /* a loopback channel: p <-> q in this domain */
    int p = evtchn_alloc_unbound(DOMID_SELF);
    int q = evtchn_bind_interdomain(DOMID_SELF, (evtchn_port_t)p);
    int guess = evtchn_bind_interdomain(DOMID_SELF, (evtchn_port_t)q + 1);
    printf("loopback p=%d q=%d self-bind=%d\n", p, q, guess);
    CHECK(p == 1 && q == 2 && guess == -PV_EINVAL);
    CHECK(evtchn_test_and_clear(q) == 1);          /* starts pending */
    CHECK(evtchn_test_and_clear(q) == 0);
    CHECK(evtchn_bind_handler(q, count, 0) == 0);
    CHECK(evtchn_send(p) == 0);
    CHECK(wait_events(q, 1) == 0);                 /* an interrupt ran the handler */
    CHECK(evtchn_test_and_clear(q) == 0);          /* the upcall cleared the bit */

    /* masked: the event waits in the pending bit; unmask delivers it */
    CHECK(evtchn_mask(q) == 0);
    CHECK(evtchn_send(p) == 0);
    pv_wait(20000000);
    CHECK(events[q] == 1);
    struct shared_info *s = evtchn_shared_info();
    CHECK(s->evtchn_pending[0] & (1ull << q));
    CHECK(evtchn_unmask(q) == 0);
    CHECK(wait_events(q, 2) == 0);
    printf("masked then unmasked: delivered\n");

    /* pending before a handler is bound: binding it delivers the event */
    CHECK(evtchn_bind_handler(q, 0, 0) == 0);
    CHECK(evtchn_send(p) == 0);
    pv_wait(20000000);                             /* the upcall leaves it pending */
    CHECK(events[q] == 2 && (s->evtchn_pending[0] & (1ull << q)));
    CHECK(evtchn_bind_handler(q, count, 0) == 0);
    CHECK(wait_events(q, 3) == 0);
    printf("late handler: delivered\n");

    /* status */
    struct evtchn_status st;
    CHECK(evtchn_status((evtchn_port_t)q, &st) == 0);
    printf("status q: %u dom=%u port=%u vcpu=%u\n", st.status, st.u.interdomain.dom,
           st.u.interdomain.port, st.vcpu);

    /* IPI to myself */
    int ipi = evtchn_bind_ipi(0);
    CHECK(ipi == 3);
    CHECK(evtchn_bind_handler(ipi, count, 0) == 0);
    CHECK(evtchn_send(ipi) == 0);
    CHECK(wait_events(ipi, 1) == 0);
    printf("ipi delivered, bind_ipi(vcpu 9)=%d bind_vcpu(q, 9)=%d\n", evtchn_bind_ipi(9),
           evtchn_bind_vcpu(q, 9));

    /* another vCPU */
    if (pv_nr_cpus() > 1) {
        CHECK(evtchn_bind_vcpu(q, 1) == 0);
        CHECK(evtchn_send(p) == 0);
        CHECK(wait_events(q, 4) == 0);
        printf("vcpu 1 handled it: %u\n", last_cpu);
        CHECK(evtchn_bind_vcpu(q, 0) == 0);
    }

    /* polling a port without a handler */
    int r = evtchn_alloc_unbound(DOMID_SELF);
    int w = evtchn_bind_interdomain(DOMID_SELF, (evtchn_port_t)r);
    CHECK(evtchn_test_and_clear(w) == 1);
    int timed_out = evtchn_wait(w, 10000000);
    CHECK(evtchn_send(r) == 0);
    int got = evtchn_wait(w, 1000000000);
    printf("wait: timeout=%d got=%d\n", timed_out, got);
    CHECK(timed_out == 0 && got == 1);

    /* closing one end: the other is UNBOUND again, sends are dropped */
    CHECK(evtchn_close(q) == 0);
    CHECK(evtchn_status((evtchn_port_t)p, &st) == 0);
    printf("after close: p status=%u dom=%u send(p)=%d send(q)=%d close(q)=%d\n", st.status,
           st.u.unbound.dom, evtchn_send(p), evtchn_send(q), evtchn_close(q));
    printf("api ok\n");
    return 0;
}

static int evil(void)
{
    struct shared_info *s = evtchn_shared_info();
    CHECK(s && evtchn_init() == 0);
    memset(s, 0xFF, 4096);
    static uint8_t garbage[64];
    uint64_t x = 0x9E3779B97F4A7C15ull;
    long ok = 0, err = 0;
    for (int i = 0; i < 4000; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        for (int k = 0; k < 64; k++)
            garbage[k] = (uint8_t)(x >> (k % 8 * 8)) ^ (uint8_t)k;
        uint64_t cmd = (i % 4 == 3) ? x : (x >> 59) & 15;
        if (i % 3 == 0) {               /* plausible: small ports, DOMID_SELF */
            static const uint8_t cmds[] = { EVTCHNOP_alloc_unbound, EVTCHNOP_bind_interdomain,
                EVTCHNOP_send, EVTCHNOP_close, EVTCHNOP_unmask, EVTCHNOP_bind_ipi,
                EVTCHNOP_bind_vcpu, EVTCHNOP_status };
            cmd = cmds[(x >> 33) & 7];
            uint32_t small = (uint32_t)(x >> 40) & 7;
            int dom_first = cmd == EVTCHNOP_alloc_unbound || cmd == EVTCHNOP_bind_interdomain ||
                            cmd == EVTCHNOP_status;
            memcpy(garbage, dom_first ? &(uint32_t){DOMID_SELF | (uint32_t)DOMID_SELF << 16}
                                      : &small, 4);
            memcpy(garbage + 4, &small, 4);
        }
        uint64_t arg = (i % 5 == 4) ? x >> 16 : (uint64_t)(uintptr_t)garbage;
        long r = pv_hypercall2(PV_HC_EVENT_CHANNEL_OP, cmd, arg);
        if (r >= 0)
            ok++;
        else
            err++;
    }
    memset(s, 0, 4096);
    /* still a working event channel machine: a loopback channel on fresh ports */
    int p = evtchn_alloc_unbound(DOMID_SELF);
    CHECK(p > 0);
    int q = evtchn_bind_interdomain(DOMID_SELF, (evtchn_port_t)p);
    CHECK(q > 0);
    CHECK(evtchn_bind_handler(q, count, 0) == 0);
    CHECK(wait_events(q, 1) == 0);          /* the bind's own event */
    CHECK(evtchn_send(p) == 0);
    CHECK(wait_events(q, 2) == 0);
    printf("evil ok=%ld err=%ld loopback %d->%d works\n", ok, err, p, q);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 4 && !strcmp(argv[1], "ping"))
        return ping((int)strtol(argv[2], 0, 0), strtol(argv[3], 0, 0));
    if (argc >= 4 && !strcmp(argv[1], "pong"))
        return pong((int)strtol(argv[2], 0, 0), strtol(argv[3], 0, 0));
    if (argc >= 4 && !strcmp(argv[1], "host"))
        return host(strtol(argv[2], 0, 0), (int)strtol(argv[3], 0, 0));
    if (argc >= 2 && !strcmp(argv[1], "api"))
        return api();
    if (argc >= 2 && !strcmp(argv[1], "evil"))
        return evil();
    printf("usage: evtchn ping|pong PEER N | host N HOSTPORT | api | evil\n");
    return 2;
}
