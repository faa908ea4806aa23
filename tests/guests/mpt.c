/* mpt: a scriptable guest for the MPT tests (tests/kvm/test_mpt*.py).
 *
 * Each argument is one op, run in order; each prints one line.  Numbers are
 * decimal or 0x hex.  ADDR is a number, or P+OFF / Q+OFF: the first / second
 * page of the last `alloc` plus OFF (P alone is P+0); a VAL may be one too.
 *   alloc:N          N zeroed pages             -> "alloc 0x<gpa>"
 *   w1:ADDR:VAL .. w8:ADDR:VAL  one store of exactly 1/2/4/8 bytes (one mov)
 *                                               -> "done w<N>"
 *   r1:ADDR .. r8:ADDR  one load of that width  -> "r<N> 0x<addr> = 0x<val>"
 *   sync:N           print "sync N at 0x<gpa>" (a u32 the host writes with the
 *                    MPT's write_gpa), wait (1 ms pv_wait slices, 60 s at
 *                    most) until it holds N    -> "synced N" (or "sync N
 *                    timed out", exit 2)
 *   irq:VEC          count interrupts on VEC    -> "done irq" (or "irq VEC
 *                    error <e>")
 *   waitirq:N        wait (5 s at most) until N interrupts were counted over
 *                    all irq: vectors           -> "irqs <count>"
 *   sse16:ADDR       one 16-byte movdqu of pattern bytes 0..15
 *   movs:ADDR:LEN    one rep movsb of pattern bytes 0..LEN-1
 *   fxsave:ADDR      fxsave64 (512 bytes; ADDR 16-byte aligned)
 *   xchg8:ADDR:VAL   one (locked) xchg of 8 bytes
 *   cmpxchg16b:ADDR  lock cmpxchg16b (ADDR 16-byte aligned): expects the 16
 *                    bytes there, stores pattern bytes 0..15 in their place
 *                    -> each of these five: "done <op>"
 *   sum:ADDR:LEN     CRC-32 (zlib's) of LEN bytes -> "sum 0x<crc>"
 *   opregion         -> "opregion 0x<gpa> <its first 16 bytes, '.' for
 *                    unprintable>" or "opregion none"
 *   exit:CODE        exit with that status
 * After the last op: "end", exit 0.  A malformed op: "bad op <arg>", exit 2.
 * The pattern: byte i = (i * 7 + (i >> 8) + 1) & 0xFF. */
#include <paravm.h>
#include <paravm/mgpu.h>

static uint8_t *page;               /* the last alloc */
static volatile uint32_t sync_word;
static volatile uint32_t irq_count;
static uint8_t pattern[65536];

static _Noreturn void bad(const char *arg)
{
    printf("bad op %s\n", arg);
    pv_exit(2);
}

/* A decimal or 0x-hex u64 at *s; advances *s past it. */
static int parse_num(const char **s, uint64_t *out)
{
    const char *p = *s;
    int base = 10;
    uint64_t v = 0;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X'))
        base = 16, p += 2;
    const char *start = p;
    for (;; p++) {
        int d;
        if (*p >= '0' && *p <= '9') d = *p - '0';
        else if (base == 16 && *p >= 'a' && *p <= 'f') d = *p - 'a' + 10;
        else if (base == 16 && *p >= 'A' && *p <= 'F') d = *p - 'A' + 10;
        else break;
        v = v * (uint64_t)base + (uint64_t)d;
    }
    if (p == start)
        return -1;
    *s = p;
    *out = v;
    return 0;
}

/* ADDR: a number, or P[+OFF] / Q[+OFF]. */
static int parse_addr(const char **s, uint64_t *out)
{
    const char *p = *s;
    if (*p == 'P' || *p == 'Q') {
        if (!page)
            return -1;
        uint64_t base = (uint64_t)(uintptr_t)page + (*p == 'Q' ? 4096 : 0), off = 0;
        p++;
        if (*p == '+') {
            p++;
            if (parse_num(&p, &off) < 0)
                return -1;
        }
        *s = p;
        *out = base + off;
        return 0;
    }
    return parse_num(s, out);
}

