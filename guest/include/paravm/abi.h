/*
 * paravm guest ABI: the numbers the VMM and the guest SDK share.
 * Included from C and from assembly.  The Python side is
 * src/paravm/arch/x86/layout.py and src/paravm/hypercall/abi.py;
 * tests/unit/test_guest_abi.py checks that both agree.
 */
#ifndef PARAVM_ABI_H
#define PARAVM_ABI_H

/* Hypercalls: `outl %eax, $PV_HC_PORT` with the call number in eax and
 * arguments in rdi, rsi, rdx, r10, r8, r9 (the Linux syscall order); the
 * result (>= 0, or a negative Linux errno) comes back in rax.
 * PV_HC_BLOCK_PORT takes eax = GPA of a struct pv_hcall_block instead. */
#define PV_HC_PORT          0xE0
#define PV_HC_BLOCK_PORT    0xE1

#define PV_HC_CONSOLE_WRITE 0   /* (gpa, len) -> len */
#define PV_HC_EXIT          1   /* (status) -> no return */
#define PV_HC_CLOCK_NS      2   /* () -> monotonic ns */
#define PV_HC_BOOT_MARK     3   /* (marker id) -> 0 */
#define PV_HC_FAULT         4   /* (frame gpa) from the ring-0 stub -> no return */
#define PV_HC_VCPU_OFF      5   /* () -> no return: stop this vCPU only */
#define PV_HC_NOP           6   /* () -> 0 */

#define PV_BOOT_MARK_MAIN   1   /* main() is about to run */

/* Ring-0 stub calls: `int3` with the op in rax, arguments in rdi, rsi. */
#define PV_STUB_BLOCK       0   /* (timeout ns, 0 = none, < 2^32) -> 0 */
#define PV_STUB_IPI         1   /* (apic id, vector) -> 0 */

/* Layout (see src/paravm/arch/x86/layout.py) */
#define PV_BOOT_INFO        0xA000
#define PV_RESERVED_END     0x100000
#define PV_MAX_VCPUS        32
#define PV_LAPIC_BASE       0xFEE00000
#define PV_PVZ_FW_CARVEOUT_GPA  0xF4000000  /* + OSID * size: a PVZ guest's FW heap slice */
#define PV_PVZ_GPU_CARVEOUT_GPA 0xF8000000  /* + OSID * size: its GPU heap slice */

#define PV_BI_MAGIC         0x49425650
#define PV_IMAGE_MAGIC      0x4D495650
#define PV_IMAGE_VERSION    1

#define PV_VP_SELF          0x00
#define PV_VP_INDEX         0x08
#define PV_VP_APIC_ID       0x0C
#define PV_VP_PENDING       0x10

#define PV_VEC_TIMER        0x20
#define PV_VEC_SMP          0x21
#define PV_VEC_USER_FIRST   0x30
#define PV_VEC_USER_LAST    0xEF
#define PV_VEC_SPURIOUS     0xFF

#ifndef __ASSEMBLER__
#include <stdint.h>

struct pv_boot_info {
    uint32_t magic;
    uint32_t version;
    uint32_t domid;
    uint32_t nr_vcpus;
    uint64_t ram_size;      /* bytes */
    uint64_t heap_start;    /* GPA: first free byte after the image, page aligned */
    uint64_t heap_end;      /* GPA: the ring-3 stacks start here */
    uint64_t tsc_khz;       /* 0 when unknown */
    uint32_t argc;
    uint32_t args_len;      /* bytes of packed NUL-terminated args at args[] */
    char name[40];
    uint64_t lguest_descs;  /* GPA of the lguest descriptor page; 0: no devices */
    uint64_t xen_shared_info;    /* GPA of the Xen shared_info page; 0: no Xen services */
    uint64_t grant_window;       /* GPA of the read-write grant window */
    uint64_t grant_window_ro;    /* GPA of the read-only grant window */
    uint32_t grant_window_pages; /* pages in each window */
    uint32_t evtchn_vector;      /* the event channel upcall vector */
    uint32_t pvz;                /* 1: a PVZ connection (paravm/pvz.h) */
    uint32_t pvz_fw_origin;      /* PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_* of the FW heap */
    uint64_t pvz_fw_heap_size;   /* RGX_FIRMWARE_HEAP_SIZE, bytes */
    uint32_t mgpu;               /* 1: an example mediated GPU (paravm/mgpu.h) */
    uint32_t mgpu_opregion;      /* GPA of its OpRegion (read-only), 0: none */
    uint8_t reserved[0x100 - 0xA0];
    char args[2048];
};

struct pv_vcpu_page {
    uint64_t self;          /* GPA of this page (GS base) */
    uint32_t index;         /* vCPU index */
    uint32_t apic_id;
    uint64_t pending[4];    /* vectors raised, set by the stub, cleared by ring 3 */
};

struct pv_image_header {    /* in section .paravm_image of SDK-built images */
    uint32_t magic;
    uint32_t version;
    uint64_t vectors;       /* 256 ring-0 entry points, 16 bytes apart */
    uint64_t reserved[6];
};

struct pv_hcall_block {     /* argument block for PV_HC_BLOCK_PORT */
    uint64_t nr;
    uint64_t args[6];
    int64_t ret;
};
#endif
#endif
