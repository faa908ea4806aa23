/*
 * bench/lguest guest: the guest side of the lguest benchmarks (run.py writes
 * the manifests).
 *
 *   guest blk NOPS CHUNK...                  block sequential read
 *   guest net tx|rx ROUNDS SPIN RETRY_SPIN NOPS N...
 *                                            guest -> guest frames
 *
 * Both modes first time NOPS no-op hypercalls (PV_HC_NOP: the bare exit
 * round trip through the VMM, the floor of any request; in net mode only tx,
 * rx does 0), as a phase:
 *
 *   MARK b ID        (run.py snapshots the domain's stats on these lines)
 *   MARK e ID
 *   RESULT part=nop id=ID n=NOPS ns=T
 *
 * Phase 0 is empty (the exits of the marks themselves).
 *
 * blk: the domain has one lguest block device (read-only, the image).  An
 * untimed warm-up reads the first 2 MiB once per CHUNK (every page of the
 * buffer and of the SDK's state touched), then for each CHUNK in the order
 * given (run.py rotates it by round): the whole disk (num_sectors * 512
 * bytes) read sequentially with lguest_blk_read() in CHUNK-byte requests into
 * one page-aligned 64 KiB buffer (so a 64 KiB request is one DMA of 16
 * sections: one request, one SEND_DMA), timed with the TSC, as a phase:
 *
 *   RESULT part=blk id=ID chunk=C requests=R bytes=B ns=T xor=X
 *
 * X is the XOR of the first 8 bytes of every request (run.py checks it
 * against the file).
 *
 * net: guests "tx" (slot 0) and "rx" (slot 1) on one LAN, plus IVC queues
 * between them (ids fixed by run.py): 1 = raw memory holding one barrier
 * word per side (never the protocol); 10 / 11 = IVC queues of 8 frames of
 * 64 / 1536 bytes (8 frames, like the receiver's 8 lguest buffers);
 * 12 / 13 = the same with 256 frames (bench/ivc's geometry).  After an
 * untimed warm-up round (64 frames of each kind), ROUNDS rounds; in each,
 * per frame size (64 and 1500 bytes; order rotating by round) and variant
 * (order rotating too):
 *   lguest  tx: lguest_net_send() of the frame to rx's MAC; while rx missed
 *           it (its 8 buffers full: the VMM raised its irq and gave up),
 *           pause RETRY_SPIN times and lguest_net_resend().  rx: spin up to
 *           SPIN times until a buffer is filled, then lguest_net_recv() (which
 *           sleeps in pv_wait when nothing came) copies the frame out.
 *   ivc     tegra_hv_ivc_write / tegra_hv_ivc_read of the same bytes (64 or
 *   ivc256  1500) on the 8-frame (256-frame) queue; a full (empty) end spins
 *           up to SPIN times until half the queue is free (ready), sleeps
 *           (pv_wait, 2 ms timeout) only while nothing is.
 * N... are the frames per phase, by variant then size: lguest 64, lguest
 * 1500, ivc 64, ivc 1500, ivc256 64, ivc256 1500.  Every frame: dst = rx's
 * MAC, src = tx's, ethertype 0x88b5, a u64 sequence number at byte 14
 * (checked by rx), then constant bytes.  Each phase:
 *
 *   MARK b ID, barrier (both guests), the timed loop, MARK e ID
 *   RESULT part=net id=ID role=tx|rx variant=V size=S n=N ns=T retries=R
 *          sleeps=W bells=D bad=X
 *
 * ns is from the barrier to this side's last frame (rx: received and copied
 * out).  retries: resends (tx, lguest) = SEND_DMAs that found rx full;
 * sleeps: times this side slept; bells: IVC doorbells this side rang (the
 * queue's notify callback wrapped by a counter).
 */
#include <paravm.h>
#include <paravm/lguest.h>
#include <paravm/tegra_hv.h>
#include "../ivc/occupancy.h"