/* The arguments after "name:": "A" (an ADDR: a number, P or Q), "V" (a
 * value: the same, so a GPA can be stored) and "N" (a number), in order. */
static void parse_args(const char *arg, const char *rest, const char *kinds, uint64_t *v)
{
    for (unsigned i = 0; kinds[i]; i++) {
        if (i && *rest++ != ':')
            bad(arg);
        if ((kinds[i] == 'N' ? parse_num(&rest, &v[i]) : parse_addr(&rest, &v[i])) < 0)
            bad(arg);
    }
    if (*rest)
        bad(arg);
}

static void store(unsigned width, uint64_t addr, uint64_t v)
{
    void *p = (void *)(uintptr_t)addr;
    switch (width) {
    case 1: __asm__ volatile("movb %b1, %0" : "=m"(*(uint8_t *)p) : "q"((uint8_t)v) : "memory"); break;
    case 2: __asm__ volatile("movw %w1, %0" : "=m"(*(uint16_t *)p) : "r"((uint16_t)v) : "memory"); break;
    case 4: __asm__ volatile("movl %k1, %0" : "=m"(*(uint32_t *)p) : "r"((uint32_t)v) : "memory"); break;
    default: __asm__ volatile("movq %1, %0" : "=m"(*(uint64_t *)p) : "r"(v) : "memory"); break;
    }
}

static uint64_t load(unsigned width, uint64_t addr)
{
    const void *p = (const void *)(uintptr_t)addr;
    uint64_t v = 0;
    switch (width) {
    case 1: { uint8_t b; __asm__ volatile("movb %1, %0" : "=q"(b) : "m"(*(const uint8_t *)p) : "memory"); v = b; break; }
    case 2: { uint16_t w; __asm__ volatile("movw %1, %0" : "=r"(w) : "m"(*(const uint16_t *)p) : "memory"); v = w; break; }
    case 4: { uint32_t l; __asm__ volatile("movl %1, %0" : "=r"(l) : "m"(*(const uint32_t *)p) : "memory"); v = l; break; }
    default: __asm__ volatile("movq %1, %0" : "=r"(v) : "m"(*(const uint64_t *)p) : "memory"); break;
    }
    return v;
}

static void count_irq(unsigned vector, void *ctx)
{
    (void)vector;
    (void)ctx;
    irq_count++;
}

static void op_sync(uint32_t n)
{
    printf("sync %u at 0x%lx\n", n, (unsigned long)(uintptr_t)&sync_word);
    uint64_t end = pv_clock_ns() + 60000000000ull;
    while (sync_word != n) {
        if (pv_clock_ns() >= end) {
            printf("sync %u timed out\n", n);
            pv_exit(2);
        }
        pv_wait(1000000);
    }
    printf("synced %u\n", n);
}

static void op_waitirq(uint32_t n)
{
    uint64_t end = pv_clock_ns() + 5000000000ull;
    pv_irq_dispatch();
    while (irq_count < n && pv_clock_ns() < end)
        pv_wait(10000000);
    printf("irqs %u\n", irq_count);
}

static void op_opregion(void)
{
    const uint8_t *op = mgpu_opregion();
    if (!op) {
        printf("opregion none\n");
        return;
    }
    char text[17];
    for (int i = 0; i < 16; i++)
        text[i] = op[i] >= 0x20 && op[i] < 0x7F ? (char)op[i] : '.';
    text[16] = 0;
    printf("opregion 0x%lx %s\n", (unsigned long)(uintptr_t)op, text);
}

