/* The lguest block device, as lguest_blk.c: a one-entry reply dma bound at
 * key = the device page's GPA; a request fills the page and sends to that
 * key (a write sends its data, a read or flush an empty "ping" while the
 * data of a read lands in the reply dma); the launcher sets result and
 * raises the irq.  One request at a time. */
#include "paravm.h"
#include "paravm/lguest.h"

#define BLK_OF(d) ((struct lguest_blk *)((char *)(d) - offsetof(struct lguest_blk, dev)))
#define SECTOR 512

static void blk_remove(struct lguest_device *dev)
{
    struct lguest_blk *b = BLK_OF(dev);
    lguest_unbind_dma((uint64_t)b->page, &b->reply);
}

int lguest_blk_probe(struct lguest_blk *b, unsigned nth)
{
    int index = lguest_device_find(LGUEST_DEVICE_T_BLOCK, nth);
    if (index < 0)
        return index;
    int err = lguest_device_probe(&b->dev, (unsigned)index, LGUEST_DEVICE_T_BLOCK, blk_remove);
    if (err)
        return err;
    volatile struct lguest_device_desc *d = b->dev.desc;
    if (d->num_pages < 1 || d->pfn == 0)
        return lguest_device_probed(&b->dev, -PV_ENODEV);
    b->page = (volatile struct lguest_block_page *)((uint64_t)d->pfn * LGUEST_PAGE_SIZE);
    b->num_sectors = b->page->num_sectors;
    b->disk_bytes = b->page->disk_bytes;
    b->irq = b->dev.irq;
    if (!b->timeout_ns)
        b->timeout_ns = 30000000000ull;
    lguest_dma_fill(&b->reply, 0, 0);
    err = lguest_bind_dma((uint64_t)b->page, &b->reply, 1, b->irq);
    return lguest_device_probed(&b->dev, err);
}

/* One request: data is where the bytes come from (write) or go (read). */
static int request(struct lguest_blk *b, int type, uint64_t sector, const void *data,
                   size_t bytes)
{
    if (lguest_device_gone(&b->dev))
        return -PV_ENODEV;
    if (sector > 0xFFFFFFFFull)
        return -PV_EINVAL;
    volatile struct lguest_block_page *pg = b->page;
    int err = lguest_dma_fill(&b->reply, type == LGUEST_BLOCK_READ ? data : 0,
                              type == LGUEST_BLOCK_READ ? bytes : 0);
    if (!err)
        err = lguest_dma_fill(&b->req, type == LGUEST_BLOCK_WRITE ? data : 0,
                              type == LGUEST_BLOCK_WRITE ? bytes : 0);
    if (err)
        return err;
    pg->type = type;
    pg->sector = (uint32_t)sector;
    pg->bytes = (uint32_t)bytes;
    pg->result = LGUEST_BLOCK_PENDING;
    lguest_send_dma((uint64_t)pg, &b->req);
    uint64_t deadline = lguest_deadline(b->timeout_ns ? b->timeout_ns : 1);
    int32_t result;
    while ((result = pg->result) == LGUEST_BLOCK_PENDING) {
        if (lguest_device_gone(&b->dev))
            return -PV_ENODEV;
        if (!lguest_wait_slice(deadline)) {
            /* A late reply must not land in the caller's buffer. */
            lguest_dma_fill(&b->reply, 0, 0);
            return -PV_ETIMEDOUT;
        }
    }
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    /* The launcher filled the reply (used_len != 0): free it. */
    lguest_dma_recycle(&b->reply);
    return result == LGUEST_BLOCK_DONE ? 0 : -PV_EIO;
}

static int transfer(struct lguest_blk *b, int type, uint64_t sector, const char *p, size_t bytes)
{
    while (bytes) {
        size_t n = lguest_dma_room(p);
        if (n >= bytes)
            n = bytes;
        else
            n &= ~(size_t)(SECTOR - 1);   /* the next request starts on a sector */
        int err = request(b, type, sector, p, n);
        if (err)
            return err;
        sector += n / SECTOR;
        p += n;
        bytes -= n;
    }
    return 0;
}

int lguest_blk_read(struct lguest_blk *b, uint64_t sector, void *buf, size_t bytes)
{
    return transfer(b, LGUEST_BLOCK_READ, sector, buf, bytes);
}

int lguest_blk_write(struct lguest_blk *b, uint64_t sector, const void *buf, size_t bytes)
{
    return transfer(b, LGUEST_BLOCK_WRITE, sector, buf, bytes);
}

int lguest_blk_flush(struct lguest_blk *b)
{
    return request(b, LGUEST_BLOCK_FLUSH, 0, 0, 0);
}