#define MS 1000000ull
#define ETHERTYPE 0x88b5
#define Q_CTL 1
#define Q_IVC 10                        /* + 2 * (variant - 1) + size index */
#define NSIZES 2
#define NVARIANTS 3
#define BUF_BYTES (64 * 1024)

static const int sizes[NSIZES] = {64, 1500};
static const char *const variant_names[NVARIANTS] = {"lguest", "ivc", "ivc256"};
static uint64_t tsc_khz;
static int phase_id;

static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

static uint64_t tsc_ns(uint64_t cycles)
{
    return cycles / tsc_khz * 1000000 + cycles % tsc_khz * 1000000 / tsc_khz;
}

static int fail(const char *what, long v)
{
    printf("FAILED %s: %ld\n", what, v);
    return 1;
}

/* The exits of the marks themselves (phase 0), then NOPS no-op hypercalls. */
static void nop_phases(long nops)
{
    printf("MARK b %d\n", phase_id);
    printf("MARK e %d\n", phase_id);
    for (long i = 0; nops && i < 64; i++)      /* warm-up */
        pv_hypercall0(PV_HC_NOP);
    phase_id++;
    printf("MARK b %d\n", phase_id);
    uint64_t t0 = pv_rdtsc();
    for (long i = 0; i < nops; i++)
        pv_hypercall0(PV_HC_NOP);
    uint64_t t1 = pv_rdtsc();
    printf("MARK e %d\n", phase_id);
    printf("RESULT part=nop id=%d n=%ld ns=%lu\n", phase_id, nops,
           (unsigned long)tsc_ns(t1 - t0));
}

/* --- block ------------------------------------------------------------------ */
static struct lguest_blk blk;
static uint8_t buf[BUF_BYTES] __attribute__((aligned(4096)));

/* Read bytes [0, total) in chunk-byte requests: 0 or the driver's error. */
static int read_all(uint64_t total, size_t chunk, uint64_t *xor, long *requests)
{
    uint64_t x = 0;
    long r = 0;
    for (uint64_t off = 0; off < total; off += chunk) {
        size_t n = total - off < chunk ? (size_t)(total - off) : chunk;
        int err = lguest_blk_read(&blk, off / 512, buf, n);
        if (err)
            return err;
        uint64_t first = 0;
        memcpy(&first, buf, n < 8 ? n : 8);
        x ^= first;
        r++;
    }
    *xor = x;
    *requests = r;
    return 0;
}

static int mode_blk(int argc, char **argv)
{
    int nchunks = argc - 3;
    if (nchunks < 1)
        return fail("blk: usage: blk NOPS CHUNK...", argc);
    long nops = strtol(argv[2], 0, 0), chunks[8];
    if (nchunks > 8)
        return fail("blk: too many CHUNKs", nchunks);
    for (int i = 0; i < nchunks; i++) {
        chunks[i] = strtol(argv[3 + i], 0, 0);
        if (chunks[i] < 512 || chunks[i] % 512 || chunks[i] > BUF_BYTES)
            return fail("blk: CHUNK must be a multiple of 512 up to 65536", chunks[i]);
    }
    int err = lguest_blk_probe(&blk, 0);
    if (err)
        return fail("block probe", err);
    uint64_t total = blk.num_sectors * 512;
    printf("blk sectors=%lu\n", (unsigned long)blk.num_sectors);

    uint64_t x;
    long req;
    for (int i = 0; i < nchunks; i++) {                 /* warm-up, untimed */
        err = read_all(total < (2u << 20) ? total : (2u << 20), (size_t)chunks[i], &x, &req);
        if (err)
            return fail("blk: warm-up read", err);
    }
    nop_phases(nops);
    for (int i = 0; i < nchunks; i++) {
        int id = ++phase_id;
        printf("MARK b %d\n", id);
        uint64_t t0 = pv_rdtsc();
        err = read_all(total, (size_t)chunks[i], &x, &req);
        uint64_t t1 = pv_rdtsc();
        printf("MARK e %d\n", id);
        if (err)
            return fail("blk: read", err);
        printf("RESULT part=blk id=%d chunk=%ld requests=%ld bytes=%lu ns=%lu xor=%016lx\n", id,
               chunks[i], req, (unsigned long)total, (unsigned long)tsc_ns(t1 - t0),
               (unsigned long)x);
    }
    return 0;
}

