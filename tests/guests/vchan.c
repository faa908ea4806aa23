/*
 * vchan test guest: one end of a vchan streams bytes, checksummed.
 *   vchan.elf server|client PEER PATH send|recv BYTES [LEFT_MIN RIGHT_MIN]
 * send: BYTES of a xorshift64 stream (seed 1, little-endian words);
 * recv: reads BYTES.  Either way it prints "crc32 %08x bytes %lu" of the
 * stream (zlib's CRC-32), then "done" after closing.
 */
#include <paravm.h>
#include <paravm/vchan.h>

static uint64_t xs_state = 1;
static uint64_t next_word(void)
{
    xs_state ^= xs_state << 13;
    xs_state ^= xs_state >> 7;
    xs_state ^= xs_state << 17;
    return xs_state;
}

static uint8_t buf[65536] __attribute__((aligned(64)));
static struct vchan v;

int main(int argc, char **argv)
{
    if (argc < 6) {
        printf("usage: vchan server|client PEER PATH send|recv BYTES\n");
        return 2;
    }
    int server = !strcmp(argv[1], "server");
    domid_t peer = (domid_t)strtol(argv[2], 0, 10);
    int sending = !strcmp(argv[4], "send");
    unsigned long total = (unsigned long)strtol(argv[5], 0, 10);
    size_t left_min = argc > 6 ? (size_t)strtol(argv[6], 0, 10) : 65536;
    size_t right_min = argc > 7 ? (size_t)strtol(argv[7], 0, 10) : 65536;
    int r = server ? vchan_server_init(&v, peer, argv[3], left_min, right_min)
                   : vchan_client_init(&v, peer, argv[3], 10000000000ull);
    if (r < 0) {
        printf("init failed %d\n", r);
        return 1;
    }
    printf("ready\n");
    uint32_t crc = 0;
    unsigned long done = 0;
    uint64_t t0 = pv_clock_ns();
    while (done < total) {
        size_t chunk = total - done < sizeof buf ? total - done : sizeof buf;
        long n;
        if (sending) {
            for (size_t i = 0; i < chunk; i += 8) {
                uint64_t w = next_word();
                memcpy(buf + i, &w, chunk - i < 8 ? chunk - i : 8);
            }
            n = vchan_write(&v, buf, chunk);
            if (n != (long)chunk) {
                printf("write failed %ld\n", n);
                return 1;
            }
        } else {
            n = vchan_read(&v, buf, chunk);
            if (n <= 0) {
                printf("read failed %ld at %lu\n", n, done);
                return 1;
            }
        }
        crc = pv_crc32(crc, buf, (size_t)n);
        done += (unsigned long)n;
    }
    uint64_t ns = pv_clock_ns() - t0;
    printf("crc32 %08x bytes %lu ns %lu\n", crc, done, (unsigned long)ns);
    /* The receiver closes first only after everything arrived; the sender
     * waits for it so its last bytes are not cut off by its own close. */
    if (sending)
        while (vchan_is_open(&v))
            vchan_wait(&v, 10000000);
    vchan_close(&v);
    printf("done\n");
    return 0;
}
