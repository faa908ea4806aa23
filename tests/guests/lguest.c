/* lguest: the guest side of lguest I/O (paravm/lguest.h).  Each mode prints
 * one result line and exits 0, or prints "FAILED ..." and exits non-zero;
 * missing or bad arguments exit 2.
 *   lguest bind                  bind limits on private keys, raw results:
 *                                "bind irq32=R bind33=R unbind=R unbind_again=R"
 *                                (expected 0 0 1 0)
 *   lguest console               probe the console, printf through it,
 *                                "hello through DMA", then echo each input line
 *                                as "got: LINE" until the line "quit" (30 s at most)
 *   lguest blksum CHUNK          "blk sectors=N" and "blk disk_bytes=D", read
 *                                the whole disk (N * 512 bytes: an odd-sized
 *                                image's last sector is padded with zeros) in
 *                                CHUNK-byte requests (a multiple of 512), then
 *                                "blksum bytes=B fnv=HEX" (64-bit FNV-1a of
 *                                those B bytes) and "blksum time_ns=T"
 *   lguest blkwrite SECTOR COUNT BYTE
 *                                write COUNT sectors of BYTE at SECTOR, flush,
 *                                read back, compare: "blkwrite ok"
 *   lguest blkro                 a write of sector 0 (its own bytes) and a read
 *                                at sector num_sectors must both give -PV_EIO:
 *                                "blkro write=R beyond=R"
 *   lguest netsend DSTSLOT N SIZE
 *                                wait (5 s at most) for slot DSTSLOT to be used,
 *                                then 200 ms (for the peers to open), send it
 *                                N frames of SIZE bytes (each retried
 *                                every ~1 ms, 1000 times at most, to the peers
 *                                that missed it): "netsend sent=N delivered=D"
 *                                (D: frames every matching peer took)
 *   lguest netrecv N TIMEOUT_MS [promisc]
 *                                receive until N frames or the timeout:
 *                                "netrecv got=G bytes=B bad=X" and
 *                                "netrecv mac=xx:xx:xx:xx:xx:xx"; exit 0 even if
 *                                fewer than N came (the test judges)
 *   lguest netbcast N SIZE       wait 200 ms, send N broadcast frames (retried
 *                                as netsend, except to a peer that missed a
 *                                whole frame before): "netbcast sent=N", then
 *                                "netbcast delivered=D"
 *   lguest badsend               send to the console key a DMA whose section
 *                                crosses a page: the VMM kills this guest
 *                                (never prints "survived")
 *   lguest netbig                wait 200 ms, send a 1515-byte frame through the
 *                                driver (refused) and straight to the first
 *                                peer's key (dropped by the VMM), then broadcast
 *                                a 1514-byte one: "netbig sent=2", then
 *                                "netbig driver=R raw=USED_LEN delivered=PEERS"
 * Frames: dst, src = my MAC, ethertype 0x88b5, then payload byte k of frame i
 * = (i + k) & 0xff. */
#include <paravm.h>
#include <paravm/lguest.h>

#define ETHERTYPE 0x88b5
#define MS 1000000ull

#define FAIL(...) do { printf("FAILED " __VA_ARGS__); printf("\n"); return 1; } while (0)

static int usage(void)
{
    printf("usage: lguest bind | console | blksum CHUNK | blkwrite SECTOR COUNT BYTE | blkro"
           " | netsend DSTSLOT N SIZE | netrecv N TIMEOUT_MS [promisc] | netbcast N SIZE"
           " | netbig\n");
    return 2;
}

/* argv[i] as a number >= lo, or -1 (with the usage printed by the caller). */
static int num_arg(int argc, char **argv, int i, long lo, long *out)
{
    if (i >= argc || !argv[i][0])
        return -1;
    char *end;
    long v = strtol(argv[i], &end, 0);
    if (*end || v < lo)
        return -1;
    *out = v;
    return 0;
}

