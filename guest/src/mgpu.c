/* The example mediated GPU's guest driver: see paravm/mgpu.h.
 *
 * Every register access is an exit to the device model (~30 us), so the
 * driver touches registers at bring-up and once per doorbell; commands go
 * through the ring in RAM.
 * The GTT pages are write-tracked by the host: each entry is written with
 * exactly one aligned 8-byte store, the only width the device accepts as a
 * whole entry. */
#include "paravm.h"
#include "paravm/mgpu.h"

#define MGPU_CMD_PENDING 0xFFFFFFFFu    /* a slot's status until the device runs it */

static void mgpu_irq(unsigned vector, void *ctx)
{
    struct mgpu *g = ctx;
    (void)vector;
    uint32_t bits = g->regs[MGPU_REG_IRQ_STATUS / 4];
    g->regs[MGPU_REG_IRQ_STATUS / 4] = bits;      /* write 1 to clear */
    g->irq_bits |= bits;
    g->irqs++;
}

static uint32_t this_apic_id(void)
{
    uint32_t id;
    __asm__ volatile("movl %%gs:%c1, %0" : "=r"(id) : "i"(PV_VP_APIC_ID));
    return id;
}

/* One aligned 8-byte store the host's write tracking sees whole. */
static inline void store64(uint64_t *p, uint64_t v)
{
    __asm__ volatile("movq %1, %0" : "=m"(*p) : "r"(v) : "memory");
}

int mgpu_present(void)
{
    return pv_boot_info()->mgpu != 0;
}

const void *mgpu_opregion(void)
{
    return (const void *)(uintptr_t)pv_boot_info()->mgpu_opregion;
}

static void reg_write64(struct mgpu *g, unsigned lo, uint64_t v)
{
    g->regs[lo / 4] = (uint32_t)v;
    g->regs[lo / 4 + 1] = (uint32_t)(v >> 32);
}

int mgpu_init(struct mgpu *g, uint32_t gtt_pages, uint32_t slots)
{
    memset(g, 0, sizeof *g);
    if (!gtt_pages || gtt_pages > MGPU_GTT_MAX_PAGES || !slots || slots > 4096
        || (slots & (slots - 1)))
        return -PV_EINVAL;
    /* A missing device is a hole in the GPA space: touching it faults. */
    if (!mgpu_present())
        return -PV_ENODEV;
    g->regs = (volatile uint32_t *)(uintptr_t)MGPU_REGS_GPA;
    if (g->regs[MGPU_REG_ID / 4] != MGPU_ID || g->regs[MGPU_REG_VERSION / 4] != MGPU_VERSION)
        return -PV_ENODEV;

    size_t ring_pages = ((size_t)slots * sizeof(struct mgpu_cmd) + 4095) / 4096;
    g->gtt = pv_page_alloc(gtt_pages);
    g->ring = pv_page_alloc(ring_pages);
    g->fence = pv_page_alloc(1);
    if (!g->gtt || !g->ring || !g->fence)
        return -PV_ENOMEM;
    g->gtt_pages = gtt_pages;
    g->slots = slots;

    /* The pages come zeroed: every GTT entry is not present. */
    reg_write64(g, MGPU_REG_GTT_BASE_LO, (uint64_t)(uintptr_t)g->gtt);
    g->regs[MGPU_REG_GTT_PAGES / 4] = gtt_pages;                 /* loads and tracks it */
    reg_write64(g, MGPU_REG_RING_BASE_LO, (uint64_t)(uintptr_t)g->ring);
    g->regs[MGPU_REG_RING_SIZE / 4] = slots;                     /* HEAD = TAIL = 0 */
    reg_write64(g, MGPU_REG_FENCE_LO, (uint64_t)(uintptr_t)g->fence);
    uint32_t status = g->regs[MGPU_REG_STATUS / 4];
    if ((status & (MGPU_STATUS_GTT_VALID | MGPU_STATUS_RING_VALID))
        != (MGPU_STATUS_GTT_VALID | MGPU_STATUS_RING_VALID))
        return -PV_EIO;

    int r = pv_irq_register(MGPU_VECTOR, mgpu_irq, g);
    if (r < 0)
        return r;
    g->regs[MGPU_REG_MSI_ADDRESS / 4] = PV_LAPIC_BASE | this_apic_id() << 12;
    g->regs[MGPU_REG_MSI_DATA / 4] = MGPU_VECTOR;
    g->regs[MGPU_REG_MSI_CONTROL / 4] = 1;
    g->regs[MGPU_REG_IRQ_ENABLE / 4] = MGPU_IRQ_COMPLETE | MGPU_IRQ_ERROR;
    return 0;
}

