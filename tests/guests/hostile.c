/* hostile: argv[1] selects a misbehaviour.
 *
 * Modes that must stop the domain (crash), each printing "hostile: MODE" first:
 *   port        outb to an unknown I/O port (0x1234)
 *   port_in     inb from an unknown I/O port (0x1235)
 *   mmio        read of GPA 0xD0000000 (identity mapped, no memslot)
 *   mmio_write  write to GPA 0xD0000008
 *   noncanon    jump to the non-canonical 0x8000000000000000 (#GP)
 *   null        read through a NULL pointer (#PF, address 0)
 *   null_write  write through a NULL pointer (#PF, address 0)
 *   hlt         hlt in ring 3 (#GP)
 *   cli         cli in ring 3 (#GP)
 *   ud2         an invalid opcode (#UD)
 *   div0        divide by zero (#DE)
 *   reserved    write to the IDT page (supervisor only: #PF, address 0x9000)
 *   fakefault   a ring-3 PV_HC_FAULT with a frame address beyond RAM
 *   ap_null     vCPU 1 dereferences NULL while vCPU 0 waits for it (2 vCPUs)
 *   rep_outs    string port I/O (rep outsb, 4 bytes) to an unknown port
 *
 * Modes where the VMM returns an error and the guest goes on; the guest prints
 * "CHECK ret=VALUE" for each call and exits 0 if every call returned the
 * expected error, else 100 + the index of the first wrong one:
 *   efault      console_write with a GPA at / beyond the end of RAM, in the
 *               MMIO hole, straddling the end of RAM: -14 (EFAULT) each
 *   overflow    console_write with gpa+len overflowing 2^64: -14 each
 *   enosys      hypercalls 63 and 1000, register and block form: -38 (ENOSYS)
 *   block_bad   block-form hypercall whose block GPA is outside RAM: no effect,
 *               then the guest prints "hostile: survived" and exits 0
 *
 * Modes that never exit (for --timeout):
 *   forever     pv_wait(0) in a loop (halted in the stub)
 *   spin        a busy loop in ring 3, no exits
 */
#include <paravm.h>

#define UNKNOWN_PORT 0x1234
#define HOLE_GPA 0xD0000000ull

static int failed;
static int checks;

static void check(const char *what, long got, long want)
{
    printf("%s ret=%ld\n", what, got);
    if (got != want && !failed)
        failed = 100 + checks;
    checks++;
}

static void ap_null(void *arg)
{
    (void)arg;
    printf("hostile: vCPU %u reads NULL\n", pv_cpu());
    (void)*(volatile int *)0;
}

