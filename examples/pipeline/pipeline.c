/* pipeline: a file through two guests, checked by the host.
 *
 *   pipeline reader QUEUE [flip=OFFSET]
 *       Stream the whole of lguest block device 0 (the input file) over IVC
 *       queue QUEUE in 256 KiB frames (pipeline.h), then an END frame.
 *       QUEUE -1: read the device and drop the data (the benchmark's
 *       disk-only baseline).  flip=OFFSET flips the low bit of the byte at
 *       OFFSET on its way (a fault injected on purpose: the host must say
 *       MISMATCH).
 *   pipeline hasher QUEUE [WAIT_S]
 *       Grant a result page to the host, publish its grant reference and an
 *       event channel in xenstore (data/pipeline/result-ref, .../event-channel),
 *       take the stream from QUEUE, compute SHA-256 and CRC-32 of it, write
 *       them to the page, signal the event channel, and wait for the host
 *       to take them (up to WAIT_S seconds, default 60, for it to map the
 *       page; then as long as it holds the mapping) before revoking the
 *       grant.
 *
 * A peer that crashes resets the queue (the VMM does it for the dead end):
 * the survivor sees -ECONNRESET and stops at once instead of waiting out
 * its 60 s stall limit.
 *
 * Run: paravm run examples/pipeline/pipeline.toml --input FILE
 */
#include <paravm.h>
#include <paravm/evtchn.h>
#include <paravm/gnttab.h>
#include <paravm/lguest.h>
#include <paravm/sha256.h>
#include <paravm/tegra_hv.h>
#include <paravm/xenstore.h>

#include "pipeline.h"

#define SLICE_NS     100000000ull       /* waits look at their deadline this often */
#define STALL_NS     60000000000ull     /* a peer silent this long has gone */

static uint8_t chunk[PIPE_CHUNK] __attribute__((aligned(4096)));

/* The TSC clock (no exit; pv_clock_ns is a hypercall, ~50 us here): the
 * fast paths read no clock at all, deadlines start at the first wait. */
static uint64_t now_ns(void) { return lguest_clock_ns(); }
static uint64_t after(uint64_t ns) { return now_ns() + ns; }

/* Wait for the queue's interrupt (or a slice); 0 once deadline passed. */
static int wait_queue(struct tegra_hv_ivc_cookie *c, uint64_t deadline)
{
    if (now_ns() >= deadline)
        return 0;
    pv_wait(SLICE_NS);
    tegra_hv_ivc_channel_notified(c);
    return 1;
}

static struct tegra_hv_ivc_cookie *open_queue(const char *who, long id)
{
    struct tegra_hv_ivc_cookie *c = tegra_hv_ivc_reserve(0, (int)id, 0);
    if (PV_IS_ERR(c)) {
        printf("%s: no IVC queue %ld: error %ld\n", who, id, PV_PTR_ERR(c));
        return 0;
    }
    if (c->frame_size < (int)PIPE_FRAME_SIZE) {
        printf("%s: queue %ld has %d-byte frames, needs %u\n", who, id, c->frame_size,
               PIPE_FRAME_SIZE);
        return 0;
    }
    tegra_hv_ivc_channel_reset(c);
    uint64_t deadline = after(STALL_NS);
    while (tegra_hv_ivc_channel_notified(c) != 0)
        if (!wait_queue(c, deadline)) {
            printf("%s: the peer never answered on queue %ld\n", who, id);
            return 0;
        }
    return c;
}

/* The next frame to write (tx) or to read, waiting for the peer: NULL with
 * *err = -PV_ECONNRESET when the queue was reset (the peer is gone) or
 * -PV_ETIMEDOUT when it stalled. */
static void *next_frame(struct tegra_hv_ivc_cookie *c, int tx, int *err)
{
    uint64_t deadline = 0;
    for (;;) {
        void *f = tx ? tegra_hv_ivc_write_get_next_frame(c)
                     : tegra_hv_ivc_read_get_next_frame(c);
        if (!PV_IS_ERR(f))
            return f;
        if (PV_PTR_ERR(f) == -PV_ECONNRESET) {
            *err = -PV_ECONNRESET;
            return 0;
        }
        if (!deadline)
            deadline = after(STALL_NS);
        if (!wait_queue(c, deadline)) {
            *err = -PV_ETIMEDOUT;
            return 0;
        }
    }
}