static void run(const char *arg)
{
    const char *colon = arg;
    while (*colon && *colon != ':')
        colon++;
    size_t len = (size_t)(colon - arg);
    const char *rest = *colon ? colon + 1 : colon;
    uint64_t v[2] = {0, 0};
#define IS(name) (len == sizeof(name) - 1 && strncmp(arg, name, len) == 0)

    if (IS("alloc")) {
        parse_args(arg, rest, "N", v);
        page = pv_page_alloc(v[0]);
        if (!page) {
            printf("alloc failed\n");
            pv_exit(2);
        }
        printf("alloc 0x%lx\n", (unsigned long)(uintptr_t)page);
    } else if (IS("w1") || IS("w2") || IS("w4") || IS("w8")) {
        parse_args(arg, rest, "AV", v);
        store((unsigned)(arg[1] - '0'), v[0], v[1]);
        printf("done w%c\n", arg[1]);
    } else if (IS("r1") || IS("r2") || IS("r4") || IS("r8")) {
        parse_args(arg, rest, "A", v);
        uint64_t got = load((unsigned)(arg[1] - '0'), v[0]);
        printf("r%c 0x%lx = 0x%lx\n", arg[1], (unsigned long)v[0], (unsigned long)got);
    } else if (IS("sync")) {
        parse_args(arg, rest, "N", v);
        op_sync((uint32_t)v[0]);
    } else if (IS("irq")) {
        parse_args(arg, rest, "N", v);
        int e = pv_irq_register((unsigned)v[0], count_irq, 0);
        if (e < 0)
            printf("irq %lu error %d\n", (unsigned long)v[0], e);
        else
            printf("done irq\n");
    } else if (IS("waitirq")) {
        parse_args(arg, rest, "N", v);
        op_waitirq((uint32_t)v[0]);
    } else if (IS("sse16")) {
        parse_args(arg, rest, "A", v);
        __asm__ volatile("movdqu %1, %%xmm0\n\tmovdqu %%xmm0, %0"
                         : "=m"(*(uint8_t (*)[16])(uintptr_t)v[0])
                         : "m"(*(const uint8_t (*)[16])pattern) : "xmm0", "memory");
        printf("done sse16\n");
    } else if (IS("movs")) {
        parse_args(arg, rest, "AN", v);
        if (v[1] > sizeof pattern)
            bad(arg);
        void *d = (void *)(uintptr_t)v[0];
        const void *s = pattern;
        size_t n = v[1];
        __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
        printf("done movs\n");
    } else if (IS("fxsave")) {
        parse_args(arg, rest, "A", v);
        if (v[0] & 15)
            bad(arg);
        __asm__ volatile("fxsave64 %0" : "=m"(*(uint8_t (*)[512])(uintptr_t)v[0]) : : "memory");
        printf("done fxsave\n");
    } else if (IS("xchg8")) {
        parse_args(arg, rest, "AV", v);
        uint64_t x = v[1];
        __asm__ volatile("xchgq %0, %1" : "+r"(x), "+m"(*(uint64_t *)(uintptr_t)v[0]) : : "memory");
        printf("done xchg8\n");
    } else if (IS("cmpxchg16b")) {
        parse_args(arg, rest, "A", v);
        if (v[0] & 15)
            bad(arg);
        volatile uint64_t *p = (volatile uint64_t *)(uintptr_t)v[0];
        uint64_t lo = p[0], hi = p[1], nlo, nhi;
        memcpy(&nlo, pattern, 8);
        memcpy(&nhi, pattern + 8, 8);
        __asm__ volatile("lock cmpxchg16b %0"
                         : "+m"(*(uint64_t (*)[2])(uintptr_t)v[0]), "+a"(lo), "+d"(hi)
                         : "b"(nlo), "c"(nhi) : "memory", "cc");
        printf("done cmpxchg16b\n");
    } else if (IS("sum")) {
        parse_args(arg, rest, "AN", v);
        printf("sum 0x%08x\n", pv_crc32(0, (const void *)(uintptr_t)v[0], v[1]));
    } else if (IS("opregion")) {
        parse_args(arg, rest, "", v);
        op_opregion();
    } else if (IS("exit")) {
        parse_args(arg, rest, "N", v);
        pv_exit((int)v[0]);
    } else {
        bad(arg);
    }
#undef IS
}

int main(int argc, char **argv)
{
    for (unsigned i = 0; i < sizeof pattern; i++)
        pattern[i] = (uint8_t)(i * 7 + (i >> 8) + 1);
    for (int i = 1; i < argc; i++)
        run(argv[i]);
    printf("end\n");
    return 0;
}