/* --- bind ------------------------------------------------------------------ */
static int mode_bind(void)
{
    static uint32_t keys[LGUEST_MAX_DMA + 1];        /* private, 4-byte aligned */
    static struct lguest_dma dmas[LGUEST_MAX_DMA + 1];
#define BIND(i, num, irq) pv_hypercall4(LHCALL_BIND_DMA, (uint64_t)&keys[i], \
                                        (uint64_t)&dmas[i], (num), (irq))
    long irq32 = BIND(0, 1, LGUEST_IRQS);
    for (int i = 0; i < LGUEST_MAX_DMA; i++) {
        long r = BIND(i, 1, 1 + i % (LGUEST_IRQS - 1));
        if (r != 1)
            FAIL("bind %d of %d returned %ld", i + 1, LGUEST_MAX_DMA, r);
    }
    long bind33 = BIND(LGUEST_MAX_DMA, 1, 5);
    long unbind = BIND(0, 0, 0);
    long unbind_again = BIND(0, 0, 0);
    for (int i = 1; i < LGUEST_MAX_DMA; i++)
        lguest_unbind_dma((uint64_t)&keys[i], &dmas[i]);
    if (bind33 == 1)
        lguest_unbind_dma((uint64_t)&keys[LGUEST_MAX_DMA], &dmas[LGUEST_MAX_DMA]);
#undef BIND
    printf("bind irq32=%ld bind33=%ld unbind=%ld unbind_again=%ld\n", irq32, bind33, unbind,
           unbind_again);
    if (irq32 != 0 || bind33 != 0 || unbind != 1 || unbind_again != 0)
        FAIL("bind: expected irq32=0 bind33=0 unbind=1 unbind_again=0");
    return 0;
}

/* --- console ------------------------------------------------------------------- */
static struct lguest_console con;

static int mode_console(void)
{
    int err = lguest_console_probe(&con, 0);
    if (err)
        FAIL("console probe: %d", err);
    lguest_console_set_printf(&con);
    printf("hello through DMA\n");
    char line[256];
    size_t n = 0;
    uint64_t deadline = lguest_clock_ns() + 30000 * MS;
    for (;;) {
        uint64_t now = lguest_clock_ns();
        if (now >= deadline)
            FAIL("console: no \"quit\" line within 30 s");
        char buf[64];
        long got = lguest_console_read(&con, buf, sizeof(buf), deadline - now);
        if (got < 0)
            FAIL("console read: %ld", got);
        for (long k = 0; k < got; k++) {
            char c = buf[k];
            if (c != '\n') {
                if (c != '\r' && n < sizeof(line) - 1)
                    line[n++] = c;
                continue;
            }
            line[n] = 0;
            n = 0;
            printf("got: %s\n", line);
            if (!strcmp(line, "quit"))
                return 0;
        }
    }
}

/* --- block -------------------------------------------------------------------------- */
static struct lguest_blk blk;

static int blk_open(void)
{
    int err = lguest_blk_probe(&blk, 0);
    if (err) {
        printf("FAILED block probe: %d\n", err);
        return 1;
    }
    return 0;
}

/* Scratch memory: the heap (everything between the image and the stacks). */
static uint8_t *heap(size_t *size)
{
    const struct pv_boot_info *bi = pv_boot_info();
    *size = bi->heap_end - bi->heap_start;
    return (uint8_t *)bi->heap_start;
}

