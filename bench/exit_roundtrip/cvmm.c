/*
 * cvmm: the C baseline of bench/exit_roundtrip -- a minimal KVM VMM doing the
 * same exit as a paravm register-form hypercall, with nothing else around it.
 *
 *   usage: cvmm MODE N [WARMUP]
 *     c          port 0xE0, rax read/written through KVM_CAP_SYNC_REGS (as paravm)
 *     c-getregs  port 0xE0, rax read/written with KVM_GET_REGS / KVM_SET_REGS
 *     c-block    port 0xE1, eax = GPA of a 64-byte argument block (paravm's block form)
 *
 * The VM is built like paravm's (src/paravm/arch/x86/layout.py, boot.py): an
 * in-kernel irqchip, identity page tables, a GDT with DPL-3 64-bit code/data,
 * a 64-bit TSS whose I/O bitmap allows every port, and the first instruction
 * already in long mode at CPL 3.  The guest is hand-assembled:
 *
 *   loop: mov $NR_OR_GPA, %eax ; out %eax, $PORT ; dec %rcx ; jnz loop
 *         out %eax, $0xE2 (stop) ; jmp .
 *
 * with rcx = WARMUP + N.  N round trips are timed with CLOCK_MONOTONIC, from
 * the return of KVM_RUN for exit WARMUP to that for exit WARMUP + N.  Prints
 *
 *   RESULT mode=c n=20000 ns_per_call=28123.4
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* Guest-physical layout: the same addresses as paravm's layout.py. */
#define RAM_SIZE   (4u << 20)
#define PML4       0x1000
#define PDPT       0x2000
#define PD         0x3000
#define GDT        0x8000
#define TSS        0x10000          /* vCPU 0's TSS (layout.vcpu_area(0)) */
#define CODE       0x100000         /* RESERVED_END: where images load */
#define BLOCK      0x200000         /* the c-block argument block */
#define KVM_TSS    0xFFFBD000       /* layout.KVM_TSS_ADDR */

#define SEL_USER_DS  (0x18 | 3)
#define SEL_USER_CS  (0x20 | 3)
#define SEL_TSS0     0x30
#define TSS_IOMAP_BASE 102
#define TSS_HEADER     104
#define TSS_LIMIT      (TSS_HEADER + 65536 / 8)   /* inclusive: covers the 0xFF end byte */

#define HC_PORT       0xE0
#define HC_BLOCK_PORT 0xE1
#define STOP_PORT     0xE2
#define HC_NOP        6
#define ENOSYS_RET    ((uint64_t)-38)

#define PTE_P 1
#define PTE_RW 2
#define PTE_US 4
#define PTE_PS 0x80

