/*
 * Tegra IVC: the inter-VM frame-queue protocol of the NVIDIA Tegra
 * hypervisor (Linux tegra-ivc), on plain shared memory.
 *
 * A queue is two channels, one per direction.  A channel is a 128-byte
 * header and nframes frames of frame_size bytes each:
 *
 *   off  size  field    written by
 *     0     4  w_count  the sender     free-running u32: frames ever written
 *     4     4  state    the sender     its handshake state (EST 0, SYNC 1, ACK 2)
 *    64     4  r_count  the receiver   free-running u32: frames ever consumed
 *   128        frames   frame i at 128 + i * frame_size
 *
 * Each line of the header has one writer.  Positions (w_pos, r_pos) are kept
 * privately by each endpoint and never read back from shared memory, so a
 * peer that lies about the counters can stall the queue but never make us
 * touch memory outside it.  Occupancy is (w_count - r_count) mod 2^32; more
 * than nframes reads as empty, nframes or more as full.
 *
 * Behaviour follows specs/ivc-lguest-pvz.md part A (the NVIDIA downstream
 * library of Linux 4.9 for names, read/write/peek/poke and channel_sync; the
 * upstream Linux handshake).  Variants where the references disagree are
 * selected with tegra_ivc_set_flags(); the default must match the Python
 * implementation (paravm.services.ivc.protocol):
 *   - empty / full is -PV_ENOMEM (downstream, U-Boot);
 *     TEGRA_IVC_FLAG_ENOSPC gives -PV_ENOSPC (upstream Linux);
 *   - local ACK, remote EST: move to EST and notify; local ACK, remote
 *     garbage (not SYNC/ACK/EST): as for EST (upstream, U-Boot);
 *     TEGRA_IVC_FLAG_OE4T_HANDSHAKE: ACK+EST moves to EST without notifying,
 *     ACK+garbage does nothing (OE4T linux-tegra-4.9, latest).
 *
 * Errors are negative errno values as in Linux.  No locking inside: callers
 * serialise the operations on one endpoint; the two endpoints of a queue
 * may run concurrently on different CPUs or domains.
 *
 * This header is freestanding (stddef.h, stdint.h only): the same source
 * builds into the guest SDK and, for tests, into a host shared library.
 */
#ifndef PARAVM_IVC_H
#define PARAVM_IVC_H

#include <stddef.h>
#include <stdint.h>

/* Linux errno values the IVC calls return, negated. */
#include "paravm/errno.h"
#define PV_EPROBE_DEFER   517   /* kernel-internal: driver not ready yet */

#define TEGRA_IVC_ALIGN         64
#define TEGRA_IVC_HEADER_SIZE   128

/* Handshake states (the sender's `state` word). */
#define TEGRA_IVC_STATE_ESTABLISHED  0  /* zero: an all-zero channel is usable */
#define TEGRA_IVC_STATE_SYNC         1
#define TEGRA_IVC_STATE_ACK          2

/* tegra_ivc_set_flags(): protocol variants (0 = the paravm default). */
#define TEGRA_IVC_FLAG_ENOSPC          0x1u  /* empty/full -> -PV_ENOSPC */
#define TEGRA_IVC_FLAG_OE4T_HANDSHAKE  0x2u  /* see the top of this file */
#define TEGRA_IVC_FLAGS_ALL            0x3u

/* One channel header, as it lies in shared memory (little-endian). */
struct tegra_ivc_header {
    /* cache line 0: written only by the sender of this channel */
    uint32_t w_count;
    uint32_t state;
    uint8_t w_pad[TEGRA_IVC_ALIGN - 8];
    /* cache line 1: written only by the receiver of this channel */
    uint32_t r_count;
    uint8_t r_pad[TEGRA_IVC_ALIGN - 4];
};

_Static_assert(sizeof(struct tegra_ivc_header) == TEGRA_IVC_HEADER_SIZE, "IVC header size");
_Static_assert(offsetof(struct tegra_ivc_header, w_count) == 0, "IVC w_count offset");
_Static_assert(offsetof(struct tegra_ivc_header, state) == 4, "IVC state offset");
_Static_assert(offsetof(struct tegra_ivc_header, r_count) == 64, "IVC r_count offset");

/*
 * One endpoint of a queue.  Private to its owner (never in shared memory);
 * fill it with tegra_ivc_init().  My state and w_count live in tx_channel,
 * my r_count in rx_channel; I learn the peer's state from rx_channel.
 */
struct tegra_ivc {
    struct tegra_ivc_header *rx_channel;
    struct tegra_ivc_header *tx_channel;
    uint32_t w_pos;         /* next frame I write, 0..nframes-1 */
    uint32_t r_pos;         /* next frame I read, 0..nframes-1 */
    uint32_t nframes;
    uint32_t frame_size;    /* bytes, a multiple of TEGRA_IVC_ALIGN */
    uint32_t flags;         /* TEGRA_IVC_FLAG_* */
    /* Called (never with a lock of ours held) whenever the peer must look:
     * reset, every handshake transition, empty -> non-empty after a write,
     * full -> not-full after a read.  It typically rings the peer's doorbell. */
    void (*notify)(struct tegra_ivc *ivc, void *data);
    void *notify_data;
};

/* --- geometry ---------------------------------------------------------- */
/* size rounded up to a multiple of TEGRA_IVC_ALIGN (mod 2^32). */
unsigned tegra_ivc_align(unsigned size);
/* Bytes of one channel holding queue_size bytes of frames: queue_size + 128;
 * 0 if queue_size is not a multiple of TEGRA_IVC_ALIGN. */