static int mode_blksum(int argc, char **argv)
{
    long chunk;
    size_t room;
    uint8_t *buf = heap(&room);
    if (num_arg(argc, argv, 2, 512, &chunk) || chunk % 512)
        return usage();
    if ((size_t)chunk > room)
        FAIL("blksum: CHUNK %ld is more than the heap (%lu bytes)", chunk, (unsigned long)room);
    if (blk_open())
        return 1;
    printf("blk sectors=%lu\n", (unsigned long)blk.num_sectors);
    printf("blk disk_bytes=%lu\n", (unsigned long)blk.disk_bytes);
    uint64_t total = blk.num_sectors * 512, hash = 0xcbf29ce484222325ull;
    uint64_t t0 = pv_clock_ns();
    for (uint64_t off = 0; off < total;) {
        size_t n = total - off < (uint64_t)chunk ? (size_t)(total - off) : (size_t)chunk;
        int err = lguest_blk_read(&blk, off / 512, buf, n);
        if (err)
            FAIL("blksum: read of %lu bytes at sector %lu: %d", (unsigned long)n,
                 (unsigned long)(off / 512), err);
        for (size_t k = 0; k < n; k++)
            hash = (hash ^ buf[k]) * 0x100000001b3ull;
        off += n;
    }
    uint64_t dt = pv_clock_ns() - t0;
    printf("blksum bytes=%lu fnv=%016lx\n", (unsigned long)total, (unsigned long)hash);
    printf("blksum time_ns=%lu\n", (unsigned long)dt);
    return 0;
}

static int mode_blkwrite(int argc, char **argv)
{
    long sector, count, byte;
    size_t room;
    uint8_t *buf = heap(&room);
    if (num_arg(argc, argv, 2, 0, &sector) || num_arg(argc, argv, 3, 1, &count) ||
        num_arg(argc, argv, 4, 0, &byte) || byte > 255)
        return usage();
    size_t bytes = (size_t)count * 512;
    if ((uint64_t)count > room / 1024)
        FAIL("blkwrite: COUNT %ld does not fit twice in the heap", count);
    if (blk_open())
        return 1;
    memset(buf, (int)byte, bytes);
    int err = lguest_blk_write(&blk, (uint64_t)sector, buf, bytes);
    if (err)
        FAIL("blkwrite: write: %d", err);
    if ((err = lguest_blk_flush(&blk)))
        FAIL("blkwrite: flush: %d", err);
    uint8_t *back = buf + bytes;
    memset(back, (int)(byte ^ 0xff), bytes);
    if ((err = lguest_blk_read(&blk, (uint64_t)sector, back, bytes)))
        FAIL("blkwrite: read back: %d", err);
    for (size_t k = 0; k < bytes; k++)
        if (back[k] != (uint8_t)byte)
            FAIL("blkwrite: byte %lu reads %#x, wrote %#lx", (unsigned long)k, back[k], byte);
    printf("blkwrite ok\n");
    return 0;
}

static int mode_blkro(void)
{
    static uint8_t sector0[512], other[512];
    if (blk_open())
        return 1;
    /* Write back what is there: harmless if the disk is writable after all. */
    int err = lguest_blk_read(&blk, 0, sector0, sizeof(sector0));
    if (err)
        FAIL("blkro: read of sector 0: %d", err);
    int w = lguest_blk_write(&blk, 0, sector0, sizeof(sector0));
    int beyond = lguest_blk_read(&blk, blk.num_sectors, other, sizeof(other));
    printf("blkro write=%d beyond=%d\n", w, beyond);
    if (w != -PV_EIO || beyond != -PV_EIO)
        FAIL("blkro: expected write=%d beyond=%d", -PV_EIO, -PV_EIO);
    return 0;
}

/* --- net -------------------------------------------------------------------------------- */
static struct lguest_netdev net;
static uint8_t frame[LGUEST_PAGE_SIZE];

static int net_open(int promisc)
{
    int err = lguest_net_probe(&net, 0);
    if (!err)
        err = lguest_net_open(&net, promisc);
    if (err) {
        printf("FAILED net open: %d\n", err);
        return 1;
    }
    return 0;
}

static void make_frame(const uint8_t dst[6], long i, size_t size)
{
    memcpy(frame, dst, 6);
    memcpy(frame + 6, net.mac, 6);
    frame[12] = ETHERTYPE >> 8;
    frame[13] = ETHERTYPE & 0xff;
    for (size_t k = 0; k + LGUEST_ETH_HLEN < size; k++)
        frame[LGUEST_ETH_HLEN + k] = (uint8_t)(i + (long)k);
}

/* Peers that missed a frame through all its retries: a broadcast run does
 * not retry them again (a LAN member that never opens its device costs
 * ~1 s once, not ~1 s a frame). */
