/*
 * lguest-style I/O: the ABI between a guest and paravm's lguest service
 * (docs/lguest.md; the reference is Linux 2.6.23's lguest, specs part B).
 *
 * Layouts are the reference's with `unsigned long` as the guest's (LP64:
 * x86-64), little endian.  Checked against the Python side by
 * tests/unit/test_lguest_abi.py.
 */
#ifndef PARAVM_LGUEST_ABI_H
#define PARAVM_LGUEST_ABI_H

#include <stdint.h>

/* Hypercalls (register form; numbers as LHCALL_BIND_DMA / LHCALL_SEND_DMA).
 *   12 lguest_bind_dma(key, dmas GPA, num, irq) -> 1 bound (or unbound), 0 refused
 *      irq 0 unbinds the binding of (key, dmas); irq >= 32 -> 0; 32 bindings per guest.
 *   13 lguest_send_dma(key, dma GPA) -> 0; the result is in dma->used_len. */
#define LHCALL_BIND_DMA 12
#define LHCALL_SEND_DMA 13

#define LGUEST_MAX_DMA           32    /* bindings per guest */
#define LGUEST_MAX_DMA_SECTIONS  16
#define LGUEST_MAX_DEVICES       16
#define LGUEST_IRQS              32    /* lguest irqs 1..31 (0 unbinds) */
#define LGUEST_CONSOLE_DMA_KEY   0

/* lguest irq n arrives as vector LGUEST_VECTOR_BASE + n (0xC1..0xDF).
 * Device i of the descriptor page uses irq i + 1 (lgdev_irq). */
#define LGUEST_VECTOR_BASE       0xC0

/* struct lguest_dma, LP64: 168 bytes.  A zero len ends the list (all 16 may
 * be used).  used_len: written by the hypervisor, bytes delivered (sender) or
 * received (receiver); a receiver sets it back to 0 to recycle the buffer. */
struct lguest_dma {
    uint32_t used_len;                          /* @0 */
    uint32_t pad;                               /* @4 */
    uint64_t addr[LGUEST_MAX_DMA_SECTIONS];     /* @8, guest-physical */
    uint16_t len[LGUEST_MAX_DMA_SECTIONS];      /* @136 */
};

/* The device descriptor page: the page just above guest RAM (GPA = ram_size
 * of the boot info), 16 entries of 12 bytes; type 0 = no device. */
#define LGUEST_DEVICE_T_CONSOLE  1
#define LGUEST_DEVICE_T_NET      2
#define LGUEST_DEVICE_T_BLOCK    3

#define LGUEST_NET_F_NOCSUM        0x4000
#define LGUEST_DEVICE_F_RANDOMNESS 0x8000

#define LGUEST_DEVICE_S_ACKNOWLEDGE 1
#define LGUEST_DEVICE_S_DRIVER      2
#define LGUEST_DEVICE_S_DRIVER_OK   4
#define LGUEST_DEVICE_S_REMOVED     8     /* set by the host: hot-unplug */
#define LGUEST_DEVICE_S_REMOVED_ACK 16    /* the guest's answer */
#define LGUEST_DEVICE_S_FAILED      128

struct lguest_device_desc {
    uint16_t type;        /* @0 */
    uint16_t features;    /* @2; net: the low bits are my slot number */
    uint16_t status;      /* @4 */
    uint16_t num_pages;   /* @6 */
    uint32_t pfn;         /* @8: the device's pages, above the descriptor page */
};

/* Block device page (1 page at pfn).  The guest binds a one-entry reply
 * lguest_dma at key = the page's GPA with the device's irq, fills the page,
 * then sends to that key: write -> the data sections; read / flush -> an
 * empty "ping" dma (len[0] = 0), the data landing in the bound reply dma.
 * The launcher sets result and raises the irq. */
#define LGUEST_BLOCK_READ   0
#define LGUEST_BLOCK_WRITE  1
#define LGUEST_BLOCK_FLUSH  2     /* paravm extension: the image file is fsync'ed */

#define LGUEST_BLOCK_PENDING 0
#define LGUEST_BLOCK_DONE    1
#define LGUEST_BLOCK_ERROR   2    /* also: beyond the end, a write to a read-only disk */

struct lguest_block_page {
    int32_t type;          /* @0 */
    uint32_t sector;       /* @4: byte offset = sector * 512 */
    uint32_t bytes;        /* @8: request length */
    int32_t result;        /* @12 */
    uint32_t num_sectors;  /* @16: disk size / 512, rounded up (set by the launcher) */
    uint32_t pad;          /* @20 */
    uint64_t disk_bytes;   /* @24: paravm extension: the image's exact size in bytes */
};
/* An image whose size is not a multiple of 512 has a last, partial sector:
 * reads of it return the image's bytes then zeros (DONE); writes that would
 * grow the image are refused (ERROR). */

/* Net device page (1 page at pfn, shared by every guest of the LAN): 682
 * slots of a MAC each; mac[0] == 0: slot unused; mac[0] & 1: that guest is
 * promiscuous.  A guest's rx buffers are bound at key = page GPA + 4 * slot;
 * a frame is sent to slot i at that key (delivered guest to guest).
 * MAC of a guest: 02:00:<domid & 0xff>:<domid >> 8>:00:00. */
#define LGUEST_NET_PROMISC  0x01
#define LGUEST_NET_SLOTS    (4096 / 6)
#define LGUEST_NET_MAX_FRAME 1514   /* longer frames are dropped */

struct lguest_net {
    uint8_t mac[6];
};

#endif