unsigned tegra_ivc_total_queue_size(unsigned queue_size);

/*
 * Set up an endpoint over two channels (rx: the peer sends, tx: I send),
 * each at least tegra_ivc_total_queue_size(nframes * frame_size) bytes.
 * Touches neither channel: positions start at 0 and are right only after a
 * reset handshake or tegra_ivc_channel_sync().  Checks, in this order:
 *   nframes * frame_size >= 2^32, rx or tx not 64-byte aligned,
 *   frame_size not a multiple of 64, the channels overlap    -> -PV_EINVAL
 *   ivc or notify NULL                                        -> -PV_EINVAL
 *   frame_size > INT_MAX                                      -> -PV_E2BIG
 * Stricter than the reference: the overlap test counts the 128-byte header
 * (the reference lets channels spaced nframes*frame_size apart share it).
 */
int tegra_ivc_init(struct tegra_ivc *ivc, void *rx, void *tx, unsigned nframes,
                   unsigned frame_size, void (*notify)(struct tegra_ivc *, void *),
                   void *data);
/* Select protocol variants (TEGRA_IVC_FLAG_*); -PV_EINVAL for unknown bits. */
int tegra_ivc_set_flags(struct tegra_ivc *ivc, unsigned flags);

/* --- reset handshake ----------------------------------------------------- */
/* Enter SYNC and notify the peer; data calls fail with -PV_ECONNRESET until
 * tegra_ivc_channel_notified() returns 0. */
void tegra_ivc_channel_reset(struct tegra_ivc *ivc);
/* Call on every notification from the peer: advances the handshake
 * (SYNC/ACK/ESTABLISHED table), 0 once established, else -PV_EAGAIN. */
int tegra_ivc_channel_notified(struct tegra_ivc *ivc);
/* Re-derive the positions from the counters in shared memory
 * (w_pos = tx w_count % nframes, r_pos = rx r_count % nframes) for a channel
 * that was in use before this endpoint was set up; -PV_EINVAL if ivc is
 * NULL or nframes is 0. */
int tegra_ivc_channel_sync(struct tegra_ivc *ivc);

/* --- state queries (1 or 0; 0 while not established) -------------------- */
int tegra_ivc_can_read(struct tegra_ivc *ivc);
int tegra_ivc_can_write(struct tegra_ivc *ivc);
/* 1 if the peer has consumed every frame I wrote (over-full counts as empty). */
int tegra_ivc_tx_empty(struct tegra_ivc *ivc);
/* nframes - (w_count - r_count) of my tx channel, raw u32 arithmetic: wraps
 * if the peer lies about r_count.  Do not size anything with it. */
unsigned tegra_ivc_tx_frames_available(struct tegra_ivc *ivc);

/*
 * --- frames ---------------------------------------------------------------
 * Frames carry no length.  Errors: -PV_ECONNRESET while not established,
 * -PV_ENOMEM (or -PV_ENOSPC, see flags) when empty (read side) or full
 * (write side), -PV_E2BIG for sizes/offsets beyond frame_size (checked
 * first, before the state).
 */
/* Copy the first max bytes of the next frame to buf and consume the whole
 * frame; max > frame_size -> -PV_E2BIG.  Returns max. */
int tegra_ivc_read(struct tegra_ivc *ivc, void *buf, size_t max);
/* Send size bytes as one frame, zero-padded to frame_size;
 * size > frame_size -> -PV_E2BIG.  Returns size. */
int tegra_ivc_write(struct tegra_ivc *ivc, const void *buf, size_t size);
/* Copy count bytes at off of the next frame without consuming it (no
 * notification); off > frame_size or count > frame_size - off -> -PV_E2BIG.
 * Returns count. */
int tegra_ivc_read_peek(struct tegra_ivc *ivc, void *buf, size_t off, size_t count);
/* Store count bytes at off into the next tx frame without sending it;
 * bounds as read_peek.  Returns count. */
int tegra_ivc_write_poke(struct tegra_ivc *ivc, const void *buf, size_t off, size_t count);

/*
 * Zero-copy access.  The pointer is into shared memory: the peer can change
 * the frame under you, so copy before you validate.  NULL on error (as the
 * NVIDIA ivclib; the kernel returns ERR_PTR); the _err forms also store 0 or
 * the negative errno in *err (err may be NULL).  The write frame's old
 * contents are NOT cleared.
 */
void *tegra_ivc_read_get_next_frame(struct tegra_ivc *ivc);
void *tegra_ivc_read_get_next_frame_err(struct tegra_ivc *ivc, int *err);
/* Consume the frame: 0 or the error of the read checks. */
int tegra_ivc_read_advance(struct tegra_ivc *ivc);
void *tegra_ivc_write_get_next_frame(struct tegra_ivc *ivc);
void *tegra_ivc_write_get_next_frame_err(struct tegra_ivc *ivc, int *err);
/* Send the frame as it is: 0 or the error of the write checks. */
int tegra_ivc_write_advance(struct tegra_ivc *ivc);

/*
 * --- the Tegra hypervisor cookie API (tegra_hv_ivc_*) ----------------------
 * The seed's guest API (struct tegra_hv_ivc_cookie { irq, peer_vmid,
 * nframes, frame_size }, tegra_hv_ivc_reserve / unreserve / read / write /
 * ..., struct tegra_hv_ivc_ops { rx_rdy, tx_rdy }) is in paravm/tegra_hv.h,
 * built on the calls above and the IVC info page (specs §A.1.3-A.1.5, A.2).
 */

#endif
