/* pv_crc32: the IEEE 802.3 CRC-32 (reflected, polynomial 0xEDB88320), the
 * one zlib.crc32(data, crc) computes, so a host check is one Python call.
 *
 * Two ways, chosen at the first call from CPUID:
 *  - PCLMULQDQ folding (CPUID.1:ECX.PCLMULQDQ[bit 1]): the message is a
 *    polynomial over GF(2), and A(x)*x^T + B(x) == (A(x)*(x^T mod P)) + B(x)
 *    modulo P, so a 128-bit accumulator is carried over T bits of data with two
 *    carry-less multiplies by constants; four accumulators over 64-byte
 *    strides keep the multiplier busy.  The last accumulator, 16 bytes of
 *    message with the same CRC as everything folded into it, and the tail
 *    then go through the tables.
 *  - slice-by-16 tables for short inputs, tails and CPUs without PCLMULQDQ.
 * The constants are generated (guest/tools/gen_crc32_tables.py) and const:
 * no table to build at start-up, nothing written that vCPUs would share
 * except the one-word choice, which every vCPU computes the same. */
#include "paravm.h"
#include "crc32_tables.h"

#if defined(__x86_64__) || defined(__i386__)
#define PV_CRC32_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

static inline uint32_t load_le32(const uint8_t *p)
{
    uint32_t v;
    __builtin_memcpy(&v, p, 4);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}

/* The CRC register (no pre/post inversion) after n bytes at b. */
static uint32_t crc32_tables(uint32_t reg, const uint8_t *b, size_t n)
{
    const uint32_t (*t)[256] = crc32_slice;
    while (n >= 16) {
        /* byte j of the 16 is followed by 15 - j more: table 15 - j */
        uint32_t w0 = load_le32(b) ^ reg, w1 = load_le32(b + 4);
        uint32_t w2 = load_le32(b + 8), w3 = load_le32(b + 12);
        reg = t[15][w0 & 0xFF] ^ t[14][(w0 >> 8) & 0xFF] ^ t[13][(w0 >> 16) & 0xFF] ^ t[12][w0 >> 24] ^
              t[11][w1 & 0xFF] ^ t[10][(w1 >> 8) & 0xFF] ^ t[9][(w1 >> 16) & 0xFF] ^ t[8][w1 >> 24] ^
              t[7][w2 & 0xFF] ^ t[6][(w2 >> 8) & 0xFF] ^ t[5][(w2 >> 16) & 0xFF] ^ t[4][w2 >> 24] ^
              t[3][w3 & 0xFF] ^ t[2][(w3 >> 8) & 0xFF] ^ t[1][(w3 >> 16) & 0xFF] ^ t[0][w3 >> 24];
        b += 16;
        n -= 16;
    }
    while (n--)
        reg = (reg >> 8) ^ t[0][(reg ^ *b++) & 0xFF];
    return reg;
}

#ifdef PV_CRC32_X86
/* acc * x^T + next, reduced to 128 bits: the low qword of acc holds the
 * higher powers, so it takes k's low constant (x^(T+63)), the high qword
 * k's high one (x^(T-1)); see crc32_tables.h for the bit order. */
__attribute__((target("pclmul,sse2")))
static inline __m128i fold(__m128i acc, __m128i k, __m128i next)
{
    __m128i lo = _mm_clmulepi64_si128(acc, k, 0x00);
    __m128i hi = _mm_clmulepi64_si128(acc, k, 0x11);
    return _mm_xor_si128(_mm_xor_si128(lo, hi), next);
}

/* The CRC register after n >= 64 bytes at b. */
__attribute__((target("pclmul,sse2")))
static uint32_t crc32_pclmul(uint32_t reg, const uint8_t *b, size_t n)
{
    const __m128i k512 = _mm_loadu_si128((const __m128i *)crc32_fold512);
    const __m128i k128 = _mm_loadu_si128((const __m128i *)crc32_fold128);
    /* The register joins the message as its first 32 bits. */
    __m128i a0 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)b), _mm_cvtsi32_si128((int)reg));
    __m128i a1 = _mm_loadu_si128((const __m128i *)(b + 16));
    __m128i a2 = _mm_loadu_si128((const __m128i *)(b + 32));
    __m128i a3 = _mm_loadu_si128((const __m128i *)(b + 48));
    b += 64;
    n -= 64;
    while (n >= 64) {
        a0 = fold(a0, k512, _mm_loadu_si128((const __m128i *)b));
        a1 = fold(a1, k512, _mm_loadu_si128((const __m128i *)(b + 16)));
        a2 = fold(a2, k512, _mm_loadu_si128((const __m128i *)(b + 32)));
        a3 = fold(a3, k512, _mm_loadu_si128((const __m128i *)(b + 48)));
        b += 64;
        n -= 64;
    }
    a0 = fold(a0, k128, a1);
    a0 = fold(a0, k128, a2);
    a0 = fold(a0, k128, a3);
    while (n >= 16) {
        a0 = fold(a0, k128, _mm_loadu_si128((const __m128i *)b));
        b += 16;
        n -= 16;
    }
    uint8_t last[16];
    _mm_storeu_si128((__m128i *)last, a0);
    return crc32_tables(crc32_tables(0, last, 16), b, n);
}
#endif

enum { CRC_UNKNOWN, CRC_TABLE, CRC_PCLMUL };
static int crc_way;          /* what the CPU allows; CRC_UNKNOWN until the first call */
static int crc_forced_table;

static int crc32_way(void)
{
    if (__atomic_load_n(&crc_forced_table, __ATOMIC_RELAXED))
        return CRC_TABLE;
    int way = __atomic_load_n(&crc_way, __ATOMIC_RELAXED);
    if (way == CRC_UNKNOWN) {
        way = CRC_TABLE;
#ifdef PV_CRC32_X86
        unsigned a, b, c, d;
        if (__get_cpuid(1, &a, &b, &c, &d) && (c & bit_PCLMUL) && (d & bit_SSE2))
            way = CRC_PCLMUL;
#endif
        __atomic_store_n(&crc_way, way, __ATOMIC_RELAXED);
    }
    return way;
}

const char *pv_crc32_impl(void)
{
    return crc32_way() == CRC_PCLMUL ? "pclmul" : "table";
}

int pv_crc32_force_table(int on)
{
    return __atomic_exchange_n(&crc_forced_table, on ? 1 : 0, __ATOMIC_RELAXED);
}

uint32_t pv_crc32(uint32_t crc, const void *p, size_t n)
{
    const uint8_t *b = p;
    uint32_t reg = ~crc;
#ifdef PV_CRC32_X86
    if (n >= 64 && crc32_way() == CRC_PCLMUL)
        return ~crc32_pclmul(reg, b, n);
#endif
    return ~crc32_tables(reg, b, n);
}
