/*
 * paravm's example mediated GPU: its registers, graphics translation table
 * (GTT), command ring and a guest driver (docs/mpt.md;
 * src/paravm/devices/mgpu.py is the device model, built on the VMM's
 * GVT-g-style mediated pass-through services, services/mpt).
 *
 * The device is a trap area: every register access exits to the device
 * model (32-bit accesses, 4-byte aligned).  Surfaces live in graphics
 * memory: graphics page i is the guest page that GTT entry i points at, so
 * a surface may be scattered over guest RAM.  The GTT is itself an array
 * of guest pages; the device shadows it and write-tracks those pages, so
 * an entry the guest rewrites (one 8-byte store) takes effect for the next
 * command, as GVT-g shadows a guest's GTT.  An entry that points outside
 * the guest's RAM makes any command touching that page fail with
 * MGPU_E_GTT_FAULT.  Commands are 64 bytes in a ring in guest RAM; the
 * doorbell (RING_TAIL) runs them in order, then the device writes each
 * command's status and result back, then a fence record, then raises its
 * MSI (if enabled) -- all before the doorbell write returns.
 *
 * Pixels are XRGB8888: a 32-bit word 0x00RRGGBB, little endian.
 * Not thread-safe: one vCPU drives one struct mgpu.
 */
#ifndef PARAVM_MGPU_H
#define PARAVM_MGPU_H

#include <stddef.h>
#include <stdint.h>

#define MGPU_REGS_GPA           0xFD000000ull
#define MGPU_REGS_SIZE          0x1000
#define MGPU_OPREGION_GPA       0xFCC00000ull
#define MGPU_OPREGION_SIZE      0x2000
#define MGPU_OPREGION_SIGNATURE "IntelGraphicsMem"   /* 16 bytes, no NUL */
#define MGPU_VECTOR             0xE2                  /* the SDK's choice */

#define MGPU_ID                 0x5550474Du   /* "MGPU" */
#define MGPU_VERSION            1

/* Registers: offsets in the bank, 32 bits each. */
#define MGPU_REG_ID             0x000   /* RO MGPU_ID */
#define MGPU_REG_VERSION        0x004   /* RO */
#define MGPU_REG_STATUS         0x008   /* RO MGPU_STATUS_* */
#define MGPU_REG_ERROR          0x00C   /* RO: the last command error (MGPU_E_*) */
#define MGPU_REG_GTT_BASE_LO    0x010   /* RW: GPA of the GTT, page aligned */
#define MGPU_REG_GTT_BASE_HI    0x014
#define MGPU_REG_GTT_PAGES      0x018   /* RW: pages of GTT, 0..MGPU_GTT_MAX_PAGES;
                                           writing it (re)loads and tracks the GTT */
#define MGPU_REG_RING_BASE_LO   0x020   /* RW: GPA of the ring, page aligned */
#define MGPU_REG_RING_BASE_HI   0x024
#define MGPU_REG_RING_SIZE      0x028   /* RW: slots, a power of 2, 1..4096; writing
                                           it resets HEAD and TAIL to 0 */
#define MGPU_REG_RING_HEAD      0x02C   /* RO: next command the device runs */
#define MGPU_REG_RING_TAIL      0x030   /* RW: the doorbell; runs [HEAD, TAIL) */
/* HEAD and TAIL count commands, free running (mod 2^32): command n is in
 * slot n & (RING_SIZE - 1); TAIL - HEAD == RING_SIZE is a full ring. */
