/* ivc: a guest end of an IVC queue through the cookie API.
 *   ivc echo ID N     reset, handshake, then read N frames and send each back
 *                     with its first byte incremented; exit 0
 *   ivc ping ID N     reset, handshake, send N frames (i, then filler) and check
 *                     each reply; exit 0 if all came back right
 *   ivc api ID        checks of reserve/unreserve/loopback errors; exit 0 */
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

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    int id = (int)strtol(argv[2], 0, 0);
    long n = argc > 3 ? strtol(argv[3], 0, 0) : 0;
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
