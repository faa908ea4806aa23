/*
 * bench/ivc guest: one end of the IVC benchmarks (run.py writes the manifests).
 *
 *   guest tput tx|rx ROUNDS SPIN BATCH_DIV N64 N1K N4K   guest -> guest throughput
 *   guest pingpong ping|echo ROUNDS N                    guest <-> guest round trips
 *   guest host                                           host <-> guest, driven by the host
 *
 * Queues between the guests "a" and "b" (ids fixed by run.py's manifest):
 *   1      control: raw memory (never the protocol) holding one barrier word per
 *          side: mine at my tx channel's base, the peer's at my rx channel's
 *   2      ping-pong: 64-byte frames
 *   10+k   IVC queue of frame size k (k = 0, 1, 2: 64 B, 1 KiB, 4 KiB)
 *   20+k   the same geometry used as a plain ring (the limit): the writer's tx
 *          channel holds a u64 write count at +0, a u64 read count at +64 and
 *          the frames from +128; no state, no doorbell, no checks, spinning only
 * and, for `host`, queue 3 between the guest and the host (1 KiB frames).
 *
 * tput: after an untimed warm-up round (every page touched), ROUNDS rounds; in
 * each, per frame size, four variants (their order rotates by round):
 *   plain     the ring above
 *   ivc       tegra_hv_ivc_write / tegra_hv_ivc_read
 *   ivc-zc    write_get_next_frame + memcpy + write_advance,
 *             read_get_next_frame + memcpy + read_advance
 *   plain-mb  the ring plus, per frame and side, a full fence and a load of the
 *             peer's counter after the counter store (what the IVC notification
 *             decision costs)
 * Each moves the same bytes: the writer copies frame_size bytes from a private
 * buffer into the frame (its sequence number in the first 8 bytes), the reader
 * copies the frame out to a private buffer and checks the sequence number.
 * N64/N1K/N4K are the frames per phase.  An IVC end that finds the queue full
 * (empty) waits in wait_for(): spin up to SPIN times until nframes/BATCH_DIV
 * frames are free (ready), sleep only while none is.  Each phase prints
 *
 *   MARK b ID     (run.py snapshots the domain's VMM exit count on these lines)
 *   (barrier, then the timed loop: rdtsc, tsc_khz from the boot info)
 *   MARK e ID
 *   RESULT part=tput id=ID role=rx fs=64 variant=ivc n=... ns=... waits=... spins=...
 *          bells=... timeouts=... late=... bad=...
 *
 * Phase 0 is empty (the exits of the marks themselves).  bells counts the
 * doorbells this end rang: the queue's notify callback (public in struct
 * tegra_ivc) is wrapped by a counter.  waits = sleeps, late = sleeps that
 * timed out although what they waited for was there (a lost doorbell).
 *
 * pingpong: per round, the in-kernel doorbell (PV_IVC_DOORBELL_PORT_IO) and the
 * VMM-relayed one (PV_IVC_DOORBELL_HYPERCALL, both ends), in rotating order;
 * N round trips of one 64-byte frame; each end sleeps until the doorbell (no
 * spinning).
 *
 * host: serves control frames from the host (see host() below).
 */
#include <paravm.h>
#include <paravm/tegra_hv.h>
#include "occupancy.h"

#define Q_CTL      1
#define Q_PING     2
#define Q_HOST     3
#define Q_IVC      10
#define Q_RAW      20
#define NSIZES     3
#define NVARIANTS  4

static const char *const variant_names[NVARIANTS] = {"plain", "ivc", "ivc-zc", "plain-mb"};

static uint64_t tsc_khz;
static unsigned long bells;
static void (*ring_peer)(struct tegra_ivc *, void *);

static void counting_notify(struct tegra_ivc *ivc, void *data)
{
    bells++;
    ring_peer(ivc, data);
}

static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

