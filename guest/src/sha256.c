/* SHA-256 from FIPS 180-4 (paravm/sha256.h): the portable compression
 * function (§6.2.2) and one on the Intel SHA extensions, chosen by CPUID at
 * the first use.  Only stddef/stdint and the compiler's cpuid.h/immintrin.h
 * are included, so the file builds for the guest and for host tests alike. */
#include "paravm/sha256.h"

#if defined(__x86_64__) || defined(__i386__)
#define PV_SHA256_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

/* K: the first 32 bits of the fractional parts of the cube roots of the
 * first 64 primes (§4.2.2). */
static const uint32_t K[64] __attribute__((aligned(16))) = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u,
    0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u,
    0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu,
    0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u,
    0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u,
    0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u,
    0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u,
    0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u,
    0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u,
};

/* H(0): the first 32 bits of the fractional parts of the square roots of
 * the first 8 primes (§5.3.3). */
static const uint32_t H0[8] = {
    0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
    0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u,
};

static inline uint32_t load_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline void store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* --- portable: §4.1.2 functions, §6.2.2 computation ------------------------ */
#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define BSIG0(x) (ROTR(x, 2) ^ ROTR(x, 13) ^ ROTR(x, 22))
#define BSIG1(x) (ROTR(x, 6) ^ ROTR(x, 11) ^ ROTR(x, 25))
#define SSIG0(x) (ROTR(x, 7) ^ ROTR(x, 18) ^ ((x) >> 3))
#define SSIG1(x) (ROTR(x, 17) ^ ROTR(x, 19) ^ ((x) >> 10))
/* Ch(x,y,z) = (x & y) ^ (~x & z): per bit, x selects y or z. */
#define CH(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
/* Maj(x,y,z) = (x & y) ^ (x & z) ^ (y & z): per bit, the majority. */
#define MAJ(x, y, z) (((x) & (y)) | ((z) & ((x) | (y))))

/* Round t with the working variables renamed instead of moved: the caller
 * passes them rotated by one position each round. */
#define ROUND(a, b, c, d, e, f, g, h, t, w)                          \
    do {                                                             \
        uint32_t t1 = (h) + BSIG1(e) + CH(e, f, g) + K[t] + (w);     \
        (d) += t1;                                                   \
        (h) = t1 + BSIG0(a) + MAJ(a, b, c);                          \
    } while (0)

/* W[t] for t >= 16 (§6.2.2 step 1), in a ring of the last 16 words;
 * j = t mod 16. */
#define SCHED(w, j)                                                  \
    ((w)[j] += SSIG1((w)[((j) + 14) & 15]) + (w)[((j) + 9) & 15] +   \
               SSIG0((w)[((j) + 1) & 15]))

#define ROUNDS16(t0, W)                                                       \
    do {                                                                      \
        ROUND(a, b, c, d, e, f, g, h, (t0) + 0, W(0));                        \
        ROUND(h, a, b, c, d, e, f, g, (t0) + 1, W(1));                        \
        ROUND(g, h, a, b, c, d, e, f, (t0) + 2, W(2));                        \
        ROUND(f, g, h, a, b, c, d, e, (t0) + 3, W(3));                        \
        ROUND(e, f, g, h, a, b, c, d, (t0) + 4, W(4));                        \
        ROUND(d, e, f, g, h, a, b, c, (t0) + 5, W(5));                        \
        ROUND(c, d, e, f, g, h, a, b, (t0) + 6, W(6));                        \
        ROUND(b, c, d, e, f, g, h, a, (t0) + 7, W(7));                        \
        ROUND(a, b, c, d, e, f, g, h, (t0) + 8, W(8));                        \
        ROUND(h, a, b, c, d, e, f, g, (t0) + 9, W(9));                        \
        ROUND(g, h, a, b, c, d, e, f, (t0) + 10, W(10));                      \
        ROUND(f, g, h, a, b, c, d, e, (t0) + 11, W(11));                      \
        ROUND(e, f, g, h, a, b, c, d, (t0) + 12, W(12));                      \
        ROUND(d, e, f, g, h, a, b, c, (t0) + 13, W(13));                      \
        ROUND(c, d, e, f, g, h, a, b, (t0) + 14, W(14));                      \
        ROUND(b, c, d, e, f, g, h, a, (t0) + 15, W(15));                      \
    } while (0)

