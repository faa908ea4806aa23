/* A bump allocator of whole pages over the heap the VMM describes. */
#include <paravm.h>

static uint64_t next;     /* GPA of the next free page; 0 before first use */

void *pv_page_alloc(size_t n)
{
    const struct pv_boot_info *bi = pv_boot_info();
    uint64_t want = (uint64_t)n * 4096;
    if (!n || want / 4096 != n)
        return 0;
    uint64_t cur = __atomic_load_n(&next, __ATOMIC_ACQUIRE);
    for (;;) {
        uint64_t base = cur ? cur : (bi->heap_start + 4095) & ~4095ull;
        if (base > bi->heap_end || want > bi->heap_end - base)
            return 0;
        if (__atomic_compare_exchange_n(&next, &cur, base + want, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return (void *)base;
    }
}
