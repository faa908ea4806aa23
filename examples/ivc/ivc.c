/* ivc: two guests talk over a Tegra IVC queue with the cookie API.
 *   ivc client ID WORD...   send each word, print the reply
 *   ivc server ID N         answer N frames with the text upper-cased
 * Run: paravm run examples/ivc/ivc.toml (guest to guest), or
 *      .venv/bin/python examples/ivc/host.py (the host is the client). */
#include <paravm.h>
#include <paravm/tegra_hv.h>

static void wait_ready(struct tegra_hv_ivc_cookie *c)
{
    /* a reset, then the handshake: both ends call channel_notified on each
     * interrupt until it returns 0 */
    tegra_hv_ivc_channel_reset(c);
    while (tegra_hv_ivc_channel_notified(c) != 0)
        pv_wait(0);
}

static void recv(struct tegra_hv_ivc_cookie *c, char *buf)
{
    while (tegra_hv_ivc_read(c, buf, c->frame_size) < 0) {
        pv_wait(0);                        /* the peer rings when it writes */
        tegra_hv_ivc_channel_notified(c);
    }
}

static void send(struct tegra_hv_ivc_cookie *c, const char *text)
{
    while (tegra_hv_ivc_write(c, text, (int)strlen(text) + 1) < 0) {
        pv_wait(0);                        /* full: the peer rings when it reads */
        tegra_hv_ivc_channel_notified(c);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    struct tegra_hv_ivc_cookie *c = tegra_hv_ivc_reserve(0, (int)strtol(argv[2], 0, 0), 0);
    if (PV_IS_ERR(c)) {
        printf("no queue %s: error %ld\n", argv[2], PV_PTR_ERR(c));
        return 1;
    }
    static char buf[4096];
    if (c->frame_size > (int)sizeof(buf))
        return 1;
    wait_ready(c);
    if (!strcmp(argv[1], "client")) {
        for (int i = 3; i < argc; i++) {
            send(c, argv[i]);
            recv(c, buf);
            printf("sent '%s', got '%s'\n", argv[i], buf);
        }
        return 0;
    }
    long n = argc > 3 ? strtol(argv[3], 0, 0) : 0;
    for (long i = 0; i < n; i++) {
        recv(c, buf);
        for (char *p = buf; *p; p++)
            if (*p >= 'a' && *p <= 'z')
                *p = (char)(*p - 'a' + 'A');
        send(c, buf);
    }
    printf("served %ld frames from vmid %d\n", n, c->peer_vmid);
    return 0;
}
