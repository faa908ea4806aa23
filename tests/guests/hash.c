/* hash: the SDK's SHA-256 and CRC-32 inside a guest, every implementation.
 *   hash SEED [MIB]
 * The data is the little-endian byte stream of splitmix64 words from SEED
 * (tests/kvm/test_guest_hash.py makes the same bytes in Python).  Over the
 * CHECK_LEN bytes starting at stream offset 1 (an odd address, to exercise
 * unaligned loads), fed in 64 KiB pieces, it prints
 *   impl sha256 <pv_sha256_impl()>      impl crc32 <pclmul|table>
 *   sha256 <impl> <64 hex digits>       (sha-ni where the CPU has it, generic)
 *   crc32 <impl> <8 hex digits>         (pclmul where the CPU has it, table)
 * then throughput over the first MIB MiB (default 16; best of 3 passes):
 *   MB/s <what> <rate>
 * for sha256-sha-ni and crc32-pclmul (where the CPU has them),
 * pipeline-<sha impl>-<crc impl> (SHA-256 and CRC-32 of each 64 KiB chunk,
 * as the pipeline example does), sha256-generic and crc32-table; then "done". */
#include <paravm.h>
#include <paravm/sha256.h>

#define CHUNK (64 * 1024)
#define CHECK_LEN (1024 * 1024 + 77)

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void sha256_chunks(const uint8_t *p, size_t n, uint8_t digest[32])
{
    struct pv_sha256 s;
    pv_sha256_init(&s);
    for (size_t off = 0; off < n; off += CHUNK)
        pv_sha256_update(&s, p + off, n - off < CHUNK ? n - off : CHUNK);
    pv_sha256_final(&s, digest);
}

static uint32_t crc32_chunks(const uint8_t *p, size_t n)
{
    uint32_t crc = 0;
    for (size_t off = 0; off < n; off += CHUNK)
        crc = pv_crc32(crc, p + off, n - off < CHUNK ? n - off : CHUNK);
    return crc;
}

static void print_sha(const uint8_t *p)
{
    uint8_t d[32];
    sha256_chunks(p, CHECK_LEN, d);
    printf("sha256 %s ", pv_sha256_impl());
    for (int i = 0; i < 32; i++)
        printf("%02x", d[i]);
    printf("\n");
}

enum { RUN_SHA, RUN_CRC, RUN_BOTH };

/* Best MB/s (10^6 bytes per second) of three passes over n bytes. */
static unsigned long rate(int what, const uint8_t *p, size_t n)
{
    uint64_t best = ~0ull;
    volatile uint32_t sink = 0;
    for (int pass = 0; pass < 3; pass++) {
        uint8_t d[32];
        uint64_t t0 = pv_clock_ns();
        if (what == RUN_SHA) {
            sha256_chunks(p, n, d);
        } else if (what == RUN_CRC) {
            d[0] = (uint8_t)crc32_chunks(p, n);
        } else {
            struct pv_sha256 s;
            uint32_t crc = 0;
            pv_sha256_init(&s);
            for (size_t off = 0; off < n; off += CHUNK) {
                size_t k = n - off < CHUNK ? n - off : CHUNK;
                pv_sha256_update(&s, p + off, k);
                crc = pv_crc32(crc, p + off, k);
            }
            pv_sha256_final(&s, d);
            d[0] ^= (uint8_t)crc;
        }
        uint64_t ns = pv_clock_ns() - t0;
        sink += d[0];
        if (ns < best)
            best = ns;
    }
    (void)sink;
    return best ? (unsigned long)(n * 1000 / best) : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    uint64_t state = (uint64_t)strtol(argv[1], 0, 0);
    long mib = argc > 2 ? strtol(argv[2], 0, 0) : 16;
    if (mib < 2 || mib > 1024)
        return 2;
    size_t len = (size_t)mib << 20;
    uint8_t *buf = pv_page_alloc(len / 4096);
    if (!buf) {
        printf("no memory for %ld MiB\n", mib);
        return 1;
    }
    for (size_t i = 0; i < len; i += 8) {
        uint64_t w = splitmix64(&state);
        memcpy(buf + i, &w, 8);
    }

    const uint8_t *check = buf + 1;
    printf("impl sha256 %s\nimpl crc32 %s\n", pv_sha256_impl(), pv_crc32_impl());
    if (!strcmp(pv_sha256_impl(), "sha-ni"))
        print_sha(check);
    pv_sha256_force_generic(1);
    print_sha(check);
    pv_sha256_force_generic(0);
    if (!strcmp(pv_crc32_impl(), "pclmul"))
        printf("crc32 pclmul %08x\n", crc32_chunks(check, CHECK_LEN));
    pv_crc32_force_table(1);
    printf("crc32 table %08x\n", crc32_chunks(check, CHECK_LEN));
    pv_crc32_force_table(0);

    /* The figures for the implementations CPUID chose, then the portable ones. */
    if (!strcmp(pv_sha256_impl(), "sha-ni"))
        printf("MB/s sha256-sha-ni %lu\n", rate(RUN_SHA, buf, len));
    if (!strcmp(pv_crc32_impl(), "pclmul"))
        printf("MB/s crc32-pclmul %lu\n", rate(RUN_CRC, buf, len));
    printf("MB/s pipeline-%s-%s %lu\n", pv_sha256_impl(), pv_crc32_impl(),
           rate(RUN_BOTH, buf, len));
    pv_sha256_force_generic(1);
    pv_crc32_force_table(1);
    printf("MB/s sha256-generic %lu\n", rate(RUN_SHA, buf, len));
    printf("MB/s crc32-table %lu\n", rate(RUN_CRC, buf, len));
    pv_sha256_force_generic(0);
    pv_crc32_force_table(0);
    printf("done\n");
    return 0;
}