/* --- net: the barrier on the control queue ----------------------------------------- */
static volatile uint64_t *bar_mine, *bar_peer;
static uint64_t bar_seq;

/* Both guests past the same point; a peer that does not come within 30 s
 * (it failed) stops this guest too. */
static void barrier(void)
{
    uint64_t seq = ++bar_seq, deadline = lguest_clock_ns() + 30000 * MS;
    __atomic_store_n(bar_mine, seq, __ATOMIC_RELEASE);
    for (unsigned k = 1; __atomic_load_n(bar_peer, __ATOMIC_ACQUIRE) < seq; k++) {
        cpu_relax();
        if (k % 4096 == 0 && lguest_clock_ns() > deadline) {
            printf("FAILED barrier %lu: the peer did not come in 30 s\n", (unsigned long)seq);
            pv_exit(9);
        }
    }
}

static unsigned long bells;
static void (*ring_peer)(struct tegra_ivc *, void *);

static void counting_notify(struct tegra_ivc *ivc, void *data)
{
    bells++;
    ring_peer(ivc, data);
}

static struct tegra_hv_ivc_cookie *reserve(int id)
{
    struct tegra_hv_ivc_cookie *c = tegra_hv_ivc_reserve(0, id, 0);
    if (PV_IS_ERR(c)) {
        printf("FAILED reserve %d: %ld\n", id, PV_PTR_ERR(c));
        pv_exit(3);
    }
    struct tegra_ivc *ivc = tegra_hv_ivc_convert_cookie(c);
    ring_peer = ivc->notify;
    ivc->notify = counting_notify;
    return c;
}

/* Reset the queues, then answer notifications until all are established. */
static int establish(struct tegra_hv_ivc_cookie **c, int n)
{
    for (int i = 0; i < n; i++)
        tegra_hv_ivc_channel_reset(c[i]);
    for (int tries = 0; tries < 20000; tries++) {
        int ok = 1;
        for (int i = 0; i < n; i++)
            ok &= tegra_hv_ivc_channel_notified(c[i]) == 0;
        if (ok)
            return 0;
        pv_wait(1 * MS);
    }
    return fail("ivc: no handshake", 0);
}

/* --- net: counts and waits ---------------------------------------------------------------- */
struct counts {
    unsigned long retries, sleeps, bad;
};

static unsigned spin_limit, retry_spin;


/* An IVC end found its queue full (tx) or empty (rx): spin until half of it
 * is free (ready), or, past spin_limit, until anything is; sleep only while
 * nothing is (bench/ivc/guest.c's wait_for). */
static void ivc_wait(struct tegra_hv_ivc_cookie *c, int tx, int err, struct counts *k)
{
    if (err != -PV_ENOMEM) {
        printf("FAILED ivc error %d\n", err);
        pv_exit(5);
    }
    const struct tegra_ivc *ivc = tegra_hv_ivc_convert_cookie(c);
    uint32_t want = ivc->nframes / 2 ? ivc->nframes / 2 : 1;
    unsigned spin = 0;
    uint64_t deadline = 0;
    for (;;) {
        uint32_t n = tx ? tx_free(ivc) : rx_ready(ivc);
        if (n >= want || (n && spin >= spin_limit))
            return;
        if (spin < spin_limit) {
            spin++;
            cpu_relax();
            continue;
        }
        if (!deadline) {
            deadline = lguest_clock_ns() + 10000 * MS;
        } else if (lguest_clock_ns() > deadline) {
            printf("FAILED ivc: no %s for 10 s\n", tx ? "room" : "frame");
            pv_exit(10);
        }
        k->sleeps++;
        pv_wait(2 * MS);
        tegra_hv_ivc_channel_notified(c);
        spin = 0;
    }
}

