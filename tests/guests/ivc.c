/* ivc: a guest end of an IVC queue through the cookie API.
 *   ivc echo ID N     reset, handshake, then read N frames and send each back
 *                     with its first byte incremented; exit 0
 *   ivc ping ID N     reset, handshake, send N frames (i, then filler) and check
 *                     each reply; exit 0 if all came back right
 *   ivc api ID        checks of reserve/unreserve/loopback errors; exit 0
 *   ivc loopback ID N put queue ID+1 of a loopback pair in loopback (kernel
 *                     echo), then send N frames on ID and check each echo
 *   ivc cookies ID    every cookie call against a scripted host peer
 *                     (see tests/kvm/test_ivc.py); exit 0 if all checks pass
 *   ivc mempool ID    reserve mempool ID, print what the host wrote at its
 *                     start, write a reply at offset 4096; reserve errors
 *   ivc victim ID MS  establish, then for MS ms read whatever comes; print
 *                     how each read ended; exit 0
 *   ivc evil ID       establish, then lie: counters out of range, a storm of
 *                     doorbells, a garbage state; exit 0
 *   ivc survivor ID   read until the peer goes away (ECONNRESET), establish
 *                     again, read one frame from the new peer; exit 0
 *   ivc crasher ID N  send N frames, then fault
 *   ivc sender ID     send one frame "hello again"; exit 0 */
#include <paravm.h>
#include <paravm/tegra_hv.h>

static int establish(struct tegra_hv_ivc_cookie *c)
{
    tegra_hv_ivc_channel_reset(c);
    for (int i = 0; i < 20000; i++) {
        if (tegra_hv_ivc_channel_notified(c) == 0)
            return 0;
        pv_wait(1000000);
    }
    return -1;
}

static int wait_read(struct tegra_hv_ivc_cookie *c, void *buf, int n)
{
    for (;;) {
        int r = tegra_hv_ivc_read(c, buf, n);
        if (r != -PV_ENOMEM) {
            if (r == -PV_ECONNRESET && tegra_hv_ivc_channel_notified(c) == 0)
                continue;
            return r;
        }
        pv_wait(0);
        tegra_hv_ivc_channel_notified(c);
    }
}

static int wait_write(struct tegra_hv_ivc_cookie *c, const void *buf, int n)
{
    for (;;) {
        int r = tegra_hv_ivc_write(c, buf, n);
        if (r != -PV_ENOMEM)
            return r;
        pv_wait(0);
        tegra_hv_ivc_channel_notified(c);
    }
}

#define CHECK(cond) do { if (!(cond)) { printf("FAILED line %d: %s\n", __LINE__, #cond); \
                                         return 10; } } while (0)

static int loopback(int id, long n)
{
    CHECK(pv_ivc_set_loopback(id + 1, 1) == 0);
    CHECK(pv_ivc_set_loopback(id + 1, 1) == 0);           /* already: 0 */
    CHECK(PV_PTR_ERR(tegra_hv_ivc_reserve(0, id + 1, 0)) == -PV_EBUSY);
    CHECK(pv_ivc_set_loopback(id + 1, 2) == -PV_EINVAL);
    struct tegra_hv_ivc_cookie *c = tegra_hv_ivc_reserve(0, id, 0);
    CHECK(!PV_IS_ERR(c));
    CHECK(establish(c) == 0);
    static unsigned char out[65536], in[65536];
    int fs = c->frame_size;
    for (long i = 0; i < n; i++) {
        for (int k = 0; k < fs; k++)
            out[k] = (unsigned char)(i * 7 + k);
        CHECK(wait_write(c, out, fs) == fs);
        CHECK(wait_read(c, in, fs) == fs);
        CHECK(memcmp(in, out, (size_t)fs) == 0);
    }
    CHECK(pv_ivc_set_loopback(id + 1, 0) == 0);
    CHECK(pv_ivc_set_loopback(id + 1, 0) == -PV_EINVAL);   /* not in loopback */
    struct tegra_hv_ivc_cookie *other = tegra_hv_ivc_reserve(0, id + 1, 0);
    CHECK(!PV_IS_ERR(other));
    CHECK(tegra_hv_ivc_set_loopback(other, 1) == -PV_EBUSY);
    printf("loopback echoed %ld frames\n", n);
    return 0;
}

static int rx_calls, tx_calls;
static unsigned char rx_got[64];