static void die(const char *what)
{
    fprintf(stderr, "cvmm: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int xioctl(int fd, unsigned long req, void *arg, const char *name)
{
    int r;
    while ((r = ioctl(fd, req, arg)) < 0 && errno == EINTR)
        ;
    if (r < 0)
        die(name);
    return r;
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void build_memory(uint8_t *ram, uint8_t port, uint32_t eax)
{
    uint64_t *pml4 = (uint64_t *)(ram + PML4), *pdpt = (uint64_t *)(ram + PDPT);
    uint64_t *pd = (uint64_t *)(ram + PD);
    pml4[0] = PDPT | PTE_P | PTE_RW | PTE_US;
    pdpt[0] = PD | PTE_P | PTE_RW | PTE_US;
    for (uint64_t i = 0; i < RAM_SIZE >> 21; i++)   /* identity map of RAM, 2 MiB pages */
        pd[i] = (i << 21) | PTE_P | PTE_RW | PTE_US | PTE_PS;

    /* GDT: the same entries as boot._GDT_FIXED, then vCPU 0's TSS descriptor (type 9). */
    uint64_t *gdt = (uint64_t *)(ram + GDT);
    gdt[0] = 0;
    gdt[1] = 0x00AF9B000000FFFF;   /* 0x08 kernel code, 64-bit, DPL 0 */
    gdt[2] = 0x00CF93000000FFFF;   /* 0x10 kernel data */
    gdt[3] = 0x00CFF3000000FFFF;   /* 0x18 user data, DPL 3 */
    gdt[4] = 0x00AFFB000000FFFF;   /* 0x20 user code, 64-bit, DPL 3 */
    gdt[5] = 0;
    uint64_t base = TSS, limit = TSS_LIMIT;
    gdt[6] = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (0x89ull << 40) |
             (((limit >> 16) & 0xF) << 48) | (((base >> 24) & 0xFF) << 56);
    gdt[7] = base >> 32;

    /* TSS: I/O bitmap right after the 104-byte header, all zero (every port
     * allowed), then the 0xFF end byte. */
    uint8_t *tss = ram + TSS;
    memset(tss, 0, TSS_LIMIT + 1);
    *(uint16_t *)(tss + TSS_IOMAP_BASE) = TSS_HEADER;
    tss[TSS_LIMIT] = 0xFF;

    uint8_t code[] = {
        0xB8, 0, 0, 0, 0,     /* 0:  mov $imm32, %eax      */
        0xE7, port,           /* 5:  out %eax, $port       */
        0x48, 0xFF, 0xC9,     /* 7:  dec %rcx              */
        0x75, 0xF4,           /* 10: jnz 0                 */
        0xE7, STOP_PORT,      /* 12: out %eax, $STOP_PORT  */
        0xEB, 0xFE,           /* 14: jmp .                 */
    };
    memcpy(code + 1, &eax, 4);
    memcpy(ram + CODE, code, sizeof(code));
    *(uint64_t *)(ram + BLOCK) = HC_NOP;   /* block.nr; ret is at +56 */
}

static void set_seg(struct kvm_segment *s, uint16_t sel, int code)
{
    memset(s, 0, sizeof(*s));
    s->base = 0, s->limit = 0xFFFFFFFF, s->selector = sel;
    s->type = code ? 0xB : 0x3;
    s->present = 1, s->dpl = 3, s->s = 1, s->g = 1;
    s->l = code, s->db = !code;
}

static void setup_vcpu(int kvm, int vcpu, uint64_t count)
{
    /* CPUID: what the host supports, OSXSAVE cleared (CR4.OSXSAVE stays 0). */
    int nent = 256;
    struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + nent * sizeof(cpuid->entries[0]));
    cpuid->nent = nent;
    xioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid, "KVM_GET_SUPPORTED_CPUID");
    for (unsigned i = 0; i < cpuid->nent; i++)
        if (cpuid->entries[i].function == 1)
            cpuid->entries[i].ecx &= ~(1u << 27);
    xioctl(vcpu, KVM_SET_CPUID2, cpuid, "KVM_SET_CPUID2");
    free(cpuid);

    struct kvm_sregs sregs;
    xioctl(vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
    set_seg(&sregs.cs, SEL_USER_CS, 1);
    set_seg(&sregs.ds, SEL_USER_DS, 0);
    sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
    memset(&sregs.tr, 0, sizeof(sregs.tr));
    sregs.tr.base = TSS, sregs.tr.limit = TSS_LIMIT, sregs.tr.selector = SEL_TSS0;
    sregs.tr.type = 0xB, sregs.tr.present = 1;        /* busy 64-bit TSS */
    memset(&sregs.ldt, 0, sizeof(sregs.ldt));
    sregs.ldt.unusable = 1;
    sregs.gdt.base = GDT, sregs.gdt.limit = 8 * 8 - 1;
    sregs.idt.base = 0, sregs.idt.limit = 0;          /* no IDT: any exception is a triple fault */
    sregs.cr0 = 0x80000000 | 0x10000 | 0x20 | 0x10 | 0x2 | 0x1;   /* PG WP NE ET MP PE */
    sregs.cr4 = 0x20 | 0x200 | 0x400;                 /* PAE OSFXSR OSXMMEXCPT */
    sregs.efer = 0x100 | 0x400;                       /* LME LMA */
    sregs.cr3 = PML4;
    xioctl(vcpu, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");

    struct kvm_regs regs;
    memset(&regs, 0, sizeof(regs));
    regs.rip = CODE, regs.rsp = RAM_SIZE, regs.rflags = 0x2, regs.rcx = count;
    xioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: cvmm c|c-getregs|c-block N [WARMUP]\n");
        return 2;
    }
    const char *mode = argv[1];
    int getregs = strcmp(mode, "c-getregs") == 0, block = strcmp(mode, "c-block") == 0;
    if (!getregs && !block && strcmp(mode, "c") != 0) {
        fprintf(stderr, "cvmm: unknown mode %s\n", mode);
        return 2;
    }
    long n = strtol(argv[2], 0, 0), warmup = argc > 3 ? strtol(argv[3], 0, 0) : 1000;
    if (n <= 0 || warmup <= 0) {
        fprintf(stderr, "cvmm: N and WARMUP must be > 0\n");
        return 2;
    }

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("/dev/kvm");
    if (!(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS) & KVM_SYNC_X86_REGS)) {
        fprintf(stderr, "cvmm: KVM_CAP_SYNC_REGS does not cover the GPRs\n");
        return 1;
    }
    int vm = xioctl(kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM");
    xioctl(vm, KVM_SET_TSS_ADDR, (void *)(uintptr_t)KVM_TSS, "KVM_SET_TSS_ADDR");
    xioctl(vm, KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP");

    uint8_t *ram = mmap(0, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (ram == MAP_FAILED)
        die("mmap RAM");
    struct kvm_userspace_memory_region slot = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = RAM_SIZE, .userspace_addr = (uintptr_t)ram,
    };
    xioctl(vm, KVM_SET_USER_MEMORY_REGION, &slot, "KVM_SET_USER_MEMORY_REGION");
    build_memory(ram, block ? HC_BLOCK_PORT : HC_PORT, block ? BLOCK : HC_NOP);

    int vcpu = xioctl(vm, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU");
    int run_size = xioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE");
    struct kvm_run *run = mmap(0, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap kvm_run");
    uint64_t total = (uint64_t)warmup + (uint64_t)n;
    setup_vcpu(kvm, vcpu, total);
    run->kvm_valid_regs = getregs ? 0 : KVM_SYNC_X86_REGS;   /* paravm always syncs */

    uint64_t exits = 0;
    double t0 = 0, t1 = 0;
    struct kvm_regs regs;
    for (;;) {
        xioctl(vcpu, KVM_RUN, 0, "KVM_RUN");
        if (run->exit_reason != KVM_EXIT_IO) {
            unsigned r = run->exit_reason;
            fprintf(stderr, "cvmm: unexpected exit reason %u%s after %lu exits\n", r,
                    r == KVM_EXIT_SHUTDOWN ? " (shutdown: triple fault)" :
                    r == KVM_EXIT_FAIL_ENTRY ? " (entry failed)" :
                    r == KVM_EXIT_INTERNAL_ERROR ? " (internal error)" : "",
                    (unsigned long)exits);
            return 1;
        }
        if (run->io.port == STOP_PORT)
            break;
        exits++;
        if (exits == (uint64_t)warmup)
            t0 = now_ns();
        else if (exits == total)
            t1 = now_ns();
        if (run->io.port == HC_PORT && !getregs) {
            uint64_t nr = run->s.regs.regs.rax & 0xFFFFFFFF;
            run->s.regs.regs.rax = nr == HC_NOP ? 0 : ENOSYS_RET;
            run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
        } else if (run->io.port == HC_PORT) {
            xioctl(vcpu, KVM_GET_REGS, &regs, "KVM_GET_REGS");
            uint64_t nr = regs.rax & 0xFFFFFFFF;
            regs.rax = nr == HC_NOP ? 0 : ENOSYS_RET;
            xioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");
        } else if (run->io.port == HC_BLOCK_PORT && run->io.size == 4) {
            uint32_t gpa;
            memcpy(&gpa, (uint8_t *)run + run->io.data_offset, 4);
            if (gpa > RAM_SIZE - 64) {
                fprintf(stderr, "cvmm: block GPA %#x outside RAM\n", gpa);
                return 1;
            }
            uint64_t blk[8];
            memcpy(blk, ram + gpa, sizeof(blk));       /* copy once, then use */
            uint64_t ret = blk[0] == HC_NOP ? 0 : ENOSYS_RET;
            memcpy(ram + gpa + 56, &ret, 8);
        } else {
            fprintf(stderr, "cvmm: unexpected port %#x\n", run->io.port);
            return 1;
        }
    }
    if (exits != total) {
        fprintf(stderr, "cvmm: %lu hypercall exits, expected %lu\n",
                (unsigned long)exits, (unsigned long)total);
        return 1;
    }
    printf("RESULT mode=%s n=%ld ns_per_call=%.1f\n", mode, n, (t1 - t0) / n);
    return 0;
}
