/* lguest I/O: the hypercall wrappers, DMA lists, the device descriptor page
 * and its status handshake (see paravm/lguest.h). */
#include "paravm.h"
#include "paravm/lguest.h"

/* The layouts of lguest_abi.h (tests/unit/test_lguest_abi.py checks the
 * Python side against the same numbers). */
_Static_assert(sizeof(struct lguest_dma) == 168, "lguest_dma");
_Static_assert(offsetof(struct lguest_dma, addr) == 8, "lguest_dma.addr");
_Static_assert(offsetof(struct lguest_dma, len) == 136, "lguest_dma.len");
_Static_assert(sizeof(struct lguest_device_desc) == 12, "lguest_device_desc");
_Static_assert(offsetof(struct lguest_device_desc, pfn) == 8, "lguest_device_desc.pfn");
_Static_assert(sizeof(struct lguest_block_page) == 32, "lguest_block_page");
_Static_assert(offsetof(struct lguest_block_page, disk_bytes) == 24, "lguest_block_page.disk_bytes");
_Static_assert(sizeof(struct lguest_net) == 6, "lguest_net");

/* --- hypercalls ------------------------------------------------------------ */
int lguest_bind_dma(unsigned long key, struct lguest_dma *dmas, unsigned num, unsigned irq)
{
    long r = pv_hypercall4(LHCALL_BIND_DMA, key, (uint64_t)dmas, num, irq);
    if (r < 0)
        return (int)r;
    return r ? 0 : -PV_ENOMEM;
}

void lguest_unbind_dma(unsigned long key, struct lguest_dma *dmas)
{
    pv_hypercall4(LHCALL_BIND_DMA, key, (uint64_t)dmas, 0, 0);
}

void lguest_send_dma(unsigned long key, struct lguest_dma *dma)
{
    __atomic_store_n(&dma->used_len, 0, __ATOMIC_RELAXED);
    pv_hypercall2(LHCALL_SEND_DMA, key, (uint64_t)dma);
}

/* --- DMA lists ---------------------------------------------------------------- */
size_t lguest_dma_room(const void *buf)
{
    size_t first = LGUEST_PAGE_SIZE - ((uintptr_t)buf & (LGUEST_PAGE_SIZE - 1));
    return first + (size_t)(LGUEST_MAX_DMA_SECTIONS - 1) * LGUEST_PAGE_SIZE;
}

int lguest_dma_fill(struct lguest_dma *dma, const void *buf, size_t len)
{
    if (len > lguest_dma_room(buf))
        return -PV_E2BIG;
    uintptr_t p = (uintptr_t)buf;
    unsigned i = 0;
    while (len) {
        size_t n = LGUEST_PAGE_SIZE - (p & (LGUEST_PAGE_SIZE - 1));
        if (n > len)
            n = len;
        dma->addr[i] = p;
        dma->len[i] = (uint16_t)n;
        i++;
        p += n;
        len -= n;
    }
    for (; i < LGUEST_MAX_DMA_SECTIONS; i++) {
        dma->addr[i] = 0;
        dma->len[i] = 0;
    }
    dma->pad = 0;
    lguest_dma_recycle(dma);
    return 0;
}

/* --- time ------------------------------------------------------------------------ */
uint64_t lguest_clock_ns(void)
{
    uint64_t khz = pv_boot_info()->tsc_khz;
    if (!khz)
        return pv_clock_ns();
    uint64_t c = pv_rdtsc();
    return (c / khz) * 1000000 + (c % khz) * 1000000 / khz;
}

uint64_t lguest_deadline(uint64_t timeout_ns)
{
    if (!timeout_ns)
        return 0;
    uint64_t now = lguest_clock_ns();
    return timeout_ns > UINT64_MAX - now ? UINT64_MAX : now + timeout_ns;
}

int lguest_wait_slice(uint64_t deadline)
{
    uint64_t wait = LGUEST_POLL_NS;
    if (deadline) {
        uint64_t now = lguest_clock_ns();
        if (now >= deadline)
            return 0;
        if (deadline - now < wait)
            wait = deadline - now;
    }
    pv_wait(wait);
    return 1;
}

/* --- devices ------------------------------------------------------------------------ */
volatile struct lguest_device_desc *lguest_device_descs(void)
{
    return (volatile struct lguest_device_desc *)pv_boot_info()->lguest_descs;
}

int lguest_present(void)
{
    /* The VMM writes the descriptor page's GPA into the boot info of a
     * domain with devices (the page just above RAM); 0 elsewhere. */
    return pv_boot_info()->lguest_descs != 0;
}

int lguest_device_find(unsigned type, unsigned nth)
{
    if (type == 0 || !lguest_present())
        return -PV_ENODEV;
    volatile struct lguest_device_desc *d = lguest_device_descs();
    /* As lguest_bus.c: every entry is looked at; type 0 is a hole. */
    for (unsigned i = 0; i < LGUEST_MAX_DEVICES; i++)
        if (d[i].type == type && nth-- == 0)
            return (int)i;
    return -PV_ENODEV;
}

static void set_status(struct lguest_device *dev, uint16_t bits)
{
    /* Atomic: the host may set REMOVED at the same time. */
    __atomic_fetch_or((uint16_t *)&dev->desc->status, bits, __ATOMIC_SEQ_CST);
}

int lguest_device_gone(struct lguest_device *dev)
{
    if (dev->removed)
        return 1;
    if (!(dev->desc->status & LGUEST_DEVICE_S_REMOVED))
        return 0;
    if (__atomic_exchange_n(&dev->removed, 1, __ATOMIC_ACQ_REL))
        return 1;                 /* another vCPU is stopping it */
    if (dev->remove)
        dev->remove(dev);
    set_status(dev, LGUEST_DEVICE_S_REMOVED_ACK);
    return 1;
}

static void on_irq(unsigned vector, void *ctx)
{
    (void)vector;
    struct lguest_device *dev = ctx;
    __atomic_fetch_add(&dev->irqs, 1, __ATOMIC_RELAXED);
    lguest_device_gone(dev);
}

int lguest_device_probe(struct lguest_device *dev, unsigned index, unsigned type,
                        void (*remove)(struct lguest_device *dev))
{
    if (index >= LGUEST_MAX_DEVICES || !lguest_present())
        return -PV_ENODEV;
    volatile struct lguest_device_desc *d = &lguest_device_descs()[index];
    if (d->type != type || (d->status & LGUEST_DEVICE_S_REMOVED))
        return -PV_ENODEV;
    dev->desc = d;
    dev->index = index;
    dev->irq = index + 1;
    dev->vector = LGUEST_VECTOR_BASE + dev->irq;
    dev->irqs = 0;
    dev->removed = 0;
    dev->remove = remove;
    /* A taken vector means a driver has the device: leave its status alone. */
    int err = pv_irq_register(dev->vector, on_irq, dev);
    if (err)
        return err;
    set_status(dev, LGUEST_DEVICE_S_ACKNOWLEDGE);
    set_status(dev, LGUEST_DEVICE_S_DRIVER);
    return 0;
}

int lguest_device_probed(struct lguest_device *dev, int err)
{
    if (err == 0) {
        set_status(dev, LGUEST_DEVICE_S_DRIVER_OK);
        return 0;
    }
    pv_irq_unregister(dev->vector);
    set_status(dev, LGUEST_DEVICE_S_FAILED);
    return err;
}
