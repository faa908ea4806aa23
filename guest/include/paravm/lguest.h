/*
 * lguest I/O for paravm guests (docs/sdk.md "lguest I/O"; specs part B):
 * the BIND_DMA / SEND_DMA hypercalls as Linux 2.6.23's guest wrappers
 * (drivers/lguest/lguest.c), the device descriptor page with lguest_bus.c's
 * status handshake, and drivers for the console (hvc_lguest.c), the block
 * device (lguest_blk.c) and the network (lguest_net.c).
 *
 * Guest memory is identity mapped: a pointer is its guest-physical address,
 * so a buffer is handed to the hypervisor as it is.  A section of a DMA
 * never crosses a page (the hypervisor kills a guest whose list does), so
 * lguest_dma_fill() splits buffers at page boundaries.
 *
 * Interrupts: device i (0..15) uses lguest irq i + 1, which arrives as
 * vector LGUEST_VECTOR_BASE + i + 1 while a vCPU waits in pv_wait().
 * The drivers are single-threaded: one vCPU uses a device at a time
 * (lguest_console_write is the exception: it may be called from any vCPU).
 */
#ifndef PARAVM_LGUEST_H
#define PARAVM_LGUEST_H

#include <stddef.h>
#include <stdint.h>
#include "paravm/lguest_abi.h"

#include "paravm/errno.h"   /* the errno values returned, negated */

#define LGUEST_PAGE_SIZE  4096

/* --- hypercalls ------------------------------------------------------------ */
/* Bind the array dmas[0..num) to key with lguest irq irq (1..31): 0, or
 * -PV_ENOMEM if the hypervisor refused (irq >= 32, 32 bindings already),
 * or the hypercall's own negative error (-PV_ENOSYS: no lguest service). */
int lguest_bind_dma(unsigned long key, struct lguest_dma *dmas, unsigned num, unsigned irq);
/* Undo the binding of (key, dmas) (BIND_DMA with num 0, irq 0). */
void lguest_unbind_dma(unsigned long key, struct lguest_dma *dmas);
/* Zero dma->used_len, then SEND_DMA: on return used_len holds the bytes
 * delivered (0: nobody took them). */
void lguest_send_dma(unsigned long key, struct lguest_dma *dma);

/* Point dma at [buf, buf + len), one section per page touched, used_len 0;
 * len 0 gives an empty "ping" dma.  0, or -PV_E2BIG if it needs more than
 * LGUEST_MAX_DMA_SECTIONS sections (see lguest_dma_room). */
int lguest_dma_fill(struct lguest_dma *dma, const void *buf, size_t len);
/* How many bytes from buf one dma can describe (at least 15 pages + 1). */
size_t lguest_dma_room(const void *buf);
/* used_len, read once (the hypervisor writes it). */
static inline uint32_t lguest_dma_used(const struct lguest_dma *dma)
{
    return __atomic_load_n(&dma->used_len, __ATOMIC_ACQUIRE);
}
/* used_len = 0: a receive buffer is free again. */
static inline void lguest_dma_recycle(struct lguest_dma *dma)
{
    __atomic_store_n(&dma->used_len, 0, __ATOMIC_RELEASE);
}

/* --- devices --------------------------------------------------------------- */
/* Whether this domain has lguest devices (1) or not (0): the boot info's
 * lguest_descs, which the VMM sets for a domain with devices. */
int lguest_present(void);
/* The descriptor page: LGUEST_MAX_DEVICES entries at GPA lguest_descs of the
 * boot info (= ram_size: the page just above RAM).  Only a domain with
 * devices has it: reading it elsewhere stops the domain (check
 * lguest_present() first; lguest_device_find and the probes do). */
volatile struct lguest_device_desc *lguest_device_descs(void);
/* Index of the nth (0, 1, ...) device of type (LGUEST_DEVICE_T_*), or
 * -PV_ENODEV (also in a domain without devices). */
int lguest_device_find(unsigned type, unsigned nth);

