/* The Tegra hypervisor cookie API over paravm's IVC service (see tegra_hv.h). */
#include "paravm.h"
#include "paravm/tegra_hv.h"

enum ivc_user { USER_NONE, USER_COOKIE, USER_LOOPBACK };

struct hv_queue {
    struct tegra_hv_ivc_cookie cookie;   /* first: cookie <-> queue */
    const struct tegra_hv_queue_data *qd;
    struct tegra_ivc ivc;
    const struct tegra_hv_ivc_ops *ops;
    int user;
    int doorbell;              /* PV_IVC_DOORBELL_* */
};

struct hv_mempool {
    struct tegra_hv_ivm_cookie cookie;   /* first: cookie <-> mempool */
    uint32_t id;
    int reserved;
};

static struct {
    int state;                 /* 0 not probed, 1 ready, -errno failed */
    int vmid;
    const struct ivc_info_page *info;
    int nqueues;
    struct hv_queue queues[PV_IVC_MAX_QUEUES];
    int nmempools;
    struct hv_mempool mempools[PV_IVC_MAX_MEMPOOLS];
} hv;

static void ring_peer(struct tegra_ivc *ivc, void *data)
{
    (void)ivc;
    const struct hv_queue *q = data;
    if (q->doorbell == PV_IVC_DOORBELL_HYPERCALL) {
        pv_hypercall2(PV_HC_IVC_RAISE_IRQ, q->qd->raise_irq, (unsigned)q->cookie.peer_vmid);
        return;
    }
    __asm__ volatile("outl %%eax, %%dx" : : "a"((uint32_t)q->qd->raise_irq),
                     "d"((uint16_t)PV_IVC_DOORBELL_PORT) : "memory");
}

static int probe(void)
{
    if (hv.state)
        return hv.state < 0 ? hv.state : 0;
    long gpa = pv_hypercall0(PV_HC_IVC_READ_INFO);
    if (gpa < 0)
        return hv.state = -PV_EPROBE_DEFER;
    hv.vmid = (int)pv_hypercall0(PV_HC_IVC_READ_GID);
    const struct ivc_info_page *info = (const void *)gpa;
    const struct ivc_shared_area *areas = (const void *)(info + 1);
    const struct tegra_hv_queue_data *qds = (const void *)(areas + info->nr_areas);
    unsigned n = info->nr_queues < PV_IVC_MAX_QUEUES ? info->nr_queues : PV_IVC_MAX_QUEUES;
    for (unsigned i = 0; i < n; i++) {
        const struct tegra_hv_queue_data *qd = &qds[i];
        int loopback = qd->peers[0] == qd->peers[1];
        int peer = (int)(qd->peers[0] == (uint32_t)hv.vmid ? qd->peers[1] : qd->peers[0]);
        const struct ivc_shared_area *area = 0;
        for (unsigned a = 0; a < info->nr_areas; a++)
            if ((int)areas[a].guest == (loopback ? hv.vmid : peer))
                area = &areas[a];
        if (!area || qd->offset > area->size || 2ull * qd->size > area->size - qd->offset)
            continue;   /* an inconsistent entry: skip the queue */
        int rx_first = loopback ? !(qd->id & 1) : qd->peers[0] == (uint32_t)hv.vmid;
        char *base = (char *)area->pa + qd->offset;
        struct hv_queue *q = &hv.queues[hv.nqueues];
        q->qd = qd;
        q->cookie.irq = qd->irq;
        q->cookie.peer_vmid = peer;
        q->cookie.nframes = (int)qd->nframes;
        q->cookie.frame_size = (int)qd->frame_size;
        if (tegra_ivc_init(&q->ivc, rx_first ? base : base + qd->size,
                           rx_first ? base + qd->size : base, qd->nframes, qd->frame_size,
                           ring_peer, q) != 0)
            continue;
        tegra_ivc_channel_sync(&q->ivc);
        hv.nqueues++;
    }
    const struct ivc_mempool *pools = (const void *)(qds + info->nr_queues);
    unsigned np = info->nr_mempools < PV_IVC_MAX_MEMPOOLS ? info->nr_mempools
                                                          : PV_IVC_MAX_MEMPOOLS;
    for (unsigned i = 0; i < np; i++) {
        struct hv_mempool *m = &hv.mempools[hv.nmempools++];
        m->id = pools[i].id;
        m->cookie.ipa = pools[i].pa;
        m->cookie.size = pools[i].size;
        m->cookie.peer_vmid = pools[i].peer_vmid;
    }
    hv.info = info;
    hv.state = 1;
    return 0;
}