#define MGPU_REG_SEQNO          0x034   /* RO: commands completed (wraps) */
#define MGPU_REG_IRQ_STATUS     0x038   /* RW1C MGPU_IRQ_* */
#define MGPU_REG_IRQ_ENABLE     0x03C   /* RW MGPU_IRQ_* */
#define MGPU_REG_MSI_CONTROL    0x040   /* RW: bit 0 enable; bits 1..15 must be 0
                                           (as a PCI MSI capability's control) */
#define MGPU_REG_MSI_ADDRESS    0x044   /* RW: 0xFEE00000 | apic_id << 12 */
#define MGPU_REG_MSI_DATA       0x048   /* RW: the vector (bits 0..7) */
#define MGPU_REG_FENCE_LO       0x050   /* RW: GPA of a struct mgpu_fence, 0: none */
#define MGPU_REG_FENCE_HI       0x054
#define MGPU_REG_OPREGION       0x058   /* RO: GPA of the OpRegion, 0: none (ASLS) */

#define MGPU_STATUS_GTT_VALID   1u      /* a GTT is loaded */
#define MGPU_STATUS_RING_VALID  2u      /* a ring is set */
#define MGPU_STATUS_ERROR       4u      /* a command failed since the last ring set */

#define MGPU_IRQ_COMPLETE       1u      /* a doorbell's commands are done */
#define MGPU_IRQ_ERROR          2u      /* one of them failed */

/* GTT entries: 64-bit, bit 0 present, bits 12..51 the GPA of the page; any
 * other bit set makes the entry a fault entry, as does a page outside the
 * guest's RAM or in its reserved first MiB.  An aligned 8-byte store to an
 * entry takes effect at once, an aligned 4-byte store at the next doorbell;
 * any other store makes every entry it touched a fault entry until it is
 * written again properly. */
#define MGPU_GTT_MAX_PAGES      16
#define MGPU_GTT_ENTRIES_PER_PAGE 512
#define MGPU_GTT_PRESENT        1ull
#define MGPU_GTT_ADDR_MASK      0x000FFFFFFFFFF000ull
static inline uint64_t mgpu_gtt_entry(uint64_t gpa)
{
    return (gpa & MGPU_GTT_ADDR_MASK) | MGPU_GTT_PRESENT;
}

/* Commands. */
#define MGPU_OP_NOP             0
#define MGPU_OP_FILL            1   /* dst rect = color */
#define MGPU_OP_COPY            2   /* dst rect = src rect (the whole source is
                                       read before anything is written) */
#define MGPU_OP_CHECKSUM        3   /* result = CRC-32 (zlib) of the dst rect's
                                       pixels, row by row, w*4 bytes a row */
#define MGPU_OP_PRESENT         4   /* the host shows the dst rect (x, y must be
                                       0): docs/mpt.md, a PNG per present */

#define MGPU_E_OK               0
#define MGPU_E_BAD_OP           1   /* unknown op */
#define MGPU_E_BAD_RECT         2   /* w or h 0, a row wider than its pitch,
                                       a pitch not a multiple of 4, too big */
#define MGPU_E_GTT_FAULT        3   /* a page outside the GTT, not present, or
                                       outside the guest's RAM */
#define MGPU_E_NO_GTT           4   /* no GTT loaded */
#define MGPU_E_BAD_RING         5   /* (fence only) TAIL - HEAD > RING_SIZE or no
                                       ring: the doorbell ran nothing */

#define MGPU_MAX_DIM            4096    /* w, h, x + w, y + h at most this */

struct mgpu_cmd {                 /* 64 bytes, a slot of the ring */
    uint32_t op;                  /* 0  MGPU_OP_* */
    uint32_t flags;               /* 4  0 */
    uint32_t dst;                 /* 8  graphics address of the dst surface */
    uint32_t dst_pitch;           /* 12 bytes per row */
    uint32_t src;                 /* 16 graphics address of the src surface */
    uint32_t src_pitch;           /* 20 */
    uint16_t x, y, w, h;          /* 24 the dst rect, pixels */
    uint16_t sx, sy;              /* 32 the src rect's origin (COPY) */
    uint32_t color;               /* 36 FILL: 0x00RRGGBB */
    volatile uint32_t status;     /* 40 written by the device: MGPU_E_* */
    volatile uint32_t result;     /* 44 written by the device: CHECKSUM's CRC */
    uint64_t tag;                 /* 48 the guest's own */
    uint64_t reserved;            /* 56 */
};