static inline uint64_t ld64(const volatile uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline void st64(volatile uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

static uint64_t tsc_ns(uint64_t cycles)
{
    return cycles / tsc_khz * 1000000 + cycles % tsc_khz * 1000000 / tsc_khz;
}

static struct tegra_hv_ivc_cookie *reserve(int id)
{
    struct tegra_hv_ivc_cookie *c = tegra_hv_ivc_reserve(0, id, 0);
    if (PV_IS_ERR(c)) {
        printf("reserve %d: %ld\n", id, PV_PTR_ERR(c));
        pv_exit(3);
    }
    struct tegra_ivc *ivc = tegra_hv_ivc_convert_cookie(c);
    ring_peer = ivc->notify;
    ivc->notify = counting_notify;
    return c;
}

/* --- the barrier on the control queue --------------------------------------- */
static volatile uint64_t *bar_mine, *bar_peer;
static uint64_t bar_seq;

static void barrier(void)
{
    uint64_t seq = ++bar_seq;
    st64(bar_mine, seq);
    while (ld64(bar_peer) < seq)
        cpu_relax();
}

static void setup_barrier(void)
{
    struct tegra_ivc *ivc = tegra_hv_ivc_convert_cookie(reserve(Q_CTL));
    bar_mine = (volatile uint64_t *)ivc->tx_channel;
    bar_peer = (volatile uint64_t *)ivc->rx_channel;
}

/* Reset every queue, then answer notifications until all are established. */
static void establish(struct tegra_hv_ivc_cookie **c, int n)
{
    for (int i = 0; i < n; i++)
        tegra_hv_ivc_channel_reset(c[i]);
    for (int tries = 0; tries < 20000; tries++) {
        int ok = 1;
        for (int i = 0; i < n; i++)
            ok &= tegra_hv_ivc_channel_notified(c[i]) == 0;
        if (ok)
            return;
        pv_wait(1000000);
    }
    printf("no handshake\n");
    pv_exit(4);
}

/* --- waiting for room / frames ---------------------------------------------- */
struct counts {
    unsigned long waits, spins, timeouts, late, bad;
};

/* Every sleep has a timeout: on this machine a doorbell is sometimes lost
 * (the guest stays halted although the peer rang; a second ring wakes it),
 * see run.py.  `late` counts the sleeps that timed out although what they
 * waited for had arrived: doorbells lost and rescued by the timeout. */
#define WAIT_NS 2000000

static unsigned spin_limit;     /* pause iterations before sleeping */
static unsigned batch_div;      /* resume at nframes / batch_div free (tx) or ready (rx) */

/* What the protocol would see: frames ready in my rx channel, frames free in
 * my tx channel (over-full counts as empty / full, as in ivc.c). */

/*
 * Called when a queue op found the queue full (tx) or empty (rx), err being
 * its error.  Waits with hysteresis: until nframes / batch_div frames are
 * free (ready), so that the peer, which rang us (or will) at its edge
 * (full -> not full, empty -> non-empty), gets a run of frames without
 * reaching that edge again; doorbells are then one per batch, not one per
 * frame.  Spins (pause) up to spin_limit times; past that it returns if
 * anything is there, and sleeps (pv_wait) only while nothing is: then the
 * peer's next op is exactly at its edge, so its doorbell is sure to come
 * (the WAIT_NS timeout only rescues a doorbell this machine lost).
 */
static void wait_for(struct tegra_hv_ivc_cookie *c, int tx, int err, struct counts *k)
{
    if (err != -PV_ENOMEM) {
        printf("ivc error %d\n", err);
        pv_exit(5);
    }
    const struct tegra_ivc *ivc = tegra_hv_ivc_convert_cookie(c);
    uint32_t want = batch_div ? ivc->nframes / batch_div : 1;
    want = want ? want : 1;
    unsigned spin = 0;
    for (;;) {
        uint32_t n = tx ? tx_free(ivc) : rx_ready(ivc);
        if (n >= want || (n && spin >= spin_limit))
            return;
        if (spin < spin_limit) {
            spin++;
            k->spins++;
            cpu_relax();
            continue;
        }
        k->waits++;
        if (pv_wait(WAIT_NS) == 0) {
            k->timeouts++;
            k->late += (tx ? tx_free(ivc) : rx_ready(ivc)) != 0;
        }
        tegra_hv_ivc_channel_notified(c);
        spin = 0;
    }
}

/* --- throughput ------------------------------------------------------------- */
static uint8_t srcbuf[4096] __attribute__((aligned(64)));
static uint8_t dstbuf[4096] __attribute__((aligned(64)));

struct ring {
    volatile uint64_t *w, *r;       /* the writer's / reader's total */
    uint8_t *frames;
    unsigned nframes, fs;
    uint64_t count;                 /* my total so far (free-running, never reset) */
};

static uint64_t sink_word;

static void plain_tx(struct ring *g, long n, int mb, struct counts *k)
{
    (void)k;
    uint64_t i = g->count, end = i + (uint64_t)n;
    unsigned pos = (unsigned)(i % g->nframes);
    for (; i < end; i++) {
        while (i - ld64(g->r) >= g->nframes)
            cpu_relax();
        uint8_t *f = g->frames + (size_t)pos * g->fs;
        memcpy(f, srcbuf, g->fs);
        *(uint64_t *)f = i;
        st64(g->w, i + 1);
        if (mb) {
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            sink_word += ld64(g->r);
        }
        pos = pos + 1 == g->nframes ? 0 : pos + 1;
    }
    g->count = end;
}

static void plain_rx(struct ring *g, long n, int mb, struct counts *k)
{
    uint64_t i = g->count, end = i + (uint64_t)n;
    unsigned pos = (unsigned)(i % g->nframes);
    for (; i < end; i++) {
        while (ld64(g->w) == i)
            cpu_relax();
        memcpy(dstbuf, g->frames + (size_t)pos * g->fs, g->fs);
        k->bad += *(uint64_t *)dstbuf != i;
        st64(g->r, i + 1);
        if (mb) {
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            sink_word += ld64(g->w);
        }
        pos = pos + 1 == g->nframes ? 0 : pos + 1;
    }
    g->count = end;
}

static void ivc_tx(struct tegra_hv_ivc_cookie *c, uint64_t *count, long n, int zc,
                   struct counts *k)
{
    int fs = c->frame_size;
    uint64_t i = *count, end = i + (uint64_t)n;
    for (; i < end; i++) {
        *(uint64_t *)srcbuf = i;
        if (zc) {
            void *f;
            while (PV_IS_ERR(f = tegra_hv_ivc_write_get_next_frame(c)))
                wait_for(c, 1, (int)PV_PTR_ERR(f), k);
            memcpy(f, srcbuf, (size_t)fs);
            tegra_hv_ivc_write_advance(c);
        } else {
            int r;
            while ((r = tegra_hv_ivc_write(c, srcbuf, fs)) != fs)
                wait_for(c, 1, r, k);
        }
    }
    *count = end;
}

static void ivc_rx(struct tegra_hv_ivc_cookie *c, uint64_t *count, long n, int zc,
                   struct counts *k)
{
    int fs = c->frame_size;
    uint64_t i = *count, end = i + (uint64_t)n;
    for (; i < end; i++) {
        if (zc) {
            void *f;
            while (PV_IS_ERR(f = tegra_hv_ivc_read_get_next_frame(c)))
                wait_for(c, 0, (int)PV_PTR_ERR(f), k);
            memcpy(dstbuf, f, (size_t)fs);
            tegra_hv_ivc_read_advance(c);
        } else {
            int r;
            while ((r = tegra_hv_ivc_read(c, dstbuf, fs)) != fs)
                wait_for(c, 0, r, k);
        }
        k->bad += *(uint64_t *)dstbuf != i;
    }
    *count = end;
}

static int phase_id;

static void report(const char *part, const char *role, int fs, const char *variant, long n,
                   uint64_t cycles, const struct counts *k, unsigned long nbells)
{
    printf("RESULT part=%s id=%d role=%s fs=%d variant=%s n=%ld ns=%lu waits=%lu spins=%lu "
           "bells=%lu timeouts=%lu late=%lu bad=%lu\n", part, phase_id, role, fs, variant, n,
           (unsigned long)tsc_ns(cycles), k->waits, k->spins, nbells, k->timeouts, k->late,
           k->bad);
}

static int tput(int tx, long rounds, char **nargs)
{
    struct tegra_hv_ivc_cookie *ivc[NSIZES];
    struct ring raw[NSIZES];
    uint64_t ivc_count[NSIZES] = {0};
    long nphase[NSIZES];
    for (int s = 0; s < NSIZES; s++) {
        ivc[s] = reserve(Q_IVC + s);
        struct tegra_ivc *r = tegra_hv_ivc_convert_cookie(reserve(Q_RAW + s));
        /* the tx end's tx channel is the rx end's rx channel */
        uint8_t *base = (uint8_t *)(tx ? r->tx_channel : r->rx_channel);
        raw[s] = (struct ring){(volatile uint64_t *)base, (volatile uint64_t *)(base + 64),
                               base + 128, r->nframes, r->frame_size, 0};
        nphase[s] = strtol(nargs[s], 0, 0);
        if (nphase[s] <= 0) {
            printf("bad frame count %s\n", nargs[s]);
            return 2;
        }
    }
    establish(ivc, NSIZES);
    memset(srcbuf, 0x5a, sizeof(srcbuf));

    /* calibration: exits of an empty phase (the marks themselves) */
    phase_id = 0;
    printf("MARK b %d\n", phase_id);
    barrier();
    printf("MARK e %d\n", phase_id);
    struct counts zero = {0};
    report("tput", tx ? "tx" : "rx", 0, "none", 0, 0, &zero, 0);

    for (long round = -1; round < rounds; round++) {     /* round -1: warm-up, untimed */
        for (int s = 0; s < NSIZES; s++) {
            for (int j = 0; j < NVARIANTS; j++) {
                int v = (int)((j + (round < 0 ? 0 : round)) % NVARIANTS);
                long n = round < 0 ? 2L * raw[s].nframes : nphase[s];
                struct counts k = {0};
                phase_id++;
                printf("MARK b %d\n", phase_id);
                barrier();
                unsigned long b0 = bells;
                uint64_t t0 = pv_rdtsc();
                if (v == 0 || v == 3)
                    (tx ? plain_tx : plain_rx)(&raw[s], n, v == 3, &k);
                else
                    (tx ? ivc_tx : ivc_rx)(ivc[s], &ivc_count[s], n, v == 2, &k);
                uint64_t t1 = pv_rdtsc();
                unsigned long nb = bells - b0;
                printf("MARK e %d\n", phase_id);
                if (round >= 0)
                    report("tput", tx ? "tx" : "rx", (int)raw[s].fs, variant_names[v], n,
                           t1 - t0, &k, nb);
                if (k.bad) {
                    printf("%lu frames out of sequence\n", k.bad);
                    return 6;
                }
            }
        }
    }
    return 0;
}

/* --- ping-pong ---------------------------------------------------------------- */
static void wait_doorbell(struct tegra_hv_ivc_cookie *c, int tx, struct counts *k)
{
    k->waits++;
    if (pv_wait(WAIT_NS) == 0) {
        k->timeouts++;
        k->late += tx ? tegra_hv_ivc_can_write(c) : tegra_hv_ivc_can_read(c);
    }
    tegra_hv_ivc_channel_notified(c);
}

static int pingpong(int ping, long rounds, long n)
{
    struct tegra_hv_ivc_cookie *c = reserve(Q_PING);
    establish(&c, 1);
    int fs = c->frame_size;
    static uint8_t buf[4096];
    phase_id = 0;
    printf("MARK b %d\n", phase_id);
    barrier();
    printf("MARK e %d\n", phase_id);
    for (long round = -1; round < rounds; round++) {
        for (int j = 0; j < 2; j++) {
            int mode = (int)((j + (round < 0 ? 0 : round)) % 2);
            pv_ivc_set_doorbell(c, mode ? PV_IVC_DOORBELL_HYPERCALL : PV_IVC_DOORBELL_PORT_IO);
            long m = round < 0 ? (n < 50 ? n : 50) : n;
            struct counts k = {0};
            phase_id++;
            printf("MARK b %d\n", phase_id);
            barrier();
            unsigned long b0 = bells;
            uint64_t t0 = pv_rdtsc();
            for (long i = 0; i < m; i++) {
                int r;
                if (ping) {
                    *(uint64_t *)buf = (uint64_t)i;
                    while ((r = tegra_hv_ivc_write(c, buf, fs)) != fs)
                        wait_doorbell(c, 1, &k);
                    while ((r = tegra_hv_ivc_read(c, buf, fs)) != fs)
                        wait_doorbell(c, 0, &k);
                    k.bad += *(uint64_t *)buf != (uint64_t)i + 1;
                } else {
                    while ((r = tegra_hv_ivc_read(c, buf, fs)) != fs)
                        wait_doorbell(c, 0, &k);
                    ++*(uint64_t *)buf;
                    while ((r = tegra_hv_ivc_write(c, buf, fs)) != fs)
                        wait_doorbell(c, 1, &k);
                }
            }
            uint64_t t1 = pv_rdtsc();
            unsigned long nb = bells - b0;
            printf("MARK e %d\n", phase_id);
            if (round >= 0)
                report("pingpong", ping ? "ping" : "echo", fs, mode ? "hypercall" : "kernel", m,
                       t1 - t0, &k, nb);
            if (k.bad)
                return 6;
        }
    }
    return 0;
}

/* --- host <-> guest --------------------------------------------------------- */
#define HOST_MAGIC 0x4256434956ull      /* "IVCVB" */
enum { CMD_END, CMD_H2G, CMD_G2H };

/* Runs the host's commands: each is one control frame {magic, cmd, n, spin,
 * batch_div} (u64s), read while sleeping.  CMD_H2G: answer one ready frame,
 * read n frames (checking their sequence numbers), send one ack frame
 * carrying the count read so far.  CMD_G2H: write n frames.  Per command the
 * empty/full waits use its spin and batch_div.  Prints nothing until
 * CMD_END, so that no console exit falls into the host's timed runs (run.py
 * counts the exits there); then one RESULT line per (direction, spin). */
static int host(void)
{
    struct tegra_hv_ivc_cookie *c = reserve(Q_HOST);
    establish(&c, 1);
    int fs = c->frame_size;
    uint64_t rx = 0, tx = 0;
    struct counts k[2][2] = {0};           /* [h2g/g2h][sleeps at once / spins] */
    unsigned long nb[2][2] = {{0}}, frames[2][2] = {{0}};
    for (;;) {
        uint64_t ctl[5];
        struct counts idle = {0};
        int r;
        spin_limit = 0;
        while ((r = tegra_hv_ivc_read(c, ctl, sizeof(ctl))) != (int)sizeof(ctl))
            wait_for(c, 0, r, &idle);
        if (ctl[0] != HOST_MAGIC) {
            printf("bad control frame %lx\n", (unsigned long)ctl[0]);
            return 7;
        }
        if (ctl[1] == CMD_END)
            break;
        long n = (long)ctl[2];
        spin_limit = (unsigned)ctl[3];
        batch_div = (unsigned)ctl[4];
        int d = ctl[1] == CMD_G2H, m = spin_limit != 0;
        k[d][m].late += idle.late;     /* a lost doorbell delays the run's start */
        unsigned long b0 = bells;
        if (d == 0) {
            *(uint64_t *)srcbuf = rx;
            while ((r = tegra_hv_ivc_write(c, srcbuf, fs)) != fs)     /* ready */
                wait_for(c, 1, r, &k[d][m]);
            ivc_rx(c, &rx, n, 0, &k[d][m]);
            if (k[d][m].bad) {
                printf("%lu frames out of sequence\n", k[d][m].bad);
                return 6;
            }
            *(uint64_t *)srcbuf = rx;
            while ((r = tegra_hv_ivc_write(c, srcbuf, fs)) != fs)     /* ack */
                wait_for(c, 1, r, &k[d][m]);
        } else {
            ivc_tx(c, &tx, n, 0, &k[d][m]);
        }
        nb[d][m] += bells - b0;
        frames[d][m] += (unsigned long)n;
    }
    for (int d = 0; d < 2; d++)
        for (int m = 0; m < 2; m++)
            if (frames[d][m])
                report("host", d ? "tx" : "rx", fs, m ? (d ? "g2h-spin" : "h2g-spin")
                       : (d ? "g2h-sleep" : "h2g-sleep"), (long)frames[d][m], 0, &k[d][m],
                       nb[d][m]);
    return 0;
}

int main(int argc, char **argv)
{
    tsc_khz = pv_boot_info()->tsc_khz;
    if (!tsc_khz) {
        printf("no tsc_khz in the boot info\n");
        return 2;
    }
    if (argc >= 6 + NSIZES && !strcmp(argv[1], "tput")) {
        spin_limit = (unsigned)strtol(argv[4], 0, 0);
        batch_div = (unsigned)strtol(argv[5], 0, 0);
        setup_barrier();
        return tput(!strcmp(argv[2], "tx"), strtol(argv[3], 0, 0), &argv[6]);
    }
    if (argc >= 5 && !strcmp(argv[1], "pingpong")) {
        setup_barrier();
        return pingpong(!strcmp(argv[2], "ping"), strtol(argv[3], 0, 0), strtol(argv[4], 0, 0));
    }
    if (argc >= 2 && !strcmp(argv[1], "host"))
        return host();
    printf("usage: guest tput tx|rx ROUNDS SPIN BATCH_DIV N64 N1K N4K | "
           "pingpong ping|echo ROUNDS N | host\n");
    return 2;
}