static void on_rx(struct tegra_hv_ivc_cookie *c)
{
    rx_calls++;
    if (tegra_hv_ivc_read(c, rx_got, sizeof(rx_got)) < 0)
        rx_got[0] = 0;
}

static void on_tx(struct tegra_hv_ivc_cookie *c)
{
    (void)c;
    tx_calls++;
}

static int cookies(int id)
{
    struct tegra_hv_ivc_cookie *c = tegra_hv_ivc_reserve(0, id, 0);
    CHECK(!PV_IS_ERR(c));
    int fs = c->frame_size;
    unsigned char buf[64];
    CHECK(fs == 64);
    /* before the handshake: everything refuses with ECONNRESET */
    tegra_hv_ivc_channel_reset(c);
    CHECK(tegra_hv_ivc_write(c, "x", 1) == -PV_ECONNRESET);
    CHECK(tegra_hv_ivc_read_peek(c, buf, 0, 1) == -PV_ECONNRESET);
    CHECK(PV_PTR_ERR(tegra_hv_ivc_write_get_next_frame(c)) == -PV_ECONNRESET);
    CHECK(!tegra_hv_ivc_can_read(c) && !tegra_hv_ivc_can_write(c));
    CHECK(establish(c) == 0);
    CHECK(tegra_hv_ivc_tx_empty(c) == 1 && tegra_hv_ivc_can_write(c) == 1);
    CHECK(tegra_hv_ivc_can_read(c) == 0);
    CHECK(PV_PTR_ERR(tegra_hv_ivc_read_get_next_frame(c)) == -PV_ENOMEM);
    CHECK(tegra_hv_ivc_read_advance(c) == -PV_ENOMEM);
    /* frame 1: poked then advanced */
    CHECK(tegra_hv_ivc_write_poke(c, "POKE", 0, 4) == 4);
    CHECK(tegra_hv_ivc_write_poke(c, "!", 4, 1) == 1);
    CHECK(tegra_hv_ivc_write_poke(c, "x", fs, 1) == -PV_E2BIG);
    CHECK(tegra_hv_ivc_write_poke(c, "", fs, 0) == 0);
    CHECK(tegra_hv_ivc_write_advance(c) == 0);
    /* frame 2: filled in place */
    char *f = tegra_hv_ivc_write_get_next_frame(c);
    CHECK(!PV_IS_ERR(f));
    memset(f, 0, (size_t)fs);
    memcpy(f, "ZERO-COPY", 9);
    CHECK(tegra_hv_ivc_write_advance(c) == 0);
    /* frame 3: write, too big first */
    CHECK(tegra_hv_ivc_write(c, buf, fs + 1) == -PV_E2BIG);
    CHECK(tegra_hv_ivc_write(c, "WRITE", 5) == 5);
    /* the queue has 4 frames: one more fits, then full */
    CHECK(tegra_hv_ivc_write(c, "FOURTH", 6) == 6);
    CHECK(tegra_hv_ivc_can_write(c) == 0 && tegra_hv_ivc_write(c, "x", 1) == -PV_ENOMEM);
    CHECK(PV_PTR_ERR(tegra_hv_ivc_write_get_next_frame(c)) == -PV_ENOMEM);
    CHECK(tegra_hv_ivc_tx_empty(c) == 0);
    printf("queue full\n");
    /* the host reads the four, then sends "PEEKME" and "NEXT" */
    while (!tegra_hv_ivc_can_read(c)) {
        pv_wait(0);
        tegra_hv_ivc_channel_notified(c);
    }
    CHECK(tegra_hv_ivc_read_peek(c, buf, 2, 4) == 4 && !memcmp(buf, "EKME", 4));
    CHECK(tegra_hv_ivc_read_peek(c, buf, fs, 0) == 0);
    CHECK(tegra_hv_ivc_read_peek(c, buf, fs, 1) == -PV_E2BIG);
    CHECK(tegra_hv_ivc_read_peek(c, buf, fs + 1, 0) == -PV_E2BIG);
    const char *r = tegra_hv_ivc_read_get_next_frame(c);
    CHECK(!PV_IS_ERR(r) && !memcmp(r, "PEEKME", 6));
    CHECK(tegra_hv_ivc_read_advance(c) == 0);
    while (!tegra_hv_ivc_can_read(c)) {
        pv_wait(0);
        tegra_hv_ivc_channel_notified(c);
    }
    CHECK(tegra_hv_ivc_read(c, buf, fs + 1) == -PV_E2BIG);
    CHECK(tegra_hv_ivc_read(c, buf, 4) == 4 && !memcmp(buf, "NEXT", 4));
    CHECK(tegra_hv_ivc_dump(c) == 0);
    CHECK(tegra_hv_ivc_convert_cookie(c) != 0);
    /* with ops: tx_rdy at once (there is room), rx_rdy on the interrupt */
    CHECK(tegra_hv_ivc_unreserve(c) == 0);
    static const struct tegra_hv_ivc_ops ops = { on_rx, on_tx };
    c = tegra_hv_ivc_reserve(0, id, &ops);
    CHECK(!PV_IS_ERR(c));
    CHECK(tx_calls == 1 && rx_calls == 0);
    CHECK(tegra_hv_ivc_channel_reset(c) == -PV_EINVAL);
    CHECK(tegra_hv_ivc_write(c, "READY", 5) == 5);
    for (int i = 0; i < 5000 && !rx_calls; i++)
        pv_wait(1000000);
    CHECK(rx_calls >= 1 && !memcmp(rx_got, "CALLBACK", 8));
    CHECK(tegra_hv_ivc_unreserve(c) == 0);
    printf("cookies ok rx_calls=%d tx_calls=%d\n", rx_calls, tx_calls);
    return 0;
}