static void blocks_generic(uint32_t hv[8], const uint8_t *p, size_t nblocks)
{
    for (; nblocks; nblocks--, p += 64) {
        uint32_t w[16];
        for (int j = 0; j < 16; j++)
            w[j] = load_be32(p + 4 * j);
        uint32_t a = hv[0], b = hv[1], c = hv[2], d = hv[3];
        uint32_t e = hv[4], f = hv[5], g = hv[6], h = hv[7];
#define W_MSG(j) w[j]
#define W_SCHED(j) SCHED(w, j)
        ROUNDS16(0, W_MSG);
        for (int t = 16; t < 64; t += 16)
            ROUNDS16(t, W_SCHED);
#undef W_MSG
#undef W_SCHED
        hv[0] += a; hv[1] += b; hv[2] += c; hv[3] += d;
        hv[4] += e; hv[5] += f; hv[6] += g; hv[7] += h;
    }
}

/* --- Intel SHA extensions ----------------------------------------------------
 * SHA256RNDS2 runs two rounds on the state split in two registers, dwords
 * from high to low: {A,B,E,F} and {C,D,G,H}, with W[t]+K[t] for the two
 * rounds in the low two dwords of its implicit third operand; it returns the
 * new {A,B,E,F}.  Two rounds on, the new {C,D,G,H} is the old {A,B,E,F}, so
 * the two registers swap roles from one call to the next.
 * SHA256MSG1(W[t-16..t-13], W[t-12..t-9]) = W[t-16+j] + σ0(W[t-15+j]), j=0..3;
 * adding W[t-7..t-4] and passing that with W[t-4..t-1] to SHA256MSG2 adds
 * σ1(W[t-2+j]) and gives W[t..t+3] (those of W[t], W[t+1] computed first). */
#ifdef PV_SHA256_X86
#define SHA_TARGET __attribute__((target("sha,sse4.1,ssse3")))

/* Four rounds t..t+3 on the message words in m. */
#define SHA_ROUNDS4(m, t)                                                          \
    do {                                                                           \
        __m128i wk = _mm_add_epi32((m), _mm_load_si128((const __m128i *)&K[t]));   \
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk);                              \
        abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(wk, 0x0E));     \
    } while (0)

/* W[t..t+3] into m0 from m0..m3 = W[t-16..t-1]. */
#define SHA_SCHED4(m0, m1, m2, m3)                                                 \
    (m0) = _mm_sha256msg2_epu32(                                                   \
        _mm_add_epi32(_mm_sha256msg1_epu32((m0), (m1)), _mm_alignr_epi8((m3), (m2), 4)), \
        (m3))

SHA_TARGET
static void blocks_shani(uint32_t hv[8], const uint8_t *p, size_t nblocks)
{
    /* reverses the bytes of each dword: message words are big endian */
    const __m128i bswap = _mm_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3);
    __m128i abef = _mm_set_epi32((int)hv[0], (int)hv[1], (int)hv[4], (int)hv[5]);
    __m128i cdgh = _mm_set_epi32((int)hv[2], (int)hv[3], (int)hv[6], (int)hv[7]);
    for (; nblocks; nblocks--, p += 64) {
        __m128i abef_in = abef, cdgh_in = cdgh;
        __m128i m0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)p), bswap);
        __m128i m1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16)), bswap);
        __m128i m2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 32)), bswap);
        __m128i m3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 48)), bswap);
        SHA_ROUNDS4(m0, 0);
        SHA_ROUNDS4(m1, 4);
        SHA_ROUNDS4(m2, 8);
        SHA_ROUNDS4(m3, 12);
        for (int t = 16; t < 64; t += 16) {
            SHA_SCHED4(m0, m1, m2, m3);
            SHA_ROUNDS4(m0, t);
            SHA_SCHED4(m1, m2, m3, m0);
            SHA_ROUNDS4(m1, t + 4);
            SHA_SCHED4(m2, m3, m0, m1);
            SHA_ROUNDS4(m2, t + 8);
            SHA_SCHED4(m3, m0, m1, m2);
            SHA_ROUNDS4(m3, t + 12);
        }
        abef = _mm_add_epi32(abef, abef_in);
        cdgh = _mm_add_epi32(cdgh, cdgh_in);
    }
    uint32_t v[4];
    _mm_storeu_si128((__m128i *)v, abef);     /* v[0..3] = F, E, B, A */
    hv[0] = v[3]; hv[1] = v[2]; hv[4] = v[1]; hv[5] = v[0];
    _mm_storeu_si128((__m128i *)v, cdgh);     /* H, G, D, C */
    hv[2] = v[3]; hv[3] = v[2]; hv[6] = v[1]; hv[7] = v[0];
}

