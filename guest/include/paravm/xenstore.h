/*
 * xenstore for paravm guests: the key-value store Xen PV protocols meet in
 * (a vchan server publishes ring-ref and event-channel there).  The store
 * lives in the VMM (paravm.services.xenstore, docs/xenstore.md); these calls
 * are the hypercall xenstore_op (33).
 *
 * Paths are absolute ("/local/domain/3/data/x") or relative to this
 * domain's home "/local/domain/<domid>".  A guest writes only under its own
 * home; a node it writes is readable by itself, the host, and the one
 * domain named as reader (XS_NO_READER: nobody else).
 *
 * Errors are negative errno values: -PV_ENOENT (no node), -PV_EACCES (not
 * yours / not readable by you), -PV_EINVAL (bad path), -PV_E2BIG (value over
 * 4096 bytes), -PV_ENOSPC (1000 nodes per domain), -PV_EFAULT.
 */
#ifndef PARAVM_XENSTORE_H
#define PARAVM_XENSTORE_H

#include <stddef.h>
#include <stdint.h>
#include "paravm/errno.h"

#define PV_HC_XENSTORE_OP   33
#define XS_OP_READ          0
#define XS_OP_WRITE         1
#define XS_OP_RM            2
#define XS_NO_READER        0x7FF4   /* DOMID_INVALID */
#define XS_VALUE_MAX        4096


/* Copy at most len-1 bytes of the value at path into buf, NUL-terminated;
 * the value's full length, or a negative errno. */
long xs_read(const char *path, char *buf, size_t len);
/* Create or replace path with the NUL-terminated value, readable by
 * reader_domid too (XS_NO_READER: only this domain and the host). */
long xs_write(const char *path, const char *value, unsigned reader_domid);
/* Remove path and everything under it. */
long xs_rm(const char *path);
/* xs_read, retried every millisecond until the node exists or timeout_ns
 * passes (-PV_ETIMEDOUT); other errors return at once.  Xenstore watches
 * are not modelled: this is the guest's way to wait for a peer. */
long xs_wait_read(const char *path, char *buf, size_t len, uint64_t timeout_ns);
/* Read a decimal unsigned value (ring-ref, event-channel). */
long xs_read_uint(const char *path, unsigned long *out);

#endif