static int send_frame(struct tegra_hv_ivc_cookie *c, uint32_t kind, uint32_t len, uint32_t seq,
                      uint64_t offset, uint64_t total, const void *data)
{
    int err;
    struct pipe_frame *f = next_frame(c, 1, &err);
    if (!f)
        return err;
    f->magic = PIPE_FRAME_MAGIC;
    f->kind = kind;
    f->len = len;
    f->seq = seq;
    f->offset = offset;
    f->total = total;
    if (kind == PIPE_DATA)
        memcpy((uint8_t *)f + PIPE_HDR_SIZE, data, len);
    return tegra_hv_ivc_write_advance(c);
}

static int reader(long queue, long flip)
{
    static struct lguest_blk blk;
    int err = lguest_blk_probe(&blk, 0);
    if (err) {
        printf("reader: no block device: error %d\n", err);
        return 1;
    }
    struct tegra_hv_ivc_cookie *c = queue >= 0 ? open_queue("reader", queue) : 0;
    if (queue >= 0 && !c)
        return 1;
    uint64_t total = blk.disk_bytes, off = 0, t0 = now_ns();
    uint32_t seq = 0;
    while (off < total) {
        uint32_t len = total - off < PIPE_CHUNK ? (uint32_t)(total - off) : PIPE_CHUNK;
        /* whole sectors: the host fills the tail of the last one with zeros */
        err = lguest_blk_read(&blk, off / 512, chunk, (len + 511u) & ~511u);
        if (err) {
            printf("reader: read of %u bytes at %llu failed: error %d\n", len,
                   (unsigned long long)off, err);
            if (c)
                send_frame(c, PIPE_ERROR, (uint32_t)err, seq, off, total, 0);
            return 1;
        }
        if (flip >= 0 && (uint64_t)flip >= off && (uint64_t)flip < off + len)
            chunk[flip - off] ^= 1;
        if (c && (err = send_frame(c, PIPE_DATA, len, seq++, off, total, chunk))) {
            printf("reader: the hasher stopped taking frames (error %d)\n", err);
            return 1;
        }
        off += len;
    }
    uint64_t ns = now_ns() - t0;
    if (c) {
        if ((err = send_frame(c, PIPE_END, 0, seq, off, total, 0))) {
            printf("reader: the hasher stopped taking frames (error %d)\n", err);
            return 1;
        }
        uint64_t deadline = after(STALL_NS);
        while (!tegra_hv_ivc_tx_empty(c))
            if (!wait_queue(c, deadline))
                return 1;
    }
    printf("read %llu bytes in %llu.%03llu ms: %llu MB/s\n", (unsigned long long)total,
           (unsigned long long)(ns / 1000000), (unsigned long long)(ns / 1000 % 1000),
           (unsigned long long)(ns ? total * 1000 / ns : 0));
    return 0;
}

/* The hasher's side of the stream: DONE or FAILED in r. */
static void take_stream(struct tegra_hv_ivc_cookie *c, volatile struct pipe_result *r)
{
    struct pv_sha256 sha;
    pv_sha256_init(&sha);
    uint32_t crc = 0, seq = 0;
    uint64_t bytes = 0, total = 0, t0 = 0;
    for (;;) {
        int err;
        const uint8_t *f = next_frame(c, 0, &err);
        if (!f) {
            r->error = err;
            return;
        }
        if (!t0)
            t0 = now_ns();
        struct pipe_frame h;
        memcpy(&h, f, sizeof h);            /* the header once: the reader may change it */
        if (seq == 0)
            total = h.total;
        if (h.magic != PIPE_FRAME_MAGIC || h.seq != seq || h.total != total) {
            r->error = PIPE_EPROTO;
            return;
        }
        if (h.kind == PIPE_ERROR) {
            r->error = (int32_t)h.len;
            return;
        }
        if (h.kind == PIPE_END) {
            if (bytes != total) {
                r->error = PIPE_EPROTO;
                return;
            }
            tegra_hv_ivc_read_advance(c);
            break;
        }
        if (h.kind != PIPE_DATA || h.len == 0 || h.len > PIPE_CHUNK || h.offset != bytes
            || h.len > total - bytes) {
            r->error = PIPE_EPROTO;
            return;
        }
        /* The payload is hashed in place: a reader changing it under us only
         * changes what it sent. */
        pv_sha256_update(&sha, f + PIPE_HDR_SIZE, h.len);
        crc = pv_crc32(crc, f + PIPE_HDR_SIZE, h.len);
        tegra_hv_ivc_read_advance(c);
        bytes += h.len;
        seq++;
        __atomic_store_n(&r->bytes, bytes, __ATOMIC_RELAXED);
    }
    uint8_t digest[32];
    pv_sha256_final(&sha, digest);
    memcpy((void *)r->sha256, digest, sizeof digest);
    r->crc32 = crc;
    r->total = total;
    r->bytes = bytes;
    r->stream_ns = t0 ? now_ns() - t0 : 0;
    __atomic_store_n(&r->state, PIPE_DONE, __ATOMIC_RELEASE);   /* after everything above */
}

