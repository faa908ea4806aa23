/* The lguest console, as hvc_lguest.c: output is a send to key 0 (the
 * launcher writes it out and puts the count in used_len); input is one
 * 256-byte buffer bound at key 0, filled by the launcher, drained here. */
#include "paravm.h"
#include "paravm/lguest.h"

#define CONSOLE_OF(d) ((struct lguest_console *)((char *)(d) - offsetof(struct lguest_console, dev)))

static struct lguest_console *printf_console;

static void console_remove(struct lguest_device *dev)
{
    struct lguest_console *c = CONSOLE_OF(dev);
    if (__atomic_load_n(&printf_console, __ATOMIC_ACQUIRE) == c)
        lguest_console_set_printf(0);
    lguest_unbind_dma(LGUEST_CONSOLE_DMA_KEY, &c->in);
}

int lguest_console_probe(struct lguest_console *c, unsigned nth)
{
    int index = lguest_device_find(LGUEST_DEVICE_T_CONSOLE, nth);
    if (index < 0)
        return index;
    int err = lguest_device_probe(&c->dev, (unsigned)index, LGUEST_DEVICE_T_CONSOLE,
                                  console_remove);
    if (err)
        return err;
    c->in_off = 0;
    lguest_dma_fill(&c->in, c->in_buf, sizeof(c->in_buf));
    err = lguest_bind_dma(LGUEST_CONSOLE_DMA_KEY, &c->in, 1, c->dev.irq);
    return lguest_device_probed(&c->dev, err);
}

long lguest_console_write(struct lguest_console *c, const void *buf, size_t len)
{
    /* The dma lives on the caller's stack: several vCPUs may write at once. */
    struct lguest_dma dma;
    const char *p = buf;
    long done = 0;
    while (len) {
        if (lguest_device_gone(&c->dev))
            return -PV_ENODEV;
        size_t n = lguest_dma_room(p);
        if (n > len)
            n = len;
        lguest_dma_fill(&dma, p, n);
        lguest_send_dma(LGUEST_CONSOLE_DMA_KEY, &dma);
        done += lguest_dma_used(&dma);
        p += n;
        len -= n;
    }
    return done;
}

long lguest_console_read(struct lguest_console *c, void *buf, size_t max, uint64_t timeout_ns)
{
    uint64_t deadline = lguest_deadline(timeout_ns);
    if (max == 0)
        return 0;
    for (;;) {
        if (lguest_device_gone(&c->dev))
            return -PV_ENODEV;
        uint32_t used = lguest_dma_used(&c->in);
        if (used > sizeof(c->in_buf))
            used = sizeof(c->in_buf);     /* the host owes us no more than that */
        if (used > c->in_off) {
            size_t n = used - c->in_off;
            if (n > max)
                n = max;
            memcpy(buf, c->in_buf + c->in_off, n);
            c->in_off += (uint32_t)n;
            if (c->in_off == used) {      /* all read: the buffer goes back */
                c->in_off = 0;
                lguest_dma_recycle(&c->in);
            }
            return (long)n;
        }
        if (!lguest_wait_slice(deadline))   /* slices: also notices input without an irq */
            return 0;
    }
}

static long printf_writer(const void *buf, size_t len)
{
    struct lguest_console *c = __atomic_load_n(&printf_console, __ATOMIC_ACQUIRE);
    long r = c ? lguest_console_write(c, buf, len) : -PV_ENODEV;
    if (r == -PV_ENODEV) {          /* removed: back to the hypercall console */
        lguest_console_set_printf(0);
        return pv_console_write(buf, len);
    }
    return r;
}

void lguest_console_set_printf(struct lguest_console *c)
{
    __atomic_store_n(&printf_console, c, __ATOMIC_RELEASE);
    pv_set_console_writer(c ? printf_writer : 0);
}
