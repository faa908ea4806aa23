/* The lguest network, as lguest_net.c: the device page is shared by every
 * guest of the LAN, one 6-byte MAC slot each; a guest binds its receive
 * buffers at key = page + 4 * its slot, and sends a frame to slot i by a
 * SEND_DMA at that key: the hypervisor copies it guest to guest. */
#include "paravm.h"
#include "paravm/lguest.h"

#define NET_OF(d) ((struct lguest_netdev *)((char *)(d) - offsetof(struct lguest_netdev, dev)))

static uint64_t peer_key(const struct lguest_netdev *n, unsigned slot)
{
    return n->page + 4 * (uint64_t)slot;
}

static void read_mac(const struct lguest_netdev *n, unsigned slot, uint8_t mac[6])
{
    for (int k = 0; k < 6; k++)
        mac[k] = n->slots[slot].mac[k];
}

static void write_mac(struct lguest_netdev *n, unsigned slot, const uint8_t mac[6])
{
    /* Byte 0 last: a peer sees the slot used only once the MAC is whole. */
    for (int k = 5; k >= 0; k--)
        n->slots[slot].mac[k] = mac[k];
}

static void net_remove(struct lguest_device *dev)
{
    lguest_net_close(NET_OF(dev));
}

int lguest_net_probe(struct lguest_netdev *n, unsigned nth)
{
    int index = lguest_device_find(LGUEST_DEVICE_T_NET, nth);
    if (index < 0)
        return index;
    int err = lguest_device_probe(&n->dev, (unsigned)index, LGUEST_DEVICE_T_NET, net_remove);
    if (err)
        return err;
    volatile struct lguest_device_desc *d = n->dev.desc;
    unsigned pages = d->num_pages;
    if (pages < 1 || pages > LGUEST_NET_MAX_PAGES || d->pfn == 0)
        return lguest_device_probed(&n->dev, -PV_ENODEV);
    n->page = (uint64_t)d->pfn * LGUEST_PAGE_SIZE;
    n->slots = (volatile struct lguest_net *)n->page;
    n->nslots = pages * LGUEST_PAGE_SIZE / sizeof(struct lguest_net);
    /* me = features & (mapsize - 1), as lguest_net.c; with at most 4 pages
     * the mask stays below the feature bits. */
    n->me = d->features & (pages * LGUEST_PAGE_SIZE - 1);
    if (n->me >= n->nslots)
        return lguest_device_probed(&n->dev, -PV_ENODEV);
    uint8_t mac[6];
    read_mac(n, n->me, mac);
    if (mac[0] == 0) {
        /* The host did not publish it: the documented formula. */
        uint32_t domid = pv_boot_info()->domid;
        const uint8_t fallback[6] = {2, 0, (uint8_t)domid, (uint8_t)(domid >> 8), 0, 0};
        memcpy(mac, fallback, 6);
    }
    mac[0] &= (uint8_t)~LGUEST_NET_PROMISC;
    memcpy(n->mac, mac, 6);
    n->open = 0;
    n->promisc = 0;
    n->rx_next = 0;
    n->tx_errors = 0;
    n->rx_dropped = 0;
    n->tx_missed = 0;
    return lguest_device_probed(&n->dev, 0);
}

int lguest_net_open(struct lguest_netdev *n, int promisc)
{
    if (lguest_device_gone(&n->dev))
        return -PV_ENODEV;
    if (n->open)
        return -PV_EBUSY;
    for (unsigned i = 0; i < LGUEST_NET_RX_BUFS; i++)
        lguest_dma_fill(&n->rx[i], n->rxbuf[i], sizeof(n->rxbuf[i]));
    n->rx_next = 0;
    int err = lguest_bind_dma(peer_key(n, n->me), n->rx, LGUEST_NET_RX_BUFS, n->dev.irq);
    if (err)
        return err;
    uint8_t mac[6];
    memcpy(mac, n->mac, 6);
    if (promisc)
        mac[0] |= LGUEST_NET_PROMISC;
    write_mac(n, n->me, mac);
    n->promisc = !!promisc;
    n->open = 1;
    return 0;
}

void lguest_net_close(struct lguest_netdev *n)
{
    if (!n->open)
        return;
    n->open = 0;
    static const uint8_t zero[6];
    write_mac(n, n->me, zero);
    lguest_unbind_dma(peer_key(n, n->me), n->rx);
}