static int hasher(long queue, long wait_s)
{
    int err = gnttab_init();
    if (err) {
        printf("hasher: no grant table: error %d\n", err);
        return 1;
    }
    volatile struct pipe_result *r = pv_page_alloc(1);
    if (!r)
        return 1;
    r->magic = PIPE_RESULT_MAGIC;
    const char *impl = pv_sha256_impl();
    for (unsigned i = 0; impl[i] && i < sizeof r->impl - 1; i++)
        r->impl[i] = impl[i];
    int port = evtchn_alloc_unbound(0);
    int ref = gnttab_grant_foreign_access(0, virt_to_gfn((const void *)r), 0);
    if (port < 0 || ref < 0) {
        printf("hasher: event channel %d, grant %d\n", port, ref);
        return 1;
    }
    char num[16];
    snprintf(num, sizeof num, "%d", ref);
    long e1 = xs_write("data/pipeline/result-ref", num, XS_NO_READER);
    snprintf(num, sizeof num, "%d", port);
    long e2 = xs_write("data/pipeline/event-channel", num, XS_NO_READER);
    if (e1 < 0 || e2 < 0) {
        printf("hasher: xenstore: %ld %ld\n", e1, e2);
        return 1;
    }
    struct tegra_hv_ivc_cookie *c = open_queue("hasher", queue);
    if (!c) {
        r->error = -PV_ENODEV;
    } else {
        take_stream(c, r);
    }
    if (r->state != PIPE_DONE) {
        __atomic_store_n(&r->state, PIPE_FAILED, __ATOMIC_RELEASE);
        printf("hasher: the stream failed: error %d\n", r->error);
    } else {
        uint64_t ns = r->stream_ns;
        printf("hashed %llu bytes in %llu.%03llu ms (SHA-256 %s, CRC-32)\n",
               (unsigned long long)r->bytes, (unsigned long long)(ns / 1000000),
               (unsigned long long)(ns / 1000 % 1000), impl);
    }
    evtchn_send((evtchn_port_t)port);
    /* The page stays granted until the host has read it and let go; the
     * deadline counts only while the host does not hold it (it may check
     * a large file before it lets go). */
    uint64_t deadline = after((uint64_t)wait_s * 1000000000ull);
    while (!(__atomic_load_n(&r->host_done, __ATOMIC_ACQUIRE)
             && gnttab_try_end_foreign_access((grant_ref_t)ref) == 0)) {
        uint64_t now = now_ns();
        if (gnttab_query_foreign_access((grant_ref_t)ref))
            deadline = now + (uint64_t)wait_s * 1000000000ull;
        if (now >= deadline) {
            printf("hasher: no host took the result in %ld s\n", wait_s);
            return r->state == PIPE_DONE ? 0 : 1;
        }
        evtchn_wait((evtchn_port_t)port, deadline - now < SLICE_NS ? deadline - now : SLICE_NS);
    }
    return r->state == PIPE_DONE ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[1], "reader")) {
        long flip = -1;
        if (argc >= 4 && !strncmp(argv[3], "flip=", 5))
            flip = strtol(argv[3] + 5, 0, 0);
        return reader(strtol(argv[2], 0, 0), flip);
    }
    if (argc >= 3 && !strcmp(argv[1], "hasher"))
        return hasher(strtol(argv[2], 0, 0), argc >= 4 ? strtol(argv[3], 0, 0) : 60);
    printf("usage: pipeline reader QUEUE [flip=OFFSET] | pipeline hasher QUEUE [WAIT_S]\n");
    return 2;
}
