/*
 * Xen event channels for paravm guests (docs/evtchn.md; specs/grant-mpt.md
 * §D1.2, §D2.6).
 *
 * A port is a numbered end of a channel: between two domains (interdomain;
 * the host is domain 0), or to one of this domain's own vCPUs (IPI).  An
 * event sets the port's bit in the shared_info page and, by Xen's 2-level
 * rule, raises the upcall vector (boot info evtchn_vector) on the port's
 * vCPU.  Like every paravm interrupt, the upcall runs in ring 3 from
 * pv_wait() / pv_irq_dispatch(); it calls the handler bound to each pending
 * port with evtchn_bind_handler().  A pending port without a handler is left
 * pending for evtchn_test_and_clear() / evtchn_wait().
 *
 * Setting up a channel between domains A and B: A calls
 * evtchn_alloc_unbound(B) and tells B the port (through xenstore,
 * paravm/xenstore.h: xs_write / xs_wait_read, as vchan and the pipeline
 * example do; or arguments, a shared page, the lowest-first numbering from
 * 1); B calls evtchn_bind_interdomain(A, port).  B's new
 * port starts pending.  Closing one end returns the other to UNBOUND without
 * any event; sends on it are then dropped (0).
 *
 * Calls return >= 0, or a negative Linux errno: -PV_ENODEV without Xen
 * services (boot info xen_shared_info is 0); the hypervisor's errors as Xen
 * returns them: -PV_EINVAL (bad port or state), -PV_ESRCH (unknown domain),
 * -PV_EPERM (another domain's port), -PV_ENOSPC (no free port), -PV_ENOENT
 * (no such vCPU).  Handlers of one port never run twice at once; handlers of
 * different ports may run on different vCPUs at the same time.
 */
#ifndef PARAVM_EVTCHN_H
#define PARAVM_EVTCHN_H

#include <stdint.h>
#include "paravm.h"
#include "paravm/xen/event_channel.h"

typedef void (*evtchn_handler)(evtchn_port_t port, void *ctx);

/* Register the upcall handler on boot info evtchn_vector.  0 (also when
 * called again), -PV_ENODEV without Xen services, pv_irq_register's error
 * if the vector is not usable. */
int evtchn_init(void);
/* The shared_info page, or 0 without Xen services. */
struct shared_info *evtchn_shared_info(void);

/* The hypercall itself (Xen's name); arg points at the cmd's struct. */
static inline long HYPERVISOR_event_channel_op(int cmd, void *arg)
{
    return pv_hypercall2(PV_HC_EVENT_CHANNEL_OP, (uint32_t)cmd, (uint64_t)arg);
}

/* A new port UNBOUND for remote_domid (DOMID_SELF: a loopback channel). */
int evtchn_alloc_unbound(domid_t remote_domid);
/* A new port linked to remote_port of remote_domid (reserved for us); it
 * starts pending.  Returns the local port. */
int evtchn_bind_interdomain(domid_t remote_domid, evtchn_port_t remote_port);
/* A new port that signals our own vCPU vcpu when sent on. */
int evtchn_bind_ipi(unsigned vcpu);
/* Deliver port's events to vcpu from now on. */
int evtchn_bind_vcpu(evtchn_port_t port, unsigned vcpu);
int evtchn_send(evtchn_port_t port);
/* Close port (its handler is unbound first). */
int evtchn_close(evtchn_port_t port);
/* EVTCHNOP_status of our own port into *out. */
int evtchn_status(evtchn_port_t port, struct evtchn_status *out);

/* Masking: a masked port collects events (its pending bit) but raises no
 * upcall; unmasking one that is pending delivers it.  -PV_EINVAL for a port
 * outside 0..4095. */
int evtchn_mask(evtchn_port_t port);
int evtchn_unmask(evtchn_port_t port);

/* Run fn(port, ctx) from the upcall for each event on port (fn 0: none).
 * A port already pending and unmasked is delivered at the next pv_wait().
 * Calls evtchn_init(); its error, or -PV_EINVAL for a bad port. */
int evtchn_bind_handler(evtchn_port_t port, evtchn_handler fn, void *ctx);

/* Polling, for ports without a handler: clear port's pending bit; 1 if it
 * was set, 0 if not, -PV_EINVAL for a bad port, -PV_ENODEV. */
int evtchn_test_and_clear(evtchn_port_t port);
/* Wait (interrupts, no spinning) until port is pending, then clear it: 1;
 * 0 once timeout_ns passed (0: no timeout); -PV_EINVAL, -PV_ENODEV.  The
 * port must be unmasked and have no handler (a handler takes the event). */
int evtchn_wait(evtchn_port_t port, uint64_t timeout_ns);

/* The upcall's work on this vCPU, without waiting for the vector: run the
 * handlers of pending, unmasked ports; returns how many ran. */
int evtchn_do_upcall(void);

#endif
