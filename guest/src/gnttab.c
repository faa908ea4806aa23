/* Grant tables: the granter and grantee API of paravm/gnttab.h. */
#include "paravm/gnttab.h"

#define MAX_REFS   (GNTTAB_MAX_FRAMES * 512)
#define MAX_WINDOW 4096                     /* the VMM's limit on grant_window_pages */
#define BUSY_BITS  (GTF_reading | GTF_writing)

/* A set of small numbers, one bit each, claimed with an atomic fetch-or so
 * that two vCPUs never get the same one. */
struct bitmap {
    uint64_t *words;
    unsigned nbits;
};

static int bitmap_claim(struct bitmap *b)
{
    for (unsigned w = 0; w * 64 < b->nbits; w++) {
        uint64_t cur = __atomic_load_n(&b->words[w], __ATOMIC_RELAXED);
        while (~cur) {
            unsigned bit = (unsigned)__builtin_ctzll(~cur);
            if (w * 64 + bit >= b->nbits)
                break;
            uint64_t mask = 1ull << bit;
            cur = __atomic_fetch_or(&b->words[w], mask, __ATOMIC_ACQUIRE);
            if (!(cur & mask))
                return (int)(w * 64 + bit);
        }
    }
    return -1;
}

static int bitmap_test(const struct bitmap *b, unsigned i)
{
    return i < b->nbits && (__atomic_load_n(&b->words[i / 64], __ATOMIC_RELAXED) >> (i % 64)) & 1;
}

/* 1 if bit i was set (and is now clear). */
static int bitmap_release(struct bitmap *b, unsigned i)
{
    if (i >= b->nbits)
        return 0;
    uint64_t mask = 1ull << (i % 64);
    return (__atomic_fetch_and(&b->words[i / 64], ~mask, __ATOMIC_RELEASE) & mask) != 0;
}

static uint64_t ref_words[MAX_REFS / 64];
static uint64_t rw_words[MAX_WINDOW / 64], ro_words[MAX_WINDOW / 64];

static struct {
    int ready;
    volatile struct grant_entry_v1 *shared;
    struct bitmap refs;
    uintptr_t window[2];          /* [readonly]: GPA of the window */
    struct bitmap slots[2];
} gt = {
    .refs = { ref_words, 0 },
    .slots = { { rw_words, 0 }, { ro_words, 0 } },
};

int gnttab_init(void)
{
    if (gt.ready)
        return 0;
    struct gnttab_query_size q = { .dom = DOMID_SELF };
    if (HYPERVISOR_grant_table_op(GNTTABOP_query_size, &q, 1) < 0)
        return -PV_ENODEV;
    if (q.status != GNTST_okay || q.max_nr_frames == 0 || q.max_nr_frames > GNTTAB_MAX_FRAMES)
        return -PV_EIO;

    static uint64_t frames[GNTTAB_MAX_FRAMES];
    struct gnttab_setup_table s = {
        .dom = DOMID_SELF, .nr_frames = q.max_nr_frames, .frame_list = (uintptr_t)frames,
    };
    if (HYPERVISOR_grant_table_op(GNTTABOP_setup_table, &s, 1) < 0 || s.status != GNTST_okay)
        return -PV_EIO;
    for (unsigned i = 1; i < q.max_nr_frames; i++)
        if (frames[i] != frames[0] + i)      /* this SDK indexes one flat array */
            return -PV_EIO;

    const struct pv_boot_info *bi = pv_boot_info();
    unsigned pages = bi->grant_window_pages;
    if (!bi->grant_window || !bi->grant_window_ro || !pages || pages > MAX_WINDOW)
        return -PV_ENODEV;
    gt.window[0] = bi->grant_window;
    gt.window[1] = bi->grant_window_ro;
    gt.slots[0].nbits = gt.slots[1].nbits = pages;

    gt.shared = gfn_to_virt(frames[0]);
    gt.refs.nbits = q.max_nr_frames * 512;
    ref_words[0] |= (1u << GNTTAB_NR_RESERVED_ENTRIES) - 1;   /* never handed out */
    gt.ready = 1;
    return 0;
}

unsigned gnttab_nr_refs(void) { return gt.ready ? gt.refs.nbits : 0; }
volatile struct grant_entry_v1 *gnttab_shared(void) { return gt.shared; }

/* --- granter ------------------------------------------------------------------ */

/* A ref this API handed out (and not freed), so an entry we may touch. */
static int owned(grant_ref_t ref)
{
    return gt.ready && ref >= GNTTAB_NR_RESERVED_ENTRIES && bitmap_test(&gt.refs, ref);
}