static long block_call(uint64_t nr, uint64_t a0, uint64_t a1)
{
    static struct pv_hcall_block blk;
    memset(&blk, 0, sizeof(blk));
    blk.nr = nr;
    blk.args[0] = a0;
    blk.args[1] = a1;
    blk.ret = 12345;
    return pv_hypercall_block(&blk);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        printf("hostile: no mode\n");
        return 2;
    }
    const char *mode = argv[1];
    const struct pv_boot_info *bi = pv_boot_info();
    uint64_t ram = bi->ram_size;
    printf("hostile: %s\n", mode);

    if (!strcmp(mode, "port")) {
        __asm__ volatile("outb %%al, %%dx" : : "a"(0x5a), "d"(UNKNOWN_PORT));
    } else if (!strcmp(mode, "port_in")) {
        uint8_t v;
        __asm__ volatile("inb %%dx, %%al" : "=a"(v) : "d"(UNKNOWN_PORT + 1));
    } else if (!strcmp(mode, "lapic")) {
        /* The local APIC is the stub's: ring 3 must not reach it. */
        volatile uint32_t *id = (volatile uint32_t *)(uintptr_t)0xFEE00020;
        (void)*id;
    } else if (!strcmp(mode, "hc_in")) {
        uint32_t v;
        __asm__ volatile("inl $0xe0, %%eax" : "=a"(v));
    } else if (!strcmp(mode, "hc_outb")) {
        __asm__ volatile("outb %%al, $0xe1" : : "a"(1));
    } else if (!strcmp(mode, "mmio")) {
        (void)*(volatile uint32_t *)HOLE_GPA;
    } else if (!strcmp(mode, "mmio_write")) {
        *(volatile uint32_t *)(HOLE_GPA + 8) = 0xdeadbeef;
    } else if (!strcmp(mode, "noncanon")) {
        __asm__ volatile("jmp *%0" : : "r"(0x8000000000000000ull));
    } else if (!strcmp(mode, "null")) {
        (void)*(volatile int *)0;
    } else if (!strcmp(mode, "null_write")) {
        *(volatile int *)0 = 1;
    } else if (!strcmp(mode, "hlt")) {
        __asm__ volatile("hlt");
    } else if (!strcmp(mode, "cli")) {
        __asm__ volatile("cli");
    } else if (!strcmp(mode, "ud2")) {
        __asm__ volatile("ud2");
    } else if (!strcmp(mode, "div0")) {
        unsigned long a = 1, d = 0, z = 0;
        __asm__ volatile("divq %2" : "+a"(a), "+d"(d) : "r"(z));
    } else if (!strcmp(mode, "reserved")) {
        *(volatile uint64_t *)0x9000 = 0;
    } else if (!strcmp(mode, "fakefault")) {
        pv_hypercall2(PV_HC_FAULT, ram + 0x1000, 0);
    } else if (!strcmp(mode, "ap_null")) {
        pv_smp_start(1, ap_null, 0);
        pv_smp_join(1);
    } else if (!strcmp(mode, "rep_outs")) {
        static const char buf[4] = "abcd";
        const char *p = buf;
        unsigned long n = sizeof(buf);
        __asm__ volatile("rep outsb" : "+S"(p), "+c"(n) : "d"(UNKNOWN_PORT) : "memory");
    } else if (!strcmp(mode, "efault")) {
        check("at_end", pv_hypercall2(PV_HC_CONSOLE_WRITE, ram, 1), -PV_EFAULT);
        check("beyond", pv_hypercall2(PV_HC_CONSOLE_WRITE, ram + 0x100000, 16), -PV_EFAULT);
        check("hole", pv_hypercall2(PV_HC_CONSOLE_WRITE, HOLE_GPA, 16), -PV_EFAULT);
        check("straddle", pv_hypercall2(PV_HC_CONSOLE_WRITE, ram - 8, 16), -PV_EFAULT);
        check("huge_len", pv_hypercall2(PV_HC_CONSOLE_WRITE, 0x100000, ram), -PV_EFAULT);
        check("block_beyond", block_call(PV_HC_CONSOLE_WRITE, ram, 4), -PV_EFAULT);
        return failed;
    } else if (!strcmp(mode, "overflow")) {
        check("wrap16", pv_hypercall2(PV_HC_CONSOLE_WRITE, 0xFFFFFFFFFFFFFFF0ull, 32),
              -PV_EFAULT);
        check("wrap_len", pv_hypercall2(PV_HC_CONSOLE_WRITE, 0x100000, ~0ull), -PV_EFAULT);
        check("top", pv_hypercall2(PV_HC_CONSOLE_WRITE, ~0ull, 1), -PV_EFAULT);
        check("block_wrap", block_call(PV_HC_CONSOLE_WRITE, 0xFFFFFFFFFFFFFFF0ull, 32),
              -PV_EFAULT);
        return failed;
    } else if (!strcmp(mode, "enosys")) {
        check("nr63", pv_hypercall0(63), -PV_ENOSYS);
        check("nr1000", pv_hypercall0(1000), -PV_ENOSYS);
        check("block63", block_call(63, 0, 0), -PV_ENOSYS);
        check("block1000", block_call(1000, 0, 0), -PV_ENOSYS);
        check("block_2^63", block_call(1ull << 63, 0, 0), -PV_ENOSYS);
        return failed;
    } else if (!strcmp(mode, "block_bad")) {
        __asm__ volatile("outl %%eax, %[port]"
                         : : [port] "i"(PV_HC_BLOCK_PORT), "a"((uint32_t)HOLE_GPA) : "memory");
        __asm__ volatile("outl %%eax, %[port]"
                         : : [port] "i"(PV_HC_BLOCK_PORT), "a"((uint32_t)(ram - 8)) : "memory");
        /* Blocks in the reserved area would have the VMM write the result
         * over IDT gate 3 (0x9038) and the boot info's name (0xA038), and a
         * misaligned one: all refused without effect. */
        __asm__ volatile("outl %%eax, %[port]"
                         : : [port] "i"(PV_HC_BLOCK_PORT), "a"((uint32_t)0x9000) : "memory");
        __asm__ volatile("outl %%eax, %[port]"
                         : : [port] "i"(PV_HC_BLOCK_PORT), "a"((uint32_t)0xA000) : "memory");
        static uint64_t blk[10];
        char *odd = (char *)blk + 4;
        ((uint64_t *)blk)[8] = 0x1111;
        __asm__ volatile("outl %%eax, %[port]"
                         : : [port] "i"(PV_HC_BLOCK_PORT), "a"((uint32_t)(uint64_t)odd) : "memory");
        if (strncmp(pv_boot_info()->name, "hostile", 7) || blk[8] != 0x1111)
            return 9;
        pv_wait(1000000);    /* int3 through IDT gate 3 still works */
        printf("hostile: survived\n");
        return 0;
    } else if (!strcmp(mode, "forever")) {
        for (;;)
            pv_wait(0);
    } else if (!strcmp(mode, "spin")) {
        for (;;)
            __asm__ volatile("pause");
    } else {
        printf("hostile: unknown mode %s\n", mode);
        return 2;
    }
    printf("hostile: still running after %s\n", mode);
    return 3;
}
