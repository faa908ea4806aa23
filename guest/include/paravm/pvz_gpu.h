/*
 * A guest driver for paravm's example PVZ GPU (docs/pvz.md;
 * src/paravm/devices/pvzgpu.py is the device).
 *
 * pvz_gpu_init() is the DDK's guest bring-up over the PVZ connection:
 * validate the connection, CreateDevConfig (register base and IRQ),
 * CreateDevPhysHeaps, and then the firmware heap: with origin GUEST this
 * guest allocates it (RGX_FIRMWARE_HEAP_SIZE bytes of its RAM, page aligned)
 * and maps it with MapDevPhysHeap; with origin HOST it uses the slice the
 * host carved out, at the GPA CreateDevPhysHeaps gave.  The command queue
 * (a CCB: control block at heap offset 0, slots from 0x1000) lives in that
 * heap; commands work on heap offsets.  pvz_gpu_fini() undoes it in reverse
 * (UnmapDevPhysHeap, DestroyDevPhysHeaps, DestroyDevConfig).
 *
 * Not thread-safe: one vCPU drives one struct pvz_gpu.
 */
#ifndef PARAVM_PVZ_GPU_H
#define PARAVM_PVZ_GPU_H

#include <stddef.h>
#include <stdint.h>
#include "paravm/pvz.h"

/* Registers (32-bit, offsets in the bank). */
#define PVZ_GPU_ID              0x5A565047u   /* "GPVZ" */
#define PVZ_GPU_REG_ID          0x00
#define PVZ_GPU_REG_OSID        0x04
#define PVZ_GPU_REG_STATUS      0x08    /* bit 0 FW running, 1 OS online, 2 heap ready */
#define PVZ_GPU_REG_KICK        0x0C
#define PVZ_GPU_REG_IRQ_STATUS  0x10    /* write 1 to clear */
#define PVZ_GPU_REG_IRQ_ENABLE  0x14
#define PVZ_GPU_REG_PRIORITY    0x18
#define PVZ_GPU_REG_COMPLETED   0x1C
#define PVZ_GPU_REG_HEAP_SIZE   0x20
#define PVZ_GPU_REG_HCS_DEADLINE 0x24   /* ms */
#define PVZ_GPU_STATUS_FW_RUNNING 1u
#define PVZ_GPU_STATUS_OS_ONLINE  2u
#define PVZ_GPU_STATUS_HEAP_READY 4u
#define PVZ_GPU_IRQ_DONE        1u
#define PVZ_GPU_IRQ_ERROR       2u

/* The queue. */
#define PVZ_GPU_CCB_OFFSET      0x1000
#define PVZ_GPU_CCB_MAX_SLOTS   1024
#define PVZ_GPU_DATA_OFFSET     0x20000   /* first offset the helpers below use for data */

struct pvz_gpu_ccb_ctl {
    volatile uint32_t write_offset;   /* the guest's: next slot it fills */
    volatile uint32_t read_offset;    /* the firmware's: next slot it runs */
    uint32_t wrap_mask;               /* slots - 1 */
    uint32_t cmd_size;                /* sizeof(struct pvz_gpu_cmd) */
};

#define PVZ_GPU_OP_NOP      0
#define PVZ_GPU_OP_FILL     1   /* [dst, dst+len) = value (32-bit, repeated) */
#define PVZ_GPU_OP_COPY     2   /* [dst, dst+len) = [src, src+len) (may overlap) */
#define PVZ_GPU_OP_CHECKSUM 3   /* result = CRC-32 of [src, src+len) */
#define PVZ_GPU_FLAG_IRQ     1u /* interrupt when this command is done */
#define PVZ_GPU_FLAG_DST_GPU 2u /* dst is in the GPU heap slice */
#define PVZ_GPU_FLAG_SRC_GPU 4u /* src is in the GPU heap slice */
#define PVZ_GPU_ST_DONE     0
#define PVZ_GPU_ST_FAULT    1   /* an operand outside its heap */
#define PVZ_GPU_ST_BAD      2   /* unknown op or flags */

struct pvz_gpu_cmd {
    uint32_t op;
    uint32_t flags;
    uint64_t dst, src, len;   /* heap offsets, bytes */
    uint32_t value;
    volatile uint32_t status; /* written by the firmware */
    volatile uint64_t result; /* written by the firmware */
    uint64_t tag;             /* the guest's own */
    uint64_t reserved;
};

struct pvz_gpu {
    volatile uint32_t *regs;
    uint32_t irq;                  /* the vector CreateDevConfig gave */
    uint32_t regs_size;
    PVRSRV_DEVICE_PHYS_HEAP_ORIGIN origin;
    uint8_t *fw;                   /* the firmware heap (identity mapped: GPA = pointer) */
    uint64_t fw_size;
    uint8_t *gpu;                  /* the GPU heap slice, or 0 (UMA) */
    uint64_t gpu_size;
    struct pvz_gpu_ccb_ctl *ctl;
    struct pvz_gpu_cmd *ccb;
    uint32_t slots;
    uint32_t write;                /* next slot to fill */
    volatile uint32_t irqs;        /* interrupts taken */
    volatile uint32_t irq_bits;    /* IRQ_STATUS bits seen */
    int mapped;                    /* MapDevPhysHeap done */
};

/* Bring the device up with a queue of slots (a power of 2, 1..1024). */
PVRSRV_ERROR pvz_gpu_init(struct pvz_gpu *g, uint32_t slots);
PVRSRV_ERROR pvz_gpu_fini(struct pvz_gpu *g);

/* Queue one command (not yet kicked): its slot, or -PV_EBUSY if the queue
 * is full (wait for the firmware first). */
int pvz_gpu_submit(struct pvz_gpu *g, const struct pvz_gpu_cmd *cmd);
void pvz_gpu_kick(struct pvz_gpu *g);
/* 1 once the firmware has run every queued command, else 0. */
int pvz_gpu_idle(const struct pvz_gpu *g);
/* Wait (interrupts) until idle: 0, or -PV_ETIMEDOUT after timeout_ns. */
int pvz_gpu_wait_idle(struct pvz_gpu *g, uint64_t timeout_ns);
static inline struct pvz_gpu_cmd *pvz_gpu_slot(struct pvz_gpu *g, int slot)
{
    return &g->ccb[slot];
}
static inline uint32_t pvz_gpu_reg(const struct pvz_gpu *g, unsigned off)
{
    return g->regs[off / 4];
}

/* One command, kicked and waited for: its status, or -PV_ETIMEDOUT /
 * -PV_EBUSY; *result (if not 0) gets the CHECKSUM result. */
int pvz_gpu_run(struct pvz_gpu *g, const struct pvz_gpu_cmd *cmd, uint64_t *result);

/* The CRC-32 the CHECKSUM command computes (IEEE, as zlib's crc32). */
uint32_t pvz_crc32(uint32_t crc, const void *p, size_t n);

#endif