static int cpu_has_sha(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSSE3) || !(c & bit_SSE4_1))
        return 0;
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & bit_SHA);
}
#endif

/* --- choice --------------------------------------------------------------- */
enum { SHA_UNKNOWN, SHA_GENERIC, SHA_NI };
static int sha_way;           /* what the CPU allows: CPUID once, the same on every vCPU */
static int sha_forced_generic;

static int sha256_way(void)
{
    if (__atomic_load_n(&sha_forced_generic, __ATOMIC_RELAXED))
        return SHA_GENERIC;
    int way = __atomic_load_n(&sha_way, __ATOMIC_RELAXED);
    if (way == SHA_UNKNOWN) {
        way = SHA_GENERIC;
#ifdef PV_SHA256_X86
        if (cpu_has_sha())
            way = SHA_NI;
#endif
        __atomic_store_n(&sha_way, way, __ATOMIC_RELAXED);
    }
    return way;
}

static void compress(uint32_t h[8], const uint8_t *p, size_t nblocks)
{
#ifdef PV_SHA256_X86
    if (sha256_way() == SHA_NI) {
        blocks_shani(h, p, nblocks);
        return;
    }
#endif
    blocks_generic(h, p, nblocks);
}

const char *pv_sha256_impl(void)
{
    return sha256_way() == SHA_NI ? "sha-ni" : "generic";
}

int pv_sha256_force_generic(int on)
{
    return __atomic_exchange_n(&sha_forced_generic, on ? 1 : 0, __ATOMIC_RELAXED);
}

/* --- streaming -------------------------------------------------------------- */
void pv_sha256_init(struct pv_sha256 *s)
{
    for (int i = 0; i < 8; i++)
        s->h[i] = H0[i];
    s->bytes = 0;
    s->buffered = 0;
}

void pv_sha256_update(struct pv_sha256 *s, const void *p, size_t n)
{
    const uint8_t *b = p;
    s->bytes += n;
    if (s->buffered) {
        size_t take = 64 - s->buffered;
        if (take > n)
            take = n;
        __builtin_memcpy(s->buf + s->buffered, b, take);
        s->buffered += (uint32_t)take;
        b += take;
        n -= take;
        if (s->buffered < 64)
            return;
        compress(s->h, s->buf, 1);
        s->buffered = 0;
    }
    if (n >= 64) {
        compress(s->h, b, n / 64);
        b += n & ~(size_t)63;
        n &= 63;
    }
    if (n) {
        __builtin_memcpy(s->buf, b, n);
        s->buffered = (uint32_t)n;
    }
}

void pv_sha256_final(struct pv_sha256 *s, uint8_t digest[32])
{
    /* §5.1.1: a 1 bit, zeros to 448 mod 512 bits, the length in bits (64, big endian) */
    uint64_t bits = s->bytes * 8;
    uint32_t i = s->buffered;
    s->buf[i++] = 0x80;
    if (i > 56) {
        __builtin_memset(s->buf + i, 0, 64 - i);
        compress(s->h, s->buf, 1);
        i = 0;
    }
    __builtin_memset(s->buf + i, 0, 56 - i);
    store_be32(s->buf + 56, (uint32_t)(bits >> 32));
    store_be32(s->buf + 60, (uint32_t)bits);
    compress(s->h, s->buf, 1);
    for (int j = 0; j < 8; j++)
        store_be32(digest + 4 * j, s->h[j]);
}

void pv_sha256(const void *p, size_t n, uint8_t digest[32])
{
    struct pv_sha256 s;
    pv_sha256_init(&s);
    pv_sha256_update(&s, p, n);
    pv_sha256_final(&s, digest);
}
