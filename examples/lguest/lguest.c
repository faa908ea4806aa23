/* lguest: devices through lguest DMA (docs/lguest.md).
 *   lguest reader     its console and its disk: prints the disk's size, its
 *                     line count and first line through the lguest console
 *   lguest ping N     sends N frames on the LAN to slot 1, waits for each reply
 *   lguest pong N     answers N frames, swapping the addresses
 * Run: paravm run examples/lguest/lguest.toml */
#include <paravm.h>
#include <paravm/lguest.h>

static struct lguest_console con;
static struct lguest_blk blk;
static struct lguest_netdev net;
static char disk[1 << 20];
static uint8_t frame[LGUEST_NET_MAX_FRAME];

static int reader(void)
{
    if (lguest_console_probe(&con, 0) || lguest_blk_probe(&blk, 0))
        return 1;
    lguest_console_set_printf(&con);          /* printf goes through DMA from here */
    size_t n = blk.disk_bytes < sizeof(disk) ? blk.disk_bytes : sizeof(disk);
    if (lguest_blk_read(&blk, 0, disk, (n + 511) / 512 * 512))
        return 1;
    size_t lines = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (disk[i] == '\n' && lines++ == 0)
            first = i;
    printf("disk: %lu bytes, %lu lines; the first: '%.*s'\n", (unsigned long)blk.disk_bytes,
           (unsigned long)lines, (int)first, disk);
    return 0;
}

static int pingpong(int ping, long count)
{
    if (lguest_net_probe(&net, 0) || lguest_net_open(&net, 0))
        return 1;
    uint8_t peer[6];
    while (lguest_net_slot_mac(&net, ping ? 1 : 0, peer) != 1)
        pv_wait(1000000);                     /* the peer is not on the LAN yet */
    pv_wait(200000000);                       /* let it bind its buffers */
    for (long i = 0; i < count; i++) {
        long len;
        if (ping) {
            memcpy(frame, peer, 6);
            memcpy(frame + 6, net.mac, 6);
            frame[12] = 0x88, frame[13] = 0xb5;
            len = 14 + snprintf((char *)frame + 14, 64, "ping %ld", i) + 1;
            while (lguest_net_send(&net, frame, (size_t)len) < 1)
                pv_wait(1000000);
        }
        len = lguest_net_recv(&net, frame, sizeof(frame), 5000000000ull);
        if (len <= 14)
            return 1;
        if (ping) {
            printf("%s -> '%s'\n", "sent ping", (char *)frame + 14);
            continue;
        }
        memcpy(frame, frame + 6, 6);           /* reply to the sender */
        memcpy(frame + 6, net.mac, 6);
        memcpy(frame + 14, "pong", 4);
        while (lguest_net_send(&net, frame, (size_t)len) < 1)
            pv_wait(1000000);
    }
    printf("%s done: %ld frames, mac %02x:%02x:%02x:%02x:%02x:%02x\n", ping ? "ping" : "pong",
           count, net.mac[0], net.mac[1], net.mac[2], net.mac[3], net.mac[4], net.mac[5]);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "reader"))
        return reader();
    if (argc >= 3 && (!strcmp(argv[1], "ping") || !strcmp(argv[1], "pong")))
        return pingpong(argv[1][1] == 'i', strtol(argv[2], 0, 0));
    printf("usage: lguest reader | ping N | pong N\n");
    return 2;
}
