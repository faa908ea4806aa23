/*
 * SHA-256 (FIPS 180-4, "Secure Hash Standard", sections 4.1.2, 4.2.2,
 * 5.1.1, 5.3.3 and 6.2): digests equal to Python's hashlib.sha256.
 *
 * Two implementations of the compression function, one chosen at the first
 * use from CPUID: the Intel SHA extensions (SHA256RNDS2, SHA256MSG1,
 * SHA256MSG2; CPUID.(EAX=7,ECX=0):EBX.SHA[bit 29], with SSSE3 and SSE4.1
 * from leaf 1), or portable C.  Both run in ring 3 only (they use the XMM
 * registers; the ring-0 stub must not call them).
 *
 * A struct pv_sha256 belongs to one vCPU at a time; different contexts may
 * be used on different vCPUs at once.
 */
#ifndef PARAVM_SHA256_H
#define PARAVM_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define PV_SHA256_DIGEST_SIZE 32   /* bytes */
#define PV_SHA256_BLOCK_SIZE  64   /* bytes */

/* Hash state.  h: the intermediate hash value H0..H7 (FIPS 180-4 §6.2);
 * bytes: message length so far, in bytes; buf: the first `buffered`
 * (0..63) bytes of a block not yet compressed. */
struct pv_sha256 {
    uint32_t h[8];
    uint64_t bytes;
    uint8_t buf[64];
    uint32_t buffered;
};

/* Start a new message: H(0) of FIPS 180-4 §5.3.3, nothing buffered. */
void pv_sha256_init(struct pv_sha256 *s);
/* Add n bytes at p (any n, including 0; any alignment). */
void pv_sha256_update(struct pv_sha256 *s, const void *p, size_t n);
/* Pad (§5.1.1), write the 32-byte digest (H0..H7 big endian) to digest; s
 * must be initialised again before it is reused. */
void pv_sha256_final(struct pv_sha256 *s, uint8_t digest[32]);
/* init + update + final: the digest of n bytes at p. */
void pv_sha256(const void *p, size_t n, uint8_t digest[32]);

/* Which compression function update uses now: "sha-ni" or "generic". */
const char *pv_sha256_impl(void);
/* For tests and benchmarks: on = 1 makes update use the portable code even
 * where the SHA extensions exist, 0 restores the choice by CPUID.  Applies
 * to every vCPU.  Returns the previous setting (0 or 1). */
int pv_sha256_force_generic(int on);

#endif
