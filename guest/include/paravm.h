/*
 * paravm guest SDK: hypercalls, console, interrupts, SMP.
 *
 * Programs run in ring 3 in 64-bit mode from their first instruction; a
 * small ring-0 stub (stub.S) owns the IDT, the local APIC and halting.
 * Ring-3 code runs with interrupts disabled; a vCPU takes them while it waits
 * in the stub (pv_wait / pv_block), where each sets a bit in this vCPU's
 * pending bitmap; handlers registered with pv_irq_register() then run in
 * ring 3 from pv_wait() / pv_irq_dispatch().
 */
#ifndef PARAVM_H
#define PARAVM_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include "paravm/abi.h"

#include "paravm/errno.h"

/* --- hypercalls --------------------------------------------------------- */
static inline long pv_hypercall6(unsigned nr, uint64_t a0, uint64_t a1, uint64_t a2,
                                 uint64_t a3, uint64_t a4, uint64_t a5)
{
    long ret = nr;
    register uint64_t r10 __asm__("r10") = a3;
    register uint64_t r8 __asm__("r8") = a4;
    register uint64_t r9 __asm__("r9") = a5;
    __asm__ volatile("outl %%eax, %[port]"
                     : "+a"(ret)
                     : [port] "i"(PV_HC_PORT), "D"(a0), "S"(a1), "d"(a2),
                       "r"(r10), "r"(r8), "r"(r9)
                     : "memory");
    return ret;
}
static inline long pv_hypercall4(unsigned nr, uint64_t a0, uint64_t a1, uint64_t a2,
                                 uint64_t a3)
{
    long ret = nr;
    register uint64_t r10 __asm__("r10") = a3;
    __asm__ volatile("outl %%eax, %[port]"
                     : "+a"(ret)
                     : [port] "i"(PV_HC_PORT), "D"(a0), "S"(a1), "d"(a2), "r"(r10)
                     : "memory");
    return ret;
}
static inline long pv_hypercall2(unsigned nr, uint64_t a0, uint64_t a1)
{
    long ret = nr;
    __asm__ volatile("outl %%eax, %[port]"
                     : "+a"(ret) : [port] "i"(PV_HC_PORT), "D"(a0), "S"(a1) : "memory");
    return ret;
}
static inline long pv_hypercall0(unsigned nr) { return pv_hypercall2(nr, 0, 0); }

/* The argument-block form (PV_HC_BLOCK_PORT); same numbers and results. */
long pv_hypercall_block(struct pv_hcall_block *blk);

/* Bytes to the console: the console_write hypercall, or the writer set with
 * pv_set_console_writer (printf and puts write through here too). */
long pv_console_write(const void *buf, size_t len);
/* Send the console output through fn (e.g. lguest_console_set_printf);
 * NULL restores the console_write hypercall.  fn must not print itself. */
void pv_set_console_writer(long (*fn)(const void *buf, size_t len));
_Noreturn void pv_exit(int status);
uint64_t pv_clock_ns(void);
long pv_boot_mark(unsigned id);
_Noreturn void pv_vcpu_off(void);

/* --- boot facts ----------------------------------------------------------- */
const struct pv_boot_info *pv_boot_info(void);
static inline unsigned pv_cpu(void)
{
    unsigned v;
    __asm__ volatile("movl %%gs:%c1, %0" : "=r"(v) : "i"(PV_VP_INDEX));
    return v;
}
static inline uint64_t pv_rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* --- interrupts ----------------------------------------------------------- */
typedef void (*pv_irq_handler)(unsigned vector, void *ctx);
/* Vectors PV_VEC_USER_FIRST..PV_VEC_USER_LAST; -PV_EINVAL otherwise,
 * -PV_EBUSY if taken.  Handlers are per domain (all vCPUs). */
int pv_irq_register(unsigned vector, pv_irq_handler fn, void *ctx);
int pv_irq_unregister(unsigned vector);
/* Run the handlers of this vCPU's pending vectors; returns how many vectors
 * were pending (those without a handler count too; the stub's timer not). */
int pv_irq_dispatch(void);
/* Block until an interrupt arrives or timeout_ns passes (0: no timeout),
 * then dispatch.  Returns the number of vectors dispatched (> 0), or 0 once
 * timeout_ns has passed with none.  Vectors without a handler count too. */
int pv_wait(uint64_t timeout_ns);
/* One stub call: halt until an interrupt or timeout (< 2^32 ns, 0: none). */
static inline void pv_block(uint32_t timeout_ns)
{
    long op = PV_STUB_BLOCK;
    __asm__ volatile("int3" : "+a"(op) : "D"((uint64_t)timeout_ns) : "memory");
}
int pv_send_ipi(unsigned cpu, unsigned vector);

/* --- SMP ------------------------------------------------------------------- */
/* All vCPUs start at once; vCPU 0 runs main(), the others wait for work.
 * pv_smp_start runs fn(arg) on vCPU cpu (1..nr-1, not the caller):
 * -PV_EINVAL for a bad cpu, -PV_EBUSY while a job runs there.
 * pv_smp_join waits until it returns. */
int pv_smp_start(unsigned cpu, void (*fn)(void *), void *arg);
int pv_smp_join(unsigned cpu);
unsigned pv_nr_cpus(void);

/* --- libc subset ------------------------------------------------------------- */
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
long strtol(const char *s, char **end, int base);
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int puts(const char *s);

/* --- checksums ------------------------------------------------------------ */
/* The IEEE CRC-32 of n bytes at p, continuing from crc (0 to start): the
 * value Python's zlib.crc32(data, crc) gives.  PCLMULQDQ folding where CPUID
 * has it, else slice-by-16 tables (const: nothing is built at start-up);
 * safe on any vCPU, ring 3 only (XMM registers).  SHA-256: paravm/sha256.h. */
uint32_t pv_crc32(uint32_t crc, const void *p, size_t n);
/* For tests and benchmarks: the way pv_crc32 takes now, "pclmul" or "table";
 * force_table(1) makes it use the tables on every vCPU (0: by CPUID again),
 * returning the previous setting. */
const char *pv_crc32_impl(void);
int pv_crc32_force_table(int on);

/* --- pages -------------------------------------------------------------- */
/* n zeroed, page-aligned pages of RAM from the heap (boot info heap_start ..
 * heap_end), never given back: for grant-shared buffers, rings and the like.
 * NULL when the heap is exhausted.  Safe from any vCPU. */
void *pv_page_alloc(size_t n);

int main(int argc, char **argv);

#endif