/* --- net: the two variants ------------------------------------------------------------------ */
static struct lguest_netdev net;
static uint8_t frame[2048] __attribute__((aligned(64)));
static uint8_t rxbuf[2048] __attribute__((aligned(64)));
static uint8_t peer_mac[6];
static uint64_t tx_seq[NVARIANTS], rx_seq[NVARIANTS];   /* never reset */

static void make_frame(void)
{
    memcpy(frame, peer_mac, 6);
    memcpy(frame + 6, net.mac, 6);
    frame[12] = ETHERTYPE >> 8;
    frame[13] = ETHERTYPE & 0xff;
    for (size_t k = 22; k < sizeof(frame); k++)
        frame[k] = (uint8_t)k;
}

static int lguest_tx(long n, int size, struct counts *k)
{
    for (long i = 0; i < n; i++) {
        memcpy(frame + 14, &tx_seq[0], 8);
        tx_seq[0]++;
        int r = lguest_net_send(&net, frame, (size_t)size);
        if (r < 0)
            return fail("lguest_net_send", r);
        uint64_t deadline = 0;
        while (net.tx_missed) {
            for (unsigned s = 0; s < retry_spin; s++)
                cpu_relax();
            if (!deadline)
                deadline = lguest_clock_ns() + 5000 * MS;
            else if (lguest_clock_ns() > deadline)
                return fail("lguest: the receiver took no frame for 5 s; seq", (long)tx_seq[0]);
            k->retries++;
            r = lguest_net_resend(&net);
            if (r < 0)
                return fail("lguest_net_resend", r);
        }
    }
    return 0;
}

static int rx_filled(void)
{
    for (unsigned i = 0; i < LGUEST_NET_RX_BUFS; i++)
        if (lguest_dma_used(&net.rx[i]))
            return 1;
    return 0;
}

static int lguest_rx(long n, int size, struct counts *k)
{
    for (long i = 0; i < n; i++) {
        unsigned spin = 0;
        while (!rx_filled() && spin < spin_limit) {
            spin++;
            cpu_relax();
        }
        if (spin == spin_limit && !rx_filled())
            k->sleeps++;
        long len = lguest_net_recv(&net, rxbuf, sizeof(rxbuf), 5000 * MS);
        if (len <= 0)
            return fail("lguest_net_recv (0: nothing for 5 s)", len);
        uint64_t seq;
        memcpy(&seq, rxbuf + 14, 8);
        k->bad += len != size || seq != rx_seq[0];
        rx_seq[0]++;
    }
    return 0;
}

static int ivc_tx(struct tegra_hv_ivc_cookie *c, uint64_t *seq, long n, int size,
                  struct counts *k)
{
    for (long i = 0; i < n; i++) {
        memcpy(frame + 14, seq, 8);
        ++*seq;
        int r;
        while ((r = tegra_hv_ivc_write(c, frame, size)) != size)
            ivc_wait(c, 1, r, k);
    }
    return 0;
}

static int ivc_rx(struct tegra_hv_ivc_cookie *c, uint64_t *expect, long n, int size,
                  struct counts *k)
{
    for (long i = 0; i < n; i++) {
        int r;
        while ((r = tegra_hv_ivc_read(c, rxbuf, size)) != size)
            ivc_wait(c, 0, r, k);
        uint64_t seq;
        memcpy(&seq, rxbuf + 14, 8);
        k->bad += seq != *expect;
        ++*expect;
    }
    return 0;
}