static int mempool(unsigned id)
{
    struct tegra_hv_ivm_cookie *m = tegra_hv_mempool_reserve(0, id);
    CHECK(!PV_IS_ERR(m));
    CHECK(PV_PTR_ERR(tegra_hv_mempool_reserve(0, id)) == -PV_EBUSY);
    CHECK(PV_PTR_ERR(tegra_hv_mempool_reserve(0, id + 1000)) == -PV_ENODEV);
    char *p = (char *)(uintptr_t)m->ipa;
    printf("mempool %u: %lu bytes, peer %u, says '%s'\n", id, (unsigned long)m->size,
           m->peer_vmid, p);
    CHECK(m->size >= 8192);
    memcpy(p + 4096, "reply from the guest", 21);
    CHECK(tegra_hv_mempool_unreserve(m) == 0);
    CHECK(tegra_hv_mempool_unreserve(m) == -PV_EINVAL);
    CHECK(tegra_hv_mempool_unreserve(0) == -PV_EINVAL);
    return 0;
}

static int victim(struct tegra_hv_ivc_cookie *c, long ms)
{
    static unsigned char buf[65536];
    long ok = 0, empty = 0, reset = 0, other = 0, wakes = 0;
    uint64_t end = pv_clock_ns() + (uint64_t)ms * 1000000;
    while (pv_clock_ns() < end) {
        wakes += pv_wait(1000000) > 0;
        tegra_hv_ivc_channel_notified(c);
        int r = tegra_hv_ivc_read(c, buf, c->frame_size);
        if (r == c->frame_size)
            ok++;
        else if (r == -PV_ENOMEM)
            empty++;
        else if (r == -PV_ECONNRESET)
            reset++;
        else
            other++;
        tegra_hv_ivc_can_write(c);
        tegra_hv_ivc_tx_empty(c);
    }
    printf("victim ok=%ld empty=%ld reset=%ld other=%ld wakes=%ld\n", ok, empty, reset, other,
           wakes);
    return 0;
}

static void ring(struct tegra_hv_ivc_cookie *c, long times)
{
    /* the doorbell token of this end: the peer's vector, in the kernel */
    struct tegra_ivc *ivc = tegra_hv_ivc_convert_cookie(c);
    for (long i = 0; i < times; i++)
        ivc->notify(ivc, ivc->notify_data);
}

static int evil(struct tegra_hv_ivc_cookie *c)
{
    struct tegra_ivc *ivc = tegra_hv_ivc_convert_cookie(c);
    volatile struct tegra_ivc_header *tx = ivc->tx_channel;
    /* counters out of range: more frames "written" than the queue holds */
    tx->w_count = tx->r_count + (uint32_t)c->nframes + 1;
    ring(c, 20000);
    /* far out of range, both ways */
    tx->w_count = tx->r_count - 1;
    ring(c, 1000);
    /* a state the protocol does not know */
    tx->state = 7;
    ring(c, 1000);
    printf("evil done\n");
    return 0;
}