struct mgpu_fence {               /* written by the device after each doorbell */
    volatile uint32_t seqno;      /* MGPU_REG_SEQNO after it */
    volatile uint32_t error;      /* MGPU_E_* of its first failed command, or 0 */
};

/* --- the driver ---------------------------------------------------------- */
struct mgpu {
    volatile uint32_t *regs;
    uint64_t *gtt;                /* the GTT pages (identity mapped: GPA = pointer) */
    uint32_t gtt_pages;
    struct mgpu_cmd *ring;
    uint32_t slots;
    uint32_t tail;                /* next slot to fill (free running) */
    struct mgpu_fence *fence;
    volatile uint32_t irqs;       /* interrupts taken */
    volatile uint32_t irq_bits;   /* IRQ_STATUS bits seen */
};

/* 1 if the VMM gave this domain a mediated GPU (boot info), else 0. */
int mgpu_present(void);
/* The OpRegion (read-only, MGPU_OPREGION_SIZE bytes) or 0. */
const void *mgpu_opregion(void);

/* Bring the device up: a GTT of gtt_pages pages (1..MGPU_GTT_MAX_PAGES, all
 * entries not present), a ring of slots (a power of 2, 1..4096), a fence,
 * MSI on MGPU_VECTOR to this vCPU.  0, or -PV_ENODEV (no device: its
 * registers are not touched), -PV_EINVAL, -PV_ENOMEM, -PV_EBUSY
 * (MGPU_VECTOR has a handler: mgpu_fini first), -PV_EIO (the device did
 * not take the GTT or the ring). */
int mgpu_init(struct mgpu *g, uint32_t gtt_pages, uint32_t slots);
/* Interrupts off, the vector's handler gone; the pages stay allocated. */
void mgpu_fini(struct mgpu *g);
/* Point graphics pages [first, first + n) at the guest pages at gpa (page
 * aligned, contiguous): one 8-byte store per entry. */
void mgpu_gtt_map(struct mgpu *g, uint32_t first, uint64_t gpa, uint32_t n);
/* Write GTT entry index as it is (one 8-byte store); ignored past the GTT. */
void mgpu_gtt_set(struct mgpu *g, uint32_t index, uint64_t entry);
/* Load the GTT (after mgpu_gtt_map of entries before the first load). */
void mgpu_gtt_load(struct mgpu *g);

/* Queue one command (not yet run): its slot, or -PV_EBUSY if the ring is full. */
int mgpu_submit(struct mgpu *g, const struct mgpu_cmd *cmd);
/* Ring the doorbell: runs every queued command; returns the fence's error
 * (0 if all succeeded).  The completion interrupt has been raised when it
 * returns (taken at the next pv_wait / pv_irq_dispatch). */
uint32_t mgpu_kick(struct mgpu *g);
static inline struct mgpu_cmd *mgpu_slot(struct mgpu *g, int slot)
{
    return &g->ring[slot];
}
static inline uint32_t mgpu_reg(const struct mgpu *g, unsigned off)
{
    return g->regs[off / 4];
}
static inline void mgpu_reg_write(struct mgpu *g, unsigned off, uint32_t v)
{
    g->regs[off / 4] = v;
}

/* Helpers that queue one command each (-PV_EBUSY when full). */
int mgpu_fill(struct mgpu *g, uint32_t dst, uint32_t pitch, uint16_t x, uint16_t y,
              uint16_t w, uint16_t h, uint32_t color);
int mgpu_copy(struct mgpu *g, uint32_t dst, uint32_t dst_pitch, uint16_t x, uint16_t y,
              uint16_t w, uint16_t h, uint32_t src, uint32_t src_pitch, uint16_t sx,
              uint16_t sy);
int mgpu_checksum(struct mgpu *g, uint32_t dst, uint32_t pitch, uint16_t x, uint16_t y,
                  uint16_t w, uint16_t h);
int mgpu_present_surface(struct mgpu *g, uint32_t dst, uint32_t pitch, uint16_t w,
                         uint16_t h);

/* CHECKSUM's CRC-32 is the IEEE one zlib computes: pv_crc32() (paravm.h). */

#endif