static struct hv_queue *find(int id)
{
    for (int i = 0; i < hv.nqueues; i++)
        if ((int)hv.queues[i].qd->id == id)
            return &hv.queues[i];
    return 0;
}

static struct hv_queue *Q(struct tegra_hv_ivc_cookie *c) { return (struct hv_queue *)c; }

int pv_ivc_vmid(void)
{
    int err = probe();
    return err ? err : hv.vmid;
}

static void check_ready(struct hv_queue *q)
{
    if (q->ops && q->ops->rx_rdy && tegra_ivc_can_read(&q->ivc))
        q->ops->rx_rdy(&q->cookie);
    if (q->ops && q->ops->tx_rdy && tegra_ivc_can_write(&q->ivc))
        q->ops->tx_rdy(&q->cookie);
}

static void echo(struct hv_queue *q)
{
    while (tegra_ivc_can_read(&q->ivc) && tegra_ivc_can_write(&q->ivc)) {
        void *src = tegra_ivc_read_get_next_frame(&q->ivc);
        if (!src)
            break;
        tegra_ivc_write_poke(&q->ivc, src, 0, q->qd->frame_size);
        tegra_ivc_read_advance(&q->ivc);
        tegra_ivc_write_advance(&q->ivc);
    }
}

static void on_irq(unsigned vector, void *ctx)
{
    (void)vector;
    struct hv_queue *q = ctx;
    if (q->user == USER_LOOPBACK) {
        if (tegra_ivc_channel_notified(&q->ivc) == 0)
            echo(q);
    } else if (q->user == USER_COOKIE) {
        check_ready(q);
    }
}

struct tegra_hv_ivc_cookie *tegra_hv_ivc_reserve(void *dn, int id,
                                                 const struct tegra_hv_ivc_ops *ops)
{
    (void)dn;
    int err = probe();
    if (err)
        return PV_ERR_PTR(err);
    struct hv_queue *q = find(id);
    if (!q)
        return PV_ERR_PTR(-PV_ENODEV);
    if (q->user != USER_NONE)
        return PV_ERR_PTR(-PV_EBUSY);
    q->user = USER_COOKIE;
    q->ops = ops;
    if (ops) {
        check_ready(q);
        int r = pv_irq_register(q->cookie.irq, on_irq, q);
        if (r) {
            q->user = USER_NONE;
            q->ops = 0;
            return PV_ERR_PTR(r);
        }
    }
    return &q->cookie;
}

int tegra_hv_ivc_unreserve(struct tegra_hv_ivc_cookie *c)
{
    if (!c || Q(c)->user != USER_COOKIE)
        return -PV_EINVAL;
    if (Q(c)->ops)
        pv_irq_unregister(c->irq);
    Q(c)->ops = 0;
    Q(c)->user = USER_NONE;
    return 0;
}

int tegra_hv_ivc_write(struct tegra_hv_ivc_cookie *c, const void *buf, int size)
{
    return size < 0 ? -PV_EINVAL : tegra_ivc_write(&Q(c)->ivc, buf, (size_t)size);
}

int tegra_hv_ivc_read(struct tegra_hv_ivc_cookie *c, void *buf, int size)
{
    return size < 0 ? -PV_EINVAL : tegra_ivc_read(&Q(c)->ivc, buf, (size_t)size);
}

int tegra_hv_ivc_can_read(struct tegra_hv_ivc_cookie *c) { return tegra_ivc_can_read(&Q(c)->ivc); }
int tegra_hv_ivc_can_write(struct tegra_hv_ivc_cookie *c) { return tegra_ivc_can_write(&Q(c)->ivc); }
int tegra_hv_ivc_tx_empty(struct tegra_hv_ivc_cookie *c) { return tegra_ivc_tx_empty(&Q(c)->ivc); }

int tegra_hv_ivc_read_peek(struct tegra_hv_ivc_cookie *c, void *buf, int off, int count)
{
    if (off < 0 || count < 0)
        return -PV_E2BIG;
    return tegra_ivc_read_peek(&Q(c)->ivc, buf, (size_t)off, (size_t)count);
}

int tegra_hv_ivc_write_poke(struct tegra_hv_ivc_cookie *c, const void *buf, int off, int count)
{
    if (off < 0 || count < 0)
        return -PV_E2BIG;
    return tegra_ivc_write_poke(&Q(c)->ivc, buf, (size_t)off, (size_t)count);
}

/* NULL from the library -> the kernel's ERR_PTR: -ECONNRESET while not
 * established (my own state), else empty/full. */