struct lguest_device {
    volatile struct lguest_device_desc *desc;
    unsigned index;               /* in the descriptor page */
    unsigned irq;                 /* index + 1 */
    unsigned vector;              /* LGUEST_VECTOR_BASE + irq */
    volatile unsigned long irqs;  /* interrupts taken */
    volatile int removed;         /* the host set REMOVED: stopped and acked */
    /* The driver's stop on REMOVED (unbind, forget the pages), run once
     * before REMOVED_ACK is set; may be NULL. */
    void (*remove)(struct lguest_device *dev);
};

/* The first half of lguest_bus.c's handshake for device index: status
 * ACKNOWLEDGE, then DRIVER; claims the device's vector (its handler counts
 * irqs and handles REMOVED).  0; -PV_ENODEV if there is no device of that
 * type there or it is removed; -PV_EBUSY if the vector is taken (the device
 * is probed already).  The driver then sets it up and calls
 * lguest_device_probed(). */
int lguest_device_probe(struct lguest_device *dev, unsigned index, unsigned type,
                        void (*remove)(struct lguest_device *dev));
/* The second half: err == 0 -> DRIVER_OK; else FAILED, and the vector is
 * released.  Returns err. */
int lguest_device_probed(struct lguest_device *dev, int err);
/* Whether the device is gone: if the host set REMOVED, runs dev->remove,
 * sets REMOVED_ACK (once) and returns 1; else 0.  Drivers call it before
 * each operation and while they wait; the interrupt handler calls it too. */
int lguest_device_gone(struct lguest_device *dev);

/* A monotonic clock in ns (the TSC when its rate is known: no exit). */
uint64_t lguest_clock_ns(void);
/* The drivers wait for interrupts in slices of this many ns, looking at
 * their buffers between slices. */
#define LGUEST_POLL_NS 50000000ull
/* Wait one slice (at most LGUEST_POLL_NS, never past *deadline*; 0 = none);
 * 0 once the deadline has passed, else 1. */
int lguest_wait_slice(uint64_t deadline);
/* The deadline timeout_ns from now for lguest_wait_slice: 0 (none) for a
 * timeout of 0, and no wrap-around for a huge one. */
uint64_t lguest_deadline(uint64_t timeout_ns);

/* --- console (type 1) -------------------------------------------------------- */
#define LGUEST_CONSOLE_IN_SIZE 256

struct lguest_console {
    struct lguest_device dev;
    struct lguest_dma in;             /* bound at key 0 with the device's irq */
    uint32_t in_off;                  /* bytes of the input already read */
    uint8_t in_buf[LGUEST_CONSOLE_IN_SIZE] __attribute__((aligned(LGUEST_CONSOLE_IN_SIZE)));
};

/* Probe the nth console: binds the input buffer.  0 or -errno. */
int lguest_console_probe(struct lguest_console *c, unsigned nth);
/* Send bytes to the console (key 0): the bytes the host took (its used_len,
 * summed), or -PV_ENODEV once removed.  Any vCPU may call it. */
long lguest_console_write(struct lguest_console *c, const void *buf, size_t len);
/* Up to max bytes of input: what has arrived, waiting up to timeout_ns for
 * some (0: no timeout).  Bytes copied, 0 when the timeout passed with none,
 * -PV_ENODEV once removed.  The buffer is given back to the host (used_len
 * 0) when all of it has been read. */
long lguest_console_read(struct lguest_console *c, void *buf, size_t max, uint64_t timeout_ns);
/* printf/puts/pv_console_write go through console c from now on; NULL goes
 * back to the console_write hypercall (as does the console's removal). */
void lguest_console_set_printf(struct lguest_console *c);

/* --- block device (type 3) --------------------------------------------------- */
struct lguest_blk {
    struct lguest_device dev;
    volatile struct lguest_block_page *page;
    uint64_t num_sectors;             /* disk size / 512 rounded up, from the page */
    uint64_t disk_bytes;              /* the exact disk size, from the page */
    unsigned irq;
    uint64_t timeout_ns;              /* per request (default 30 s); then -PV_ETIMEDOUT */
    struct lguest_dma reply;          /* bound once at key = page GPA */
    struct lguest_dma req;
};

