/*
 * vchan: libxenvchan's byte-stream channel between two domains (a guest and
 * the host, or two guests), on grants, one event channel and xenstore.
 * The layout and protocol are Xen's (xen/include/public/io/libxenvchan.h,
 * tools/libs/vchan; specs/grant-mpt.md §D1.6, §D2.9); the host side is
 * paravm.services.vchan.  See that module's docstring for the control page.
 *
 * The server grants the control page and the ring pages to the client and
 * publishes <xs_path>/ring-ref and <xs_path>/event-channel in xenstore,
 * readable by the client; the client maps them.  The left ring carries
 * client -> server bytes, the right ring server -> client.
 *
 * Errors are negative errno values.  One user per end (no locking).
 */
#ifndef PARAVM_VCHAN_H
#define PARAVM_VCHAN_H

#include <stddef.h>
#include <stdint.h>
#include <paravm/evtchn.h>

#define VCHAN_NOTIFY_WRITE 0x1
#define VCHAN_NOTIFY_READ  0x2
#define VCHAN_MAX_RING_PAGES 256         /* order 20: 1 MiB */

struct vchan_ring_shared {
    uint32_t cons, prod;
};

struct vchan_interface {
    struct vchan_ring_shared left, right;   /* @0, @8 */
    uint16_t left_order, right_order;       /* @16, @18 */
    uint8_t cli_live, srv_live;             /* @20, @21: 0 gone, 1 live, 2 not yet */
    uint8_t cli_notify, srv_notify;         /* @22, @23 */
    uint32_t grants[];                      /* @24 */
};
_Static_assert(sizeof(struct vchan_interface) == 24, "vchan control page header");

struct vchan_ring {
    struct vchan_ring_shared *shr;
    uint8_t *buffer;
    uint32_t order;
};

struct vchan {
    struct vchan_interface *ring;
    struct vchan_ring read, write;
    int is_server;
    int blocking;                /* 1 (default): read/write wait for the peer */
    domid_t peer;
    evtchn_port_t port;
    /* what close must give back */
    uint32_t nr_refs;
    uint32_t refs[1 + 2 * VCHAN_MAX_RING_PAGES];     /* server: grant refs */
    uint32_t handles[1 + 2 * VCHAN_MAX_RING_PAGES];  /* client: map handles */
    void *addrs[1 + 2 * VCHAN_MAX_RING_PAGES];       /* client: where they are mapped */
    char xs_path[128];
};

/* Serve a vchan to domain peer at xenstore xs_path, with rings of at least
 * left_min (client -> server) and right_min bytes (<= 1 MiB each).  The
 * pages come from pv_page_alloc and are not given back at close. */
int vchan_server_init(struct vchan *v, domid_t peer, const char *xs_path,
                      size_t left_min, size_t right_min);
/* Connect to the vchan domain peer serves at xs_path, waiting up to
 * timeout_ns for it to appear.  -PV_EINVAL for ring orders out of range. */
int vchan_client_init(struct vchan *v, domid_t peer, const char *xs_path,
                      uint64_t timeout_ns);

/* Write all size bytes (blocking) or what fits (non-blocking): bytes
 * written; -PV_EPIPE once the peer is gone. */
long vchan_write(struct vchan *v, const void *data, size_t size);
/* Read up to size bytes, at least one (blocking) or 0 (non-blocking and
 * empty); 0 too once the peer is gone and the ring is empty. */
long vchan_read(struct vchan *v, void *data, size_t size);
/* Bytes readable now / writable now (each asks to be notified). */
long vchan_data_ready(struct vchan *v);
long vchan_buffer_space(struct vchan *v);
/* 1 while the peer is there (a server's not-yet-connected client counts). */
int vchan_is_open(struct vchan *v);
/* Wait for the peer's next notification: 1, or 0 after timeout_ns. */
int vchan_wait(struct vchan *v, uint64_t timeout_ns);
/* Mark this side gone, notify the peer, give back grants / mappings. */
void vchan_close(struct vchan *v);

#endif