static void *frame_or_err(struct hv_queue *q, void *p)
{
    if (p)
        return p;
    return PV_ERR_PTR(q->ivc.tx_channel->state != TEGRA_IVC_STATE_ESTABLISHED
                      ? -PV_ECONNRESET : -PV_ENOMEM);
}

void *tegra_hv_ivc_read_get_next_frame(struct tegra_hv_ivc_cookie *c)
{
    return frame_or_err(Q(c), tegra_ivc_read_get_next_frame(&Q(c)->ivc));
}

void *tegra_hv_ivc_write_get_next_frame(struct tegra_hv_ivc_cookie *c)
{
    return frame_or_err(Q(c), tegra_ivc_write_get_next_frame(&Q(c)->ivc));
}

int tegra_hv_ivc_read_advance(struct tegra_hv_ivc_cookie *c) { return tegra_ivc_read_advance(&Q(c)->ivc); }
int tegra_hv_ivc_write_advance(struct tegra_hv_ivc_cookie *c) { return tegra_ivc_write_advance(&Q(c)->ivc); }
int tegra_hv_ivc_channel_notified(struct tegra_hv_ivc_cookie *c) { return tegra_ivc_channel_notified(&Q(c)->ivc); }

int tegra_hv_ivc_channel_reset(struct tegra_hv_ivc_cookie *c)
{
    if (Q(c)->ops)
        return -PV_EINVAL;
    tegra_ivc_channel_reset(&Q(c)->ivc);
    return 0;
}

int tegra_hv_ivc_dump(struct tegra_hv_ivc_cookie *c)
{
    const struct tegra_hv_queue_data *qd = Q(c)->qd;
    printf("IVC#%u: IRQ=%d nframes=%d frame_size=%d offset=%u\n", qd->id, c->irq, c->nframes,
           c->frame_size, qd->offset);
    return 0;
}

static int set_loopback(struct hv_queue *q, int mode)
{
    if (mode == 0) {
        if (q->user != USER_LOOPBACK)
            return -PV_EINVAL;
        pv_irq_unregister(q->cookie.irq);
        q->user = USER_NONE;
        return 0;
    }
    if (mode != 1)
        return -PV_EINVAL;
    if (q->user == USER_LOOPBACK)
        return 0;
    if (q->user != USER_NONE)
        return -PV_EBUSY;
    int r = pv_irq_register(q->cookie.irq, on_irq, q);
    if (r)
        return r;
    q->user = USER_LOOPBACK;
    if (tegra_ivc_channel_notified(&q->ivc) == 0)
        echo(q);
    return 0;
}

int tegra_hv_ivc_set_loopback(struct tegra_hv_ivc_cookie *c, int mode)
{
    return set_loopback(Q(c), mode);
}

int pv_ivc_set_loopback(int id, int mode)
{
    int err = probe();
    if (err)
        return err;
    struct hv_queue *q = find(id);
    return q ? set_loopback(q, mode) : -PV_ENODEV;
}

int tegra_hv_ivc_perform_loopback(struct tegra_hv_ivc_cookie *c)
{
    /* Gen-0 only: a reserved queue is never in loopback. */
    return Q(c)->user == USER_LOOPBACK ? (echo(Q(c)), 0) : -PV_EINVAL;
}

int pv_ivc_set_doorbell(struct tegra_hv_ivc_cookie *c, int mode)
{
    if (mode != PV_IVC_DOORBELL_PORT_IO && mode != PV_IVC_DOORBELL_HYPERCALL)
        return -PV_EINVAL;
    Q(c)->doorbell = mode;
    return 0;
}

struct tegra_hv_ivm_cookie *tegra_hv_mempool_reserve(void *dn, unsigned id)
{
    (void)dn;
    int err = probe();
    if (err)
        return PV_ERR_PTR(err);
    for (int i = 0; i < hv.nmempools; i++) {
        struct hv_mempool *m = &hv.mempools[i];
        if (m->id != id)
            continue;
        if (m->reserved)
            return PV_ERR_PTR(-PV_EBUSY);
        m->reserved = 1;
        return &m->cookie;
    }
    return PV_ERR_PTR(-PV_ENODEV);
}

int tegra_hv_mempool_unreserve(struct tegra_hv_ivm_cookie *ck)
{
    if (!ck)
        return -PV_EINVAL;
    struct hv_mempool *m = (struct hv_mempool *)ck;
    if (m < hv.mempools || m >= hv.mempools + hv.nmempools || !m->reserved)
        return -PV_EINVAL;
    m->reserved = 0;
    return 0;
}

struct tegra_ivc *tegra_hv_ivc_convert_cookie(struct tegra_hv_ivc_cookie *c) { return &Q(c)->ivc; }