/* Probe the nth block device: binds the reply dma.  0 or -errno. */
int lguest_blk_probe(struct lguest_blk *b, unsigned nth);
/* bytes at byte offset sector * 512, split into requests of at most 16
 * sections (the split points are sector multiples); one request at a time,
 * each waited for.  0; -PV_EIO if the host answered LGUEST_BLOCK_ERROR
 * (beyond the end, read-only disk, short transfer: the host checks ranges,
 * not this driver); -PV_EINVAL for a sector beyond 2^32 - 1;
 * -PV_ETIMEDOUT (the request may still complete later: the device is not
 * safe to use after it); -PV_ENODEV once removed.  A read of the partial last
 * sector of an odd-sized image gives its bytes then zeros. */
int lguest_blk_read(struct lguest_blk *b, uint64_t sector, void *buf, size_t bytes);
int lguest_blk_write(struct lguest_blk *b, uint64_t sector, const void *buf, size_t bytes);
/* Have the host make the writes so far durable (LGUEST_BLOCK_FLUSH). */
int lguest_blk_flush(struct lguest_blk *b);

/* --- network (type 2) ------------------------------------------------------- */
#define LGUEST_NET_RX_BUFS   8
#define LGUEST_NET_MAX_PAGES 4      /* slot numbers stay below the feature bits */
#define LGUEST_NET_MAX_SLOTS (LGUEST_NET_MAX_PAGES * LGUEST_PAGE_SIZE / 6)
#define LGUEST_ETH_HLEN      14

struct lguest_netdev {
    struct lguest_device dev;
    volatile struct lguest_net *slots;   /* the LAN's page(s) */
    uint64_t page;                       /* their GPA; peer i's key = page + 4 * i */
    unsigned nslots, me;
    uint8_t mac[6];                      /* mine, promiscuous bit clear */
    int open, promisc;
    unsigned rx_next;
    unsigned long tx_errors;             /* sends a matching peer did not take */
    unsigned long rx_dropped;            /* frames < 14 or > 1514 bytes */
    unsigned tx_missed;                  /* peers that missed the last frame */
    struct lguest_dma tx;
    struct lguest_dma rx[LGUEST_NET_RX_BUFS];
    uint8_t missed[(LGUEST_NET_MAX_SLOTS + 7) / 8];
    uint8_t rxbuf[LGUEST_NET_RX_BUFS][LGUEST_NET_MAX_FRAME];
};

/* Probe the nth net device: my slot from the features, my MAC from my slot
 * (written by the host).  0 or -errno. */
int lguest_net_probe(struct lguest_netdev *n, unsigned nth);
/* Bind 8 receive buffers of 1514 bytes at my key, publish my MAC (with the
 * promiscuous bit if promisc).  0 or -errno (-PV_EBUSY if open). */
int lguest_net_open(struct lguest_netdev *n, int promisc);
/* Zero my slot and unbind. */
void lguest_net_close(struct lguest_netdev *n);
/* Send frame (>= 14 bytes) to every peer it is for, as lguest_net.c's xmit:
 * each used slot i != me when the destination is multicast/broadcast, or
 * slot i is promiscuous, or the destination is slot i's MAC.  Returns the
 * peers that took all of it (used_len == len); the others are remembered
 * (n->tx_missed) for lguest_net_resend.  -PV_EINVAL (short, not open),
 * -PV_E2BIG (over LGUEST_NET_MAX_FRAME bytes, or over 16 sections), -PV_ENODEV. */
int lguest_net_send(struct lguest_netdev *n, const void *frame, size_t len);
/* The last frame again, only to the peers that missed it and still use
 * their slot (the frame's memory must be unchanged).  Returns the peers that
 * took it now; n->tx_missed is what is still missing. */
int lguest_net_resend(struct lguest_netdev *n);
/* The next received frame into buf (at most max bytes): its length (bytes
 * copied), 0 if none came within timeout_ns (0: wait forever), -PV_EINVAL if
 * not open, -PV_ENODEV.  Frames shorter than 14 or longer than 1514 bytes
 * are dropped. */
long lguest_net_recv(struct lguest_netdev *n, void *buf, size_t max, uint64_t timeout_ns);
/* Slot's MAC (promiscuous bit as stored): 1 if the slot is used, 0 if not,
 * -PV_EINVAL for a slot out of range. */
int lguest_net_slot_mac(const struct lguest_netdev *n, unsigned slot, uint8_t mac[6]);

#endif
