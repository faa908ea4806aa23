/*
 * Two IVC endpoints on two threads over one coherent buffer, busy-polling:
 * exercises the library's fences under real concurrency, which the ctypes
 * tests (one thread) cannot.  Both threads reset, poll channel_notified()
 * until established, then each sends COUNT frames and receives COUNT frames,
 * mixing write / poke+advance / get_next_frame+advance and read /
 * peek+advance / get_next_frame+advance, and checks every frame's sequence
 * number, payload and zero padding.
 *
 *   ivc_stress [COUNT [NFRAMES [FRAME_SIZE]]]   (defaults 200000 16 128)
 * Prints "ok ..." and exits 0, or names the first mismatch and exits 1.
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "paravm/ivc.h"

#define HDR 12  /* u64 sequence number, u32 payload length */

struct end {
    struct tegra_ivc ivc;
    int id;
    unsigned long count;
    unsigned long notifies;
    const char *error;
    unsigned long error_seq;
};

static unsigned frame_size;
static volatile int failed;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void notify(struct tegra_ivc *ivc, void *data)
{
    (void)ivc;
    __atomic_add_fetch(&((struct end *)data)->notifies, 1, __ATOMIC_RELAXED);
}

static uint8_t pattern(int sender, uint64_t seq, unsigned i)
{
    return (uint8_t)(seq * 31 + i * 7 + sender * 101);
}

/* The full frame image for frame seq from sender. */
static void make_frame(uint8_t *f, int sender, uint64_t seq)
{
    uint32_t len = (uint32_t)((seq * 2654435761u) % (frame_size - HDR + 1));
    memset(f, 0, frame_size);
    memcpy(f, &seq, 8);
    memcpy(f + 8, &len, 4);
    for (unsigned i = 0; i < len; i++)
        f[HDR + i] = pattern(sender, seq, i);
}

static int try_write(struct end *e, uint64_t seq, uint8_t *img)
{
    make_frame(img, e->id, seq);
    uint32_t len;
    memcpy(&len, img + 8, 4);
    int r;
    switch (seq % 3) {
    case 0:
        r = tegra_ivc_write(&e->ivc, img, HDR + len);
        return r == (int)(HDR + len) ? 1 : r;
    case 1: {
        int err;
        void *p = tegra_ivc_write_get_next_frame_err(&e->ivc, &err);
        if (!p)
            return err;
        memcpy(p, img, frame_size);
        r = tegra_ivc_write_advance(&e->ivc);
        return r == 0 ? 1 : -1000 + r;
    }
    default:
        r = tegra_ivc_write_poke(&e->ivc, img, 0, frame_size);
        if (r < 0)
            return r;
        r = tegra_ivc_write_advance(&e->ivc);
        return r == 0 ? 1 : -1000 + r;
    }
}

static int try_read(struct end *e, uint64_t seq, uint8_t *buf, uint8_t *img)
{
    int r;
    switch (seq % 4) {
    case 0:
        r = tegra_ivc_read(&e->ivc, buf, frame_size);
        break;
    case 1:
        r = tegra_ivc_read_peek(&e->ivc, buf, 0, frame_size);
        if (r >= 0 && (r = tegra_ivc_read_advance(&e->ivc)) == 0)
            r = (int)frame_size;
        break;
    case 2: {
        int err;
        void *p = tegra_ivc_read_get_next_frame_err(&e->ivc, &err);
        if (!p)
            return err;
        memcpy(buf, p, frame_size);
        r = tegra_ivc_read_advance(&e->ivc);
        if (r == 0)
            r = (int)frame_size;
        break;
    }
    default:    /* a short read still consumes the whole frame */
        r = tegra_ivc_read(&e->ivc, buf, HDR);
        break;
    }
    if (r < 0)
        return r;
    make_frame(img, 1 - e->id, seq);
    if (memcmp(buf, img, (size_t)r) != 0) {
        e->error = "frame content mismatch";
        e->error_seq = seq;
        return -9999;
    }
    return 1;
}

static void *run(void *arg)
{
    struct end *e = arg;
    uint8_t *img = malloc(frame_size), *buf = malloc(frame_size), *img2 = malloc(frame_size);
    double deadline = now() + 60;
    uint64_t sent = 0, got = 0;
    int empty_full = (e->ivc.flags & TEGRA_IVC_FLAG_ENOSPC) ? -PV_ENOSPC : -PV_ENOMEM;

    tegra_ivc_channel_reset(&e->ivc);
    while (tegra_ivc_channel_notified(&e->ivc) != 0) {
        if (failed || now() > deadline) {
            e->error = "handshake did not complete";
            goto out;
        }
        sched_yield();
    }
    unsigned long spins = 0;
    while ((sent < e->count || got < e->count) && !failed) {
        int progress = 0;
        if (sent < e->count) {
            int r = try_write(e, sent, img);
            if (r == 1) {
                sent++;
                progress = 1;
            } else if (r != empty_full) {
                e->error = "write failed";
                e->error_seq = sent;
                goto out;
            }
        }
        if (got < e->count) {
            int r = try_read(e, got, buf, img2);
            if (r == 1) {
                got++;
                progress = 1;
            } else if (r != empty_full) {
                if (!e->error)
                    e->error = "read failed";
                e->error_seq = got;
                goto out;
            }
        }
        if (!progress && (++spins & 0xff) == 0) {
            if (now() > deadline) {
                e->error = "timed out";
                goto out;
            }
            sched_yield();
        }
    }
out:
    if (e->error)
        failed = 1;
    free(img);
    free(buf);
    free(img2);
    return NULL;
}

int main(int argc, char **argv)
{
    unsigned long count = argc > 1 ? strtoul(argv[1], NULL, 0) : 200000;
    unsigned nframes = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 0) : 16;
    frame_size = argc > 3 ? (unsigned)strtoul(argv[3], NULL, 0) : 128;
    if (frame_size < 64) {
        fprintf(stderr, "frame size must be >= 64\n");
        return 2;
    }
    size_t chan = tegra_ivc_total_queue_size(nframes * frame_size);
    uint8_t *mem = aligned_alloc(64, 2 * chan);
    memset(mem, 0, 2 * chan);
    struct end a = {.id = 0, .count = count}, b = {.id = 1, .count = count};
    if (tegra_ivc_init(&a.ivc, mem, mem + chan, nframes, frame_size, notify, &a) ||
        tegra_ivc_init(&b.ivc, mem + chan, mem, nframes, frame_size, notify, &b)) {
        fprintf(stderr, "tegra_ivc_init failed\n");
        return 2;
    }
    double t0 = now();
    pthread_t ta, tb;
    pthread_create(&ta, NULL, run, &a);
    pthread_create(&tb, NULL, run, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    double dt = now() - t0;
    for (struct end *e = &a; e; e = e == &a ? &b : NULL)
        if (e->error) {
            printf("FAIL endpoint %c: %s at frame %lu\n", 'A' + e->id, e->error, e->error_seq);
            return 1;
        }
    printf("ok frames=%lu each way, nframes=%u frame_size=%u, %.3f s, notifies A=%lu B=%lu\n",
           count, nframes, frame_size, dt, a.notifies, b.notifies);
    free(mem);
    return 0;
}