int gnttab_grant_foreign_access(domid_t domid, uint64_t gfn, int readonly)
{
    if (!gt.ready)
        return -PV_ENODEV;
    if (gfn > UINT32_MAX)
        return -PV_EINVAL;
    int ref = bitmap_claim(&gt.refs);
    if (ref < 0)
        return -PV_ENOSPC;
    volatile struct grant_entry_v1 *e = &gt.shared[ref];
    e->domid = domid;
    e->frame = (uint32_t)gfn;
    /* The hypervisor must never see the new flags with the old domid/frame. */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    e->flags = (uint16_t)(GTF_permit_access | (readonly ? GTF_readonly : 0));
    return ref;
}

int gnttab_end_foreign_access_ref(grant_ref_t ref)
{
    if (!owned(ref))
        return -PV_EINVAL;
    uint16_t *flags = (uint16_t *)&gt.shared[ref].flags;
    uint16_t cur = __atomic_load_n(flags, __ATOMIC_ACQUIRE);
    /* v1: only an entry the hypervisor does not hold may go to 0, and the
     * check and the store must be one atomic step (it may pin meanwhile). */
    do {
        if (cur & BUSY_BITS)
            return -PV_EBUSY;
    } while (!__atomic_compare_exchange_n(flags, &cur, 0, 0, __ATOMIC_SEQ_CST,
                                          __ATOMIC_ACQUIRE));
    return 0;
}

int gnttab_free_grant_reference(grant_ref_t ref)
{
    if (!owned(ref))
        return -PV_EINVAL;
    if (__atomic_load_n(&gt.shared[ref].flags, __ATOMIC_ACQUIRE))
        return -PV_EBUSY;
    return bitmap_release(&gt.refs, ref) ? 0 : -PV_EINVAL;
}

int gnttab_try_end_foreign_access(grant_ref_t ref)
{
    int r = gnttab_end_foreign_access_ref(ref);
    return r ? r : gnttab_free_grant_reference(ref);
}

int gnttab_query_foreign_access(grant_ref_t ref)
{
    if (!gt.ready || ref >= gt.refs.nbits)
        return 0;
    return __atomic_load_n(&gt.shared[ref].flags, __ATOMIC_ACQUIRE) & BUSY_BITS;
}

/* --- grantee ------------------------------------------------------------------- */

int gnttab_alloc_pages(unsigned nr, void **pages, int readonly)
{
    int w = readonly ? 1 : 0;
    for (unsigned i = 0; i < nr; i++) {
        int slot = gt.ready ? bitmap_claim(&gt.slots[w]) : -1;
        if (slot < 0) {
            gnttab_free_pages(i, pages);
            return -PV_ENOMEM;
        }
        pages[i] = (void *)(gt.window[w] + (uintptr_t)slot * 4096);
    }
    return 0;
}

void gnttab_free_pages(unsigned nr, void **pages)
{
    for (unsigned i = 0; i < nr; i++) {
        uintptr_t a = (uintptr_t)pages[i];
        for (int w = 0; w < 2 && gt.ready; w++)
            if (a >= gt.window[w] && !(a & 4095))
                bitmap_release(&gt.slots[w], (unsigned)((a - gt.window[w]) / 4096));
    }
}

int gnttab_map_refs(struct gnttab_map_grant_ref *ops, unsigned count)
{
    return (int)HYPERVISOR_grant_table_op(GNTTABOP_map_grant_ref, ops, count);
}

int gnttab_unmap_refs(struct gnttab_unmap_grant_ref *ops, unsigned count)
{
    return (int)HYPERVISOR_grant_table_op(GNTTABOP_unmap_grant_ref, ops, count);
}

int gnttab_map_grant_ref(domid_t domid, grant_ref_t ref, int readonly, void **addr,
                         grant_handle_t *handle)
{
    void *page;
    if (gnttab_alloc_pages(1, &page, readonly))
        return GNTST_no_space;
    struct gnttab_map_grant_ref op;
    gnttab_set_map_op(&op, (uintptr_t)page, GNTMAP_host_map | (readonly ? GNTMAP_readonly : 0),
                      ref, domid);
    if (gnttab_map_refs(&op, 1) < 0)
        op.status = GNTST_general_error;
    if (op.status != GNTST_okay) {
        gnttab_free_pages(1, &page);
        return op.status;
    }
    *addr = page;
    *handle = op.handle;
    return GNTST_okay;
}

int gnttab_unmap_grant_ref(void *addr, grant_handle_t handle)
{
    struct gnttab_unmap_grant_ref op;
    gnttab_set_unmap_op(&op, (uintptr_t)addr, GNTMAP_host_map, handle);
    if (gnttab_unmap_refs(&op, 1) < 0)
        return GNTST_general_error;
    if (op.status == GNTST_okay)
        gnttab_free_pages(1, &addr);
    return op.status;
}

int gnttab_copy(struct gnttab_copy *ops, unsigned count)
{
    return (int)HYPERVISOR_grant_table_op(GNTTABOP_copy, ops, count);
}
