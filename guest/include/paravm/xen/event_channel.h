/*
 * Xen event channels: the public ABI a guest uses (numbers and layouts of
 * Xen's public event_channel.h and xen.h, x86_64, 2-level ABI), written for
 * paravm from specs/grant-mpt.md §D1.2.  The VMM side is
 * src/paravm/services/evtchn/abi.py; tests/unit/test_evtchn.py compiles this
 * header and checks every number, size and offset against it.
 *
 * Freestanding (stdint.h only), so it also builds on the host.
 */
#ifndef PARAVM_XEN_EVENT_CHANNEL_H
#define PARAVM_XEN_EVENT_CHANNEL_H

#include <stdint.h>

#include "paravm/xen/xen.h"

typedef uint32_t evtchn_port_t;

/* The hypercall: event_channel_op(cmd, GPA of the cmd's struct) -> 0 or -errno
 * (Xen's __HYPERVISOR_event_channel_op number). */
#define PV_HC_EVENT_CHANNEL_OP 32

/* cmd values */
#define EVTCHNOP_bind_interdomain 0
#define EVTCHNOP_bind_virq        1    /* not modelled by paravm: -ENOSYS */
#define EVTCHNOP_bind_pirq        2    /* not modelled */
#define EVTCHNOP_close            3
#define EVTCHNOP_send             4
#define EVTCHNOP_status           5
#define EVTCHNOP_alloc_unbound    6
#define EVTCHNOP_bind_ipi         7
#define EVTCHNOP_bind_vcpu        8
#define EVTCHNOP_unmask           9
#define EVTCHNOP_reset            10   /* not modelled */
#define EVTCHNOP_init_control     11   /* FIFO ABI: not modelled */
#define EVTCHNOP_expand_array     12   /* FIFO ABI: not modelled */
#define EVTCHNOP_set_priority     13   /* FIFO ABI: not modelled */

/* Reserve a fresh port of <dom> (DOMID_SELF or the caller) for <remote_dom>
 * to bind; <remote_dom> may be DOMID_SELF (a loopback channel). */
struct evtchn_alloc_unbound {
    domid_t dom;                /* IN */
    domid_t remote_dom;         /* IN */
    evtchn_port_t port;         /* OUT */
};

/* Link a fresh local port to <remote_port> of <remote_dom>, which must be
 * UNBOUND and reserved for the caller.  The local port starts pending. */
struct evtchn_bind_interdomain {
    domid_t remote_dom;         /* IN */
    evtchn_port_t remote_port;  /* IN */
    evtchn_port_t local_port;   /* OUT */
};

/* A fresh port that signals <vcpu> of the caller itself. */
struct evtchn_bind_ipi {
    uint32_t vcpu;              /* IN */
    evtchn_port_t port;         /* OUT */
};

struct evtchn_close { evtchn_port_t port; };
struct evtchn_send { evtchn_port_t port; };
struct evtchn_unmask { evtchn_port_t port; };

/* Deliver <port>'s events to <vcpu> from now on (UNBOUND/INTERDOMAIN ports). */
struct evtchn_bind_vcpu {
    evtchn_port_t port;
    uint32_t vcpu;
};

#define EVTCHNSTAT_closed       0
#define EVTCHNSTAT_unbound      1
#define EVTCHNSTAT_interdomain  2
#define EVTCHNSTAT_pirq         3
#define EVTCHNSTAT_virq         4
#define EVTCHNSTAT_ipi          5

struct evtchn_status {
    domid_t dom;                /* IN: DOMID_SELF or the caller */
    evtchn_port_t port;         /* IN */
    uint32_t status;            /* OUT: EVTCHNSTAT_* */
    uint32_t vcpu;              /* OUT: the vCPU notified */
    union {                     /* OUT, by status */
        struct { domid_t dom; } unbound;                         /* may bind */
        struct { domid_t dom; evtchn_port_t port; } interdomain; /* the peer */
        uint32_t pirq;
        uint32_t virq;
    } u;
};

/* --- shared_info, 2-level ABI ---------------------------------------------
 * One page; the VMM writes it at the same time as the guest, so every
 * read-modify-write of it must be a locked instruction. */
#define XEN_LEGACY_MAX_VCPUS    32
#define EVTCHN_2L_NR_CHANNELS   4096   /* 64 words of 64 bits */

struct vcpu_info {
    uint8_t evtchn_upcall_pending;  /* set by the VMM before it raises the upcall vector */
    uint8_t evtchn_upcall_mask;     /* PV guests only: paravm ignores it (as Xen for HVM) */
    uint8_t pad0[6];
    uint64_t evtchn_pending_sel;    /* bit w: evtchn_pending[w] has news */
    uint8_t arch[16];               /* struct arch_vcpu_info: not maintained */
    uint8_t time[32];               /* struct vcpu_time_info: not maintained */
};

struct shared_info {
    struct vcpu_info vcpu_info[XEN_LEGACY_MAX_VCPUS];
    uint64_t evtchn_pending[64];    /* port p: bit p % 64 of word p / 64 */
    uint64_t evtchn_mask[64];       /* a masked port is never delivered */
    uint32_t wc_version;            /* wallclock fields: not maintained (zero) */
    uint32_t wc_sec;
    uint32_t wc_nsec;
    uint8_t rest[3136 - 3084];      /* wc_sec_hi, arch_shared_info */
};

_Static_assert(sizeof(struct evtchn_alloc_unbound) == 8, "evtchn_alloc_unbound");
_Static_assert(sizeof(struct evtchn_bind_interdomain) == 12, "evtchn_bind_interdomain");
_Static_assert(sizeof(struct evtchn_status) == 24, "evtchn_status");
_Static_assert(sizeof(struct vcpu_info) == 64, "vcpu_info");
_Static_assert(sizeof(struct shared_info) == 3136, "shared_info");

#endif
