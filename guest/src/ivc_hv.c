/* The Tegra hypervisor cookie API over paravm's IVC service (see tegra_hv.h). */
#include "paravm.h"
#include "paravm/tegra_hv.h"

enum ivc_user { USER_NONE, USER_COOKIE, USER_LOOPBACK };

struct hv_queue {
    struct tegra_hv_ivc_cookie cookie;   /* first: cookie <-> queue */
    uint32_t id;                         /* from the info page, copied at probe */
    uint32_t raise_irq;
    uint32_t offset;
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
        pv_hypercall2(PV_HC_IVC_RAISE_IRQ, q->raise_irq, (unsigned)q->cookie.peer_vmid);
        return;
    }
    __asm__ volatile("outl %%eax, %%dx" : : "a"(q->raise_irq),
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
    /* The counts, read once and checked to fit in the page before any walk. */
    uint64_t nareas = info->nr_areas, nqueues = info->nr_queues, npools = info->nr_mempools;
    if (sizeof(*info) + nareas * sizeof(struct ivc_shared_area) +
        nqueues * sizeof(struct tegra_hv_queue_data) +
        npools * sizeof(struct ivc_mempool) > 4096)
        return hv.state = -PV_EPROBE_DEFER;
    const struct ivc_shared_area *areas = (const void *)(info + 1);
    const struct tegra_hv_queue_data *qds = (const void *)(areas + nareas);
    unsigned n = nqueues < PV_IVC_MAX_QUEUES ? (unsigned)nqueues : PV_IVC_MAX_QUEUES;
    for (unsigned i = 0; i < n; i++) {
        const struct tegra_hv_queue_data *qd = &qds[i];
        if (qd->peers[0] != (uint32_t)hv.vmid && qd->peers[1] != (uint32_t)hv.vmid)
            continue;   /* not one of mine */
        int loopback = qd->peers[0] == qd->peers[1];
        int peer = (int)(qd->peers[0] == (uint32_t)hv.vmid ? qd->peers[1] : qd->peers[0]);
        const struct ivc_shared_area *area = 0;
        for (unsigned a = 0; a < nareas; a++)
            if ((int)areas[a].guest == (loopback ? hv.vmid : peer))
                area = &areas[a];
        if (!area || qd->offset > area->size || 2ull * qd->size > area->size - qd->offset)
            continue;   /* an inconsistent entry: skip the queue */
        int rx_first = loopback ? !(qd->id & 1) : qd->peers[0] == (uint32_t)hv.vmid;
        char *base = (char *)area->pa + qd->offset;
        struct hv_queue *q = &hv.queues[hv.nqueues];
        q->id = qd->id;
        q->raise_irq = qd->raise_irq;
        q->offset = qd->offset;
        q->cookie.irq = qd->irq;
        q->cookie.peer_vmid = peer;
        q->cookie.nframes = (int)qd->nframes;
        q->cookie.frame_size = (int)qd->frame_size;
        if (tegra_ivc_init(&q->ivc, rx_first ? base : base + qd->size,
                           rx_first ? base + qd->size : base, qd->nframes, qd->frame_size,
                           ring_peer, q) != 0 || tegra_ivc_channel_sync(&q->ivc) != 0)
            continue;
        hv.nqueues++;
    }
    const struct ivc_mempool *pools = (const void *)(qds + nqueues);
    unsigned np = npools < PV_IVC_MAX_MEMPOOLS ? (unsigned)npools : PV_IVC_MAX_MEMPOOLS;
    for (unsigned i = 0; i < np; i++) {
        struct hv_mempool *m = &hv.mempools[hv.nmempools++];
        m->id = pools[i].id;
        m->cookie.ipa = pools[i].pa;
        m->cookie.size = pools[i].size;
        m->cookie.peer_vmid = pools[i].peer_vmid;
    }
    hv.state = 1;
    return 0;
}

static struct hv_queue *find(int id)
{
    for (int i = 0; i < hv.nqueues; i++)
        if ((int)hv.queues[i].id == id)
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

/* Gen-1 loopback: every frame that can be read is copied to tx, while both
 * sides allow it. */
static void echo(struct hv_queue *q)
{
    for (;;) {
        const void *src = tegra_ivc_read_get_next_frame(&q->ivc);
        void *dst = src ? tegra_ivc_write_get_next_frame(&q->ivc) : 0;
        if (!dst)
            break;
        memcpy(dst, src, q->ivc.frame_size);
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
    if (ops) {
        int r = pv_irq_register(q->cookie.irq, on_irq, q);
        if (r)
            return PV_ERR_PTR(r);
    }
    q->user = USER_COOKIE;
    q->ops = ops;
    check_ready(q);     /* as the reference: at once if the queue is ready */
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

/* The kernel's ERR_PTR form: the library's own error of that check. */
void *tegra_hv_ivc_read_get_next_frame(struct tegra_hv_ivc_cookie *c)
{
    int err;
    void *p = tegra_ivc_read_get_next_frame_err(&Q(c)->ivc, &err);
    return p ? p : PV_ERR_PTR(err);
}

void *tegra_hv_ivc_write_get_next_frame(struct tegra_hv_ivc_cookie *c)
{
    int err;
    void *p = tegra_ivc_write_get_next_frame_err(&Q(c)->ivc, &err);
    return p ? p : PV_ERR_PTR(err);
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
    printf("IVC#%u: IRQ=%d nframes=%d frame_size=%d offset=%u\n", Q(c)->id, c->irq,
           c->nframes, c->frame_size, Q(c)->offset);
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
