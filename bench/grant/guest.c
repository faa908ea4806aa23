/*
 * The guest of bench/grant.
 *   guest.elf share N        grant N pages (filled with their index) to the
 *                            host, print "RESULT refs=FIRST count=N", idle
 *   guest.elf vchan BYTES    serve a vchan to the host at data/vchan (64 KiB
 *                            rings) and stream BYTES of zeros-and-counters to it
 */
#include <paravm.h>
#include <paravm/gnttab.h>
#include <paravm/vchan.h>

static uint8_t buf[65536] __attribute__((aligned(4096)));
static struct vchan v;

static int share(long n)
{
    if (gnttab_init() < 0)
        return 1;
    uint8_t *pages = pv_page_alloc((size_t)n);
    if (!pages)
        return 1;
    int first = -1;
    for (long i = 0; i < n; i++) {
        memset(pages + i * 4096, (int)i, 4096);
        int ref = gnttab_grant_foreign_access(0, virt_to_gfn(pages + i * 4096), 0);
        if (ref < 0 || (first >= 0 && ref != first + i))
            return 1;
        if (first < 0)
            first = ref;
    }
    printf("RESULT refs=%d count=%ld\n", first, n);
    for (;;)
        pv_wait(0);
}

static int stream(unsigned long total)
{
    if (vchan_server_init(&v, 0, "data/vchan", 65536, 65536) < 0)
        return 1;
    puts("ready");
    unsigned long done = 0;
    while (done < total) {
        size_t n = total - done < sizeof buf ? total - done : sizeof buf;
        *(unsigned long *)buf = done;
        if (vchan_write(&v, buf, n) != (long)n)
            return 1;
        done += n;
    }
    while (vchan_is_open(&v))
        vchan_wait(&v, 10000000);
    vchan_close(&v);
    printf("RESULT sent=%lu\n", done);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    if (!strcmp(argv[1], "share"))
        return share(strtol(argv[2], 0, 10));
    if (!strcmp(argv[1], "vchan"))
        return stream((unsigned long)strtol(argv[2], 0, 10));
    return 2;
}