void mgpu_fini(struct mgpu *g)
{
    if (!g->regs)
        return;
    g->regs[MGPU_REG_IRQ_ENABLE / 4] = 0;
    g->regs[MGPU_REG_MSI_CONTROL / 4] = 0;
    pv_irq_unregister(MGPU_VECTOR);
}

void mgpu_gtt_set(struct mgpu *g, uint32_t index, uint64_t entry)
{
    if (index < g->gtt_pages * MGPU_GTT_ENTRIES_PER_PAGE)
        store64(&g->gtt[index], entry);
}

void mgpu_gtt_map(struct mgpu *g, uint32_t first, uint64_t gpa, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        mgpu_gtt_set(g, first + i, mgpu_gtt_entry(gpa + (uint64_t)i * 4096));
}

void mgpu_gtt_load(struct mgpu *g)
{
    g->regs[MGPU_REG_GTT_PAGES / 4] = g->gtt_pages;
}

int mgpu_submit(struct mgpu *g, const struct mgpu_cmd *cmd)
{
    int slot = (int)(g->tail & (g->slots - 1));
    struct mgpu_cmd *c = &g->ring[slot];
    /* The slot's last command has its status written back once it ran, so
     * only a slot still marked pending needs RING_HEAD (an exit) to say
     * whether the ring is full. */
    if (c->status == MGPU_CMD_PENDING && g->tail - g->regs[MGPU_REG_RING_HEAD / 4] >= g->slots)
        return -PV_EBUSY;
    *c = *cmd;
    c->status = MGPU_CMD_PENDING;
    c->result = 0;
    g->tail++;
    return slot;
}

uint32_t mgpu_kick(struct mgpu *g)
{
    /* The commands must be in RAM before the doorbell's exit. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    g->regs[MGPU_REG_RING_TAIL / 4] = g->tail;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return g->fence->error;
}

int mgpu_fill(struct mgpu *g, uint32_t dst, uint32_t pitch, uint16_t x, uint16_t y,
              uint16_t w, uint16_t h, uint32_t color)
{
    struct mgpu_cmd c = {.op = MGPU_OP_FILL, .dst = dst, .dst_pitch = pitch,
                         .x = x, .y = y, .w = w, .h = h, .color = color};
    return mgpu_submit(g, &c);
}

int mgpu_copy(struct mgpu *g, uint32_t dst, uint32_t dst_pitch, uint16_t x, uint16_t y,
              uint16_t w, uint16_t h, uint32_t src, uint32_t src_pitch, uint16_t sx,
              uint16_t sy)
{
    struct mgpu_cmd c = {.op = MGPU_OP_COPY, .dst = dst, .dst_pitch = dst_pitch,
                         .src = src, .src_pitch = src_pitch,
                         .x = x, .y = y, .w = w, .h = h, .sx = sx, .sy = sy};
    return mgpu_submit(g, &c);
}

int mgpu_checksum(struct mgpu *g, uint32_t dst, uint32_t pitch, uint16_t x, uint16_t y,
                  uint16_t w, uint16_t h)
{
    struct mgpu_cmd c = {.op = MGPU_OP_CHECKSUM, .dst = dst, .dst_pitch = pitch,
                         .x = x, .y = y, .w = w, .h = h};
    return mgpu_submit(g, &c);
}

int mgpu_present_surface(struct mgpu *g, uint32_t dst, uint32_t pitch, uint16_t w,
                         uint16_t h)
{
    struct mgpu_cmd c = {.op = MGPU_OP_PRESENT, .dst = dst, .dst_pitch = pitch,
                         .w = w, .h = h};
    return mgpu_submit(g, &c);
}