int lguest_net_slot_mac(const struct lguest_netdev *n, unsigned slot, uint8_t mac[6])
{
    if (slot >= n->nslots)
        return -PV_EINVAL;
    read_mac(n, slot, mac);
    return mac[0] != 0;
}

/* Whether a frame for dst goes to a peer with this slot MAC. */
static int wants(const uint8_t *dst, const uint8_t mac[6])
{
    if ((dst[0] & 1) || (mac[0] & LGUEST_NET_PROMISC))
        return 1;
    return (dst[0] & ~1) == (mac[0] & ~1) && memcmp(dst + 1, mac + 1, 5) == 0;
}

/* Send the tx dma to slot i: 1 if the peer took it all, else it is missed. */
static int deliver(struct lguest_netdev *n, unsigned slot, size_t len)
{
    lguest_send_dma(peer_key(n, slot), &n->tx);
    if (lguest_dma_used(&n->tx) == len)
        return 1;
    n->missed[slot / 8] |= (uint8_t)(1u << (slot % 8));
    n->tx_missed++;
    n->tx_errors++;
    return 0;
}

static size_t tx_len(const struct lguest_netdev *n)
{
    size_t len = 0;
    for (unsigned i = 0; i < LGUEST_MAX_DMA_SECTIONS && n->tx.len[i]; i++)
        len += n->tx.len[i];
    return len;
}

int lguest_net_send(struct lguest_netdev *n, const void *frame, size_t len)
{
    if (lguest_device_gone(&n->dev))
        return -PV_ENODEV;
    if (!n->open || len < LGUEST_ETH_HLEN)
        return -PV_EINVAL;
    if (len > LGUEST_NET_MAX_FRAME)
        return -PV_E2BIG;               /* no peer could take it (the VMM drops it) */
    int err = lguest_dma_fill(&n->tx, frame, len);
    if (err)
        return err;
    memset(n->missed, 0, (n->nslots + 7) / 8);
    n->tx_missed = 0;
    const uint8_t *dst = frame;
    int delivered = 0;
    for (unsigned i = 0; i < n->nslots; i++) {
        if (i == n->me || n->slots[i].mac[0] == 0)
            continue;
        uint8_t mac[6];
        read_mac(n, i, mac);
        if (mac[0] != 0 && wants(dst, mac))
            delivered += deliver(n, i, len);
    }
    return delivered;
}

int lguest_net_resend(struct lguest_netdev *n)
{
    if (lguest_device_gone(&n->dev))
        return -PV_ENODEV;
    if (!n->open)
        return -PV_EINVAL;
    size_t len = tx_len(n);
    int delivered = 0;
    n->tx_missed = 0;
    for (unsigned i = 0; i < n->nslots; i++) {
        uint8_t bit = (uint8_t)(1u << (i % 8));
        if (!(n->missed[i / 8] & bit))
            continue;
        n->missed[i / 8] &= (uint8_t)~bit;
        if (n->slots[i].mac[0] == 0)
            continue;             /* the peer left */
        delivered += deliver(n, i, len);
    }
    return delivered;
}

/* The next filled buffer from rx_next on, as lguest_net.c's rx loop. */
static long take(struct lguest_netdev *n, void *buf, size_t max)
{
    unsigned first = n->rx_next;
    for (unsigned k = 0; k < LGUEST_NET_RX_BUFS; k++) {
        unsigned i = (first + k) % LGUEST_NET_RX_BUFS;
        uint32_t len = lguest_dma_used(&n->rx[i]);
        if (!len)
            continue;
        long got = -1;
        if (len < LGUEST_ETH_HLEN || len > LGUEST_NET_MAX_FRAME) {
            n->rx_dropped++;
        } else {
            got = len < max ? (long)len : (long)max;
            memcpy(buf, n->rxbuf[i], (size_t)got);
        }
        lguest_dma_recycle(&n->rx[i]);
        n->rx_next = (i + 1) % LGUEST_NET_RX_BUFS;
        if (got >= 0)
            return got;
    }
    return -1;
}

long lguest_net_recv(struct lguest_netdev *n, void *buf, size_t max, uint64_t timeout_ns)
{
    uint64_t deadline = lguest_deadline(timeout_ns);
    for (;;) {
        if (lguest_device_gone(&n->dev))
            return -PV_ENODEV;
        if (!n->open)
            return -PV_EINVAL;
        long got = take(n, buf, max);
        if (got >= 0)
            return got;
        if (!lguest_wait_slice(deadline))
            return 0;
    }
}
