/*
 * Grant tables for paravm guests: the granter and grantee API of Linux's
 * drivers/xen/grant-table.c (names and contracts; specs/grant-mpt.md §D2.1),
 * over paravm's grant service (docs/grant.md).
 *
 * Granter: gnttab_grant_foreign_access() publishes a v1 entry and returns its
 * ref; the peer maps or copies the page until gnttab_end_foreign_access_ref()
 * revokes it, which fails with -PV_EBUSY as long as the peer still holds a
 * mapping (GTF_reading/GTF_writing, set by the hypervisor).  A page must not
 * be reused for anything else before the revoke succeeded: the peer may
 * still read and write it.
 *
 * Grantee: the pages where others' grants appear are the grant windows that
 * the VMM gives every Xen domain (boot info grant_window / grant_window_ro,
 * grant_window_pages each): gnttab_alloc_pages() hands out free window pages,
 * gnttab_map_refs() maps grants there, gnttab_unmap_refs() removes them.
 * gnttab_map_grant_ref() / gnttab_unmap_grant_ref() do all of it for one page.
 * Writes through a read-only mapping are discarded (Xen's p2m_grant_map_ro).
 *
 * Call gnttab_init() once (on one vCPU) before anything else; afterwards
 * every call may be made from any vCPU: the ref and window allocators are
 * lock-free bitmaps.  Errors of the SDK are negative PV_E* values; per-op
 * results of the hypervisor are GNTST_* statuses (<= 0).
 */
#ifndef PARAVM_GNTTAB_H
#define PARAVM_GNTTAB_H

#include <stdint.h>
#include "paravm.h"
#include "paravm/xen/grant_table.h"

#define GNTTAB_MAX_FRAMES 256   /* the VMM's limit on max_grant_frames */

/* grant_table_op(cmd, uop, count): 0, or -PV_EFAULT (uop not guest memory),
 * -PV_EINVAL (bad count or cmd bits), -PV_ENOSYS (op not modelled, or no
 * Xen services in this domain).  Statuses are in the ops. */
static inline long HYPERVISOR_grant_table_op(unsigned cmd, void *uop, unsigned count)
{
    return pv_hypercall4(PV_HC_GRANT_TABLE_OP, cmd, (uint64_t)(uintptr_t)uop, count, 0);
}

/* Guest-physical frame of an address: RAM, the table and the windows are
 * identity mapped. */
static inline uint64_t virt_to_gfn(const void *p) { return (uint64_t)(uintptr_t)p >> 12; }
static inline void *gfn_to_virt(uint64_t gfn) { return (void *)(uintptr_t)(gfn << 12); }

/* Setup_table to the maximum size (query_size); mark refs 0..7 reserved.
 * 0; -PV_ENODEV without Xen services; -PV_EIO if the VMM's answers do not
 * make sense (a status < 0, frames not contiguous).  Idempotent. */
int gnttab_init(void);
/* Number of refs (entries) of this domain's table; 0 before gnttab_init(). */
unsigned gnttab_nr_refs(void);
/* The shared table itself (for inspection; the entries belong to the
 * granter API, and GTF_reading/GTF_writing to the hypervisor). */
volatile struct grant_entry_v1 *gnttab_shared(void);

/* --- granter -------------------------------------------------------------- */
/* Let <domid> map or copy frame <gfn> (read-only if <readonly>): the lowest
 * free ref >= 8, published as domid, frame, write barrier, flags.
 * -PV_ENOSPC when every ref is taken; -PV_EINVAL for a gfn >= 2^32 (v1
 * frames are 32 bits); -PV_ENODEV before gnttab_init(). */
int gnttab_grant_foreign_access(domid_t domid, uint64_t gfn, int readonly);
/* Revoke <ref>: 0 once the entry is invalid (flags 0), -PV_EBUSY while the
 * grantee holds it (GTF_reading or GTF_writing: try again later), -PV_EINVAL
 * for a ref this API did not hand out.  The ref stays allocated. */
int gnttab_end_foreign_access_ref(grant_ref_t ref);
/* Return a revoked ref to the allocator: 0, -PV_EBUSY if its entry is still
 * valid (end it first), -PV_EINVAL if not allocated. */
int gnttab_free_grant_reference(grant_ref_t ref);
/* Both of the above: 0 revoked and freed, else as end_foreign_access_ref. */
int gnttab_try_end_foreign_access(grant_ref_t ref);
/* GTF_reading|GTF_writing of <ref> now (non-zero: a peer uses it). */
int gnttab_query_foreign_access(grant_ref_t ref);

/* --- grantee ---------------------------------------------------------------- */
static inline void gnttab_set_map_op(struct gnttab_map_grant_ref *op, uint64_t addr,
                                     uint32_t flags, grant_ref_t ref, domid_t domid)
{
    op->host_addr = addr;
    op->flags = flags;
    op->ref = ref;
    op->dom = domid;
    op->status = GNTST_general_error;   /* until the hypervisor says otherwise */
    op->handle = ~0u;
    op->dev_bus_addr = 0;
}
static inline void gnttab_set_unmap_op(struct gnttab_unmap_grant_ref *op, uint64_t addr,
                                       uint32_t flags, grant_handle_t handle)
{
    op->host_addr = (flags & GNTMAP_host_map) ? addr : 0;
    op->dev_bus_addr = 0;
    op->handle = handle;
    op->status = GNTST_general_error;
}

/* <nr> free pages of the read-write (or read-only) grant window into
 * pages[]: 0, or -PV_ENOMEM (none taken) when the window has too few. */
int gnttab_alloc_pages(unsigned nr, void **pages, int readonly);
/* Give window pages back (pointers that are not window pages are ignored). */
void gnttab_free_pages(unsigned nr, void **pages);

/* One GNTTABOP_map_grant_ref call for ops[0..count): each op's status,
 * handle.  host_addr must be a page from gnttab_alloc_pages() of the window
 * that matches GNTMAP_readonly.  0, or the hypercall's -errno. */
int gnttab_map_refs(struct gnttab_map_grant_ref *ops, unsigned count);
/* One GNTTABOP_unmap_grant_ref call; the window pages stay allocated. */
int gnttab_unmap_refs(struct gnttab_unmap_grant_ref *ops, unsigned count);

/* Map grant <ref> of <domid> into a fresh window page (the read-only window
 * if <readonly>): GNTST_okay with *addr and *handle set, else the op's
 * GNTST_* status (the page is given back); GNTST_no_space when the window is
 * full, GNTST_general_error if the hypercall itself fails. */
int gnttab_map_grant_ref(domid_t domid, grant_ref_t ref, int readonly, void **addr,
                         grant_handle_t *handle);
/* Unmap what gnttab_map_grant_ref() mapped at <addr>: the op's status; the
 * window page is free again on GNTST_okay only. */
int gnttab_unmap_grant_ref(void *addr, grant_handle_t handle);

/* One GNTTABOP_copy call: each op's status; 0, or the hypercall's -errno. */
int gnttab_copy(struct gnttab_copy *ops, unsigned count);

#endif