static int survivor(struct tegra_hv_ivc_cookie *c)
{
    static unsigned char buf[65536];
    long got = 0;
    for (;;) {
        int r = tegra_hv_ivc_read(c, buf, c->frame_size);
        if (r == c->frame_size) {
            got++;
            continue;
        }
        if (r == -PV_ECONNRESET)
            break;
        CHECK(r == -PV_ENOMEM);
        pv_wait(0);
        tegra_hv_ivc_channel_notified(c);
    }
    printf("peer went away after %ld frames: ECONNRESET\n", got);
    while (tegra_hv_ivc_channel_notified(c) != 0)
        pv_wait(0);
    CHECK(wait_read(c, buf, c->frame_size) == c->frame_size);
    printf("new peer says '%s'\n", buf);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    int id = (int)strtol(argv[2], 0, 0);
    long n = argc > 3 ? strtol(argv[3], 0, 0) : 0;
    if (!strcmp(argv[1], "loopback"))
        return loopback(id, n);
    if (!strcmp(argv[1], "cookies"))
        return cookies(id);
    if (!strcmp(argv[1], "mempool"))
        return mempool((unsigned)id);
    struct tegra_hv_ivc_cookie *c = tegra_hv_ivc_reserve(0, id, 0);
    if (PV_IS_ERR(c)) {
        printf("reserve %d: %ld\n", id, PV_PTR_ERR(c));
        return 3;
    }
    static unsigned char buf[65536];
    int fs = c->frame_size;
    if (!strcmp(argv[1], "api")) {
        struct tegra_hv_ivc_cookie *again = tegra_hv_ivc_reserve(0, id, 0);
        struct tegra_hv_ivc_cookie *none = tegra_hv_ivc_reserve(0, 999, 0);
        int lb = tegra_hv_ivc_set_loopback(c, 1);
        int un1 = tegra_hv_ivc_unreserve(c), un2 = tegra_hv_ivc_unreserve(c);
        printf("again=%ld none=%ld loopback=%d unreserve=%d,%d vmid=%d peer=%d irq=%#x\n",
               PV_PTR_ERR(again), PV_PTR_ERR(none), lb, un1, un2, pv_ivc_vmid(),
               c->peer_vmid, c->irq);
        return 0;
    }
    if (establish(c)) {
        printf("no handshake\n");
        return 4;
    }
    printf("established: queue %d, %d x %d bytes, peer %d\n", id, c->nframes, fs, c->peer_vmid);
    if (!strcmp(argv[1], "echo")) {
        for (long i = 0; i < n; i++) {
            if (wait_read(c, buf, fs) != fs)
                return 5;
            buf[0]++;
            if (wait_write(c, buf, fs) != fs)
                return 6;
        }
        printf("echoed %ld frames\n", n);
        return 0;
    }
    if (!strcmp(argv[1], "victim"))
        return victim(c, n);
    if (!strcmp(argv[1], "evil"))
        return evil(c);
    if (!strcmp(argv[1], "survivor"))
        return survivor(c);
    if (!strcmp(argv[1], "sender")) {
        CHECK(wait_write(c, "hello again", 12) == 12);
        return 0;
    }
    if (!strcmp(argv[1], "crasher")) {
        for (long i = 0; i < n; i++) {
            memset(buf, (int)i, fs);
            CHECK(wait_write(c, buf, fs) == fs);
        }
        volatile int *reserved = (volatile int *)(uintptr_t)argc;   /* low memory */
        *reserved = 1;                  /* supervisor-only: a page fault */
        return 11;
    }
    if (!strcmp(argv[1], "ping")) {
        uint64_t t0 = pv_clock_ns();
        for (long i = 0; i < n; i++) {
            memset(buf, (int)(i & 0x7f), fs);
            if (wait_write(c, buf, fs) != fs)
                return 7;
            if (wait_read(c, buf, fs) != fs)
                return 8;
            if (buf[0] != (unsigned char)((i & 0x7f) + 1) || buf[fs - 1] != (unsigned char)(i & 0x7f))
                return 9;
        }
        uint64_t dt = pv_clock_ns() - t0;
        printf("RESULT ping n=%ld rtt_ns=%lu\n", n, (unsigned long)(n ? dt / n : 0));
        return 0;
    }
    return 2;
}