static uint8_t dead[(LGUEST_NET_MAX_SLOTS + 7) / 8];

static void skip_dead(void)
{
    for (unsigned i = 0; i < sizeof(dead); i++) {
        uint8_t both = net.missed[i] & dead[i];
        net.missed[i] &= (uint8_t)~both;
        net.tx_missed -= (unsigned)__builtin_popcount(both);
    }
}

/* Send the frame; retry, about every ms and up to 1000 times, to the peers
 * that missed it (with bury: not those that were buried before, and bury
 * those still missing at the end).  1 if every matching peer took it. */
static int send_retrying(size_t size, int *peers, int bury)
{
    int got = lguest_net_send(&net, frame, size);
    if (got < 0)
        return got;
    *peers = got;
    if (bury)
        skip_dead();
    for (int r = 0; r < 1000 && net.tx_missed; r++) {
        pv_wait(1 * MS);
        int more = lguest_net_resend(&net);
        if (more < 0)
            return more;
        *peers += more;
    }
    if (bury)
        for (unsigned i = 0; i < sizeof(dead); i++)
            dead[i] |= net.missed[i];
    return net.tx_missed == 0 && *peers > 0;
}

static int mode_netsend(int argc, char **argv)
{
    long dst_slot, n, size;
    if (num_arg(argc, argv, 2, 0, &dst_slot) || num_arg(argc, argv, 3, 0, &n) ||
        num_arg(argc, argv, 4, LGUEST_ETH_HLEN, &size) || size > LGUEST_NET_MAX_FRAME)
        return usage();
    if (net_open(0))
        return 1;
    if ((unsigned long)dst_slot >= net.nslots || (unsigned long)dst_slot == net.me)
        FAIL("netsend: slot %ld is not a peer's (I am %u of %u)", dst_slot, net.me, net.nslots);
    uint8_t dst[6];
    uint64_t deadline = lguest_clock_ns() + 5000 * MS;
    while (lguest_net_slot_mac(&net, (unsigned)dst_slot, dst) != 1) {
        if (lguest_clock_ns() >= deadline)
            FAIL("netsend: slot %ld unused after 5 s", dst_slot);
        pv_wait(1 * MS);
    }
    dst[0] &= (uint8_t)~LGUEST_NET_PROMISC;   /* a unicast address */
    /* The host writes the MACs before the guests run: give the other guests
     * time to open (a promiscuous one is a target only once it has). */
    pv_wait(200 * MS);
    long delivered = 0;
    for (long i = 0; i < n; i++) {
        make_frame(dst, i, (size_t)size);
        int peers, r = send_retrying((size_t)size, &peers, 0);
        if (r < 0)
            FAIL("netsend: send %ld: %d", i, r);
        delivered += r;
    }
    printf("netsend sent=%ld delivered=%ld\n", n, delivered);
    return 0;
}

static int mode_netrecv(int argc, char **argv)
{
    long n, timeout_ms;
    if (num_arg(argc, argv, 2, 0, &n) || num_arg(argc, argv, 3, 1, &timeout_ms))
        return usage();
    int promisc = argc > 4 && !strcmp(argv[4], "promisc");
    if (argc > 4 && !promisc)
        return usage();
    if (net_open(promisc))
        return 1;
    static uint8_t buf[LGUEST_NET_MAX_FRAME];
    long got = 0, bytes = 0, bad = 0;
    uint64_t deadline = lguest_clock_ns() + (uint64_t)timeout_ms * MS;
    while (got < n) {
        uint64_t now = lguest_clock_ns();
        if (now >= deadline)
            break;
        long len = lguest_net_recv(&net, buf, sizeof(buf), deadline - now);
        if (len < 0)
            FAIL("netrecv: %ld", len);
        if (len == 0)
            break;
        got++;
        bytes += len;
        uint8_t i = len > LGUEST_ETH_HLEN ? buf[LGUEST_ETH_HLEN] : 0;
        for (long k = 0; k + LGUEST_ETH_HLEN < len; k++)
            if (buf[LGUEST_ETH_HLEN + k] != (uint8_t)(i + k)) {
                bad++;
                break;
            }
    }
    printf("netrecv got=%ld bytes=%ld bad=%ld\n", got, bytes, bad);
    printf("netrecv mac=%02x:%02x:%02x:%02x:%02x:%02x\n", net.mac[0], net.mac[1], net.mac[2],
           net.mac[3], net.mac[4], net.mac[5]);
    return 0;
}