static int mode_net(int argc, char **argv)
{
    if (argc < 7 + NVARIANTS * NSIZES)
        return fail("net: usage: net tx|rx ROUNDS SPIN RETRY_SPIN NOPS N...", argc);
    int tx = !strcmp(argv[2], "tx");
    long rounds = strtol(argv[3], 0, 0);
    spin_limit = (unsigned)strtol(argv[4], 0, 0);
    retry_spin = (unsigned)strtol(argv[5], 0, 0);
    long nops = strtol(argv[6], 0, 0);
    long nframes[NVARIANTS][NSIZES];
    for (int v = 0; v < NVARIANTS; v++)
        for (int s = 0; s < NSIZES; s++) {
            nframes[v][s] = strtol(argv[7 + NSIZES * v + s], 0, 0);
            if (nframes[v][s] <= 0)
                return fail("net: frame counts must be > 0", nframes[v][s]);
        }

    struct tegra_ivc *ctl = tegra_hv_ivc_convert_cookie(reserve(Q_CTL));
    bar_mine = (volatile uint64_t *)ctl->tx_channel;
    bar_peer = (volatile uint64_t *)ctl->rx_channel;
    struct tegra_hv_ivc_cookie *ivc[NVARIANTS - 1][NSIZES];
    for (int q = 0; q < (NVARIANTS - 1) * NSIZES; q++)
        ivc[q / NSIZES][q % NSIZES] = reserve(Q_IVC + q);
    if (establish(&ivc[0][0], (NVARIANTS - 1) * NSIZES))
        return 1;

    int err = lguest_net_probe(&net, 0);
    if (!err)
        err = lguest_net_open(&net, 0);
    if (err)
        return fail("net open", err);
    /* Both have opened once both are past this barrier: the peer's MAC is in
     * its slot (slot 0 = tx, 1 = rx) and its buffers are bound. */
    barrier();
    unsigned peer = tx ? 1 : 0;
    if (lguest_net_slot_mac(&net, peer, peer_mac) != 1)
        return fail("net: the peer's slot is unused", peer);
    peer_mac[0] &= (uint8_t)~LGUEST_NET_PROMISC;
    make_frame();

    /* Only tx times no-ops: two vCPUs exiting at once would contend for the
     * VMM's GIL (rx waits at the next barrier, without exits). */
    nop_phases(tx ? nops : 0);
    for (long round = -1; round < rounds; round++) {        /* -1: warm-up, untimed */
        long rot = round < 0 ? 0 : round;
        for (int j = 0; j < NSIZES; j++) {
            int s = (int)((j + rot) % NSIZES), size = sizes[s];
            for (int jv = 0; jv < NVARIANTS; jv++) {
                int v = (int)((jv + rot) % NVARIANTS);
                long n = round < 0 ? 64 : nframes[v][s];
                struct counts k = {0};
                int id = ++phase_id;
                printf("MARK b %d\n", id);
                barrier();
                unsigned long b0 = bells;
                uint64_t t0 = pv_rdtsc();
                int r;
                if (v == 0) {
                    r = tx ? lguest_tx(n, size, &k) : lguest_rx(n, size, &k);
                } else {
                    struct tegra_hv_ivc_cookie *c = ivc[v - 1][s];
                    r = tx ? ivc_tx(c, &tx_seq[v], n, size, &k)
                           : ivc_rx(c, &rx_seq[v], n, size, &k);
                }
                uint64_t t1 = pv_rdtsc();
                unsigned long nb = bells - b0;
                printf("MARK e %d\n", id);
                if (r)
                    return r;
                if (round >= 0)
                    printf("RESULT part=net id=%d role=%s variant=%s size=%d n=%ld ns=%lu "
                           "retries=%lu sleeps=%lu bells=%lu bad=%lu\n", id, tx ? "tx" : "rx",
                           variant_names[v], size, n, (unsigned long)tsc_ns(t1 - t0),
                           k.retries, k.sleeps, nb, k.bad);
                if (k.bad)
                    return fail("frames out of sequence or of the wrong size", (long)k.bad);
            }
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    tsc_khz = pv_boot_info()->tsc_khz;
    if (!tsc_khz)
        return fail("no tsc_khz in the boot info", 0);
    if (argc >= 2 && !strcmp(argv[1], "blk"))
        return mode_blk(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "net"))
        return mode_net(argc, argv);
    printf("usage: guest blk NOPS CHUNK... | net tx|rx ROUNDS SPIN RETRY_SPIN NOPS N...\n");
    return 2;
}