static const uint8_t broadcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

static int mode_netbcast(int argc, char **argv)
{
    long n, size;
    if (num_arg(argc, argv, 2, 0, &n) || num_arg(argc, argv, 3, LGUEST_ETH_HLEN, &size) ||
        size > LGUEST_NET_MAX_FRAME)
        return usage();
    if (net_open(0))
        return 1;
    pv_wait(200 * MS);
    long delivered = 0;
    for (long i = 0; i < n; i++) {
        make_frame(broadcast, i, (size_t)size);
        int peers, r = send_retrying((size_t)size, &peers, 1);
        if (r < 0)
            FAIL("netbcast: send %ld: %d", i, r);
        delivered += r;
    }
    printf("netbcast sent=%ld\n", n);
    printf("netbcast delivered=%ld\n", delivered);
    return 0;
}

static int mode_netbig(void)
{
    if (net_open(0))
        return 1;
    pv_wait(200 * MS);
    make_frame(broadcast, 0, LGUEST_NET_MAX_FRAME + 1);
    int driver = lguest_net_send(&net, frame, LGUEST_NET_MAX_FRAME + 1);
    /* Past the driver: the same frame straight to the first peer's key. */
    static struct lguest_dma raw;
    uint8_t mac[6];
    unsigned peer = 0;
    while (peer < net.nslots && (peer == net.me || lguest_net_slot_mac(&net, peer, mac) != 1))
        peer++;
    if (peer == net.nslots)
        FAIL("netbig: no peer on the LAN");
    lguest_dma_fill(&raw, frame, LGUEST_NET_MAX_FRAME + 1);
    lguest_send_dma(net.page + 4 * peer, &raw);
    make_frame(broadcast, 1, LGUEST_NET_MAX_FRAME);
    int peers, r = send_retrying(LGUEST_NET_MAX_FRAME, &peers, 1);
    if (r < 0)
        FAIL("netbig: send of %d bytes: %d", LGUEST_NET_MAX_FRAME, r);
    printf("netbig sent=2\n");
    printf("netbig driver=%d raw=%u delivered=%d\n", driver, lguest_dma_used(&raw), peers);
    return 0;
}

static int mode_badsend(void)
{
    static char buf[8192] __attribute__((aligned(4096)));
    static struct lguest_dma dma;
    printf("badsend\n");
    dma.addr[0] = (uint64_t)(uintptr_t)(buf + 4000);
    dma.len[0] = 200;                    /* 4000 + 200 crosses the page */
    lguest_send_dma(LGUEST_CONSOLE_DMA_KEY, &dma);
    printf("survived\n");
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    const char *m = argv[1];
    if (!strcmp(m, "bind"))
        return mode_bind();
    if (!strcmp(m, "console"))
        return mode_console();
    if (!strcmp(m, "blksum"))
        return mode_blksum(argc, argv);
    if (!strcmp(m, "blkwrite"))
        return mode_blkwrite(argc, argv);
    if (!strcmp(m, "blkro"))
        return mode_blkro();
    if (!strcmp(m, "netsend"))
        return mode_netsend(argc, argv);
    if (!strcmp(m, "netrecv"))
        return mode_netrecv(argc, argv);
    if (!strcmp(m, "netbcast"))
        return mode_netbcast(argc, argv);
    if (!strcmp(m, "netbig"))
        return mode_netbig();
    if (!strcmp(m, "badsend"))
        return mode_badsend();
    return usage();
}
