/* vchan (libxenvchan's protocol): see paravm/vchan.h. */
#include <paravm.h>
#include <paravm/gnttab.h>
#include <paravm/vchan.h>
#include <paravm/xenstore.h>

#define SMALL_RING_SHIFT 10
#define LARGE_RING_SHIFT 11
#define MAX_RING_SHIFT   20
#define PAGE_SHIFT       12

static uint32_t min_order(size_t size)
{
    uint32_t order = PAGE_SHIFT;
    while (size > (1ul << order))
        order++;
    return order;
}

static uint32_t ring_pages(uint32_t order)
{
    return order >= PAGE_SHIFT ? 1u << (order - PAGE_SHIFT) : 0;
}

static uint8_t *in_page(struct vchan *v, uint32_t order)
{
    return (uint8_t *)v->ring + (order == SMALL_RING_SHIFT ? 1024 : 2048);
}

/* ---- set-up ---------------------------------------------------------------- */

/* Point this side's read and write rings at the left and right rings of the
 * control page (the client writes the left one) with the given orders;
 * lr[] gets them in grant order (left, right), an in-page one placed. */
static void rings_of(struct vchan *v, uint32_t left_order, uint32_t right_order,
                     struct vchan_ring *lr[2])
{
    lr[0] = v->is_server ? &v->read : &v->write;
    lr[1] = v->is_server ? &v->write : &v->read;
    lr[0]->order = left_order;
    lr[0]->shr = &v->ring->left;
    lr[1]->order = right_order;
    lr[1]->shr = &v->ring->right;
    for (int k = 0; k < 2; k++)
        if (!ring_pages(lr[k]->order))
            lr[k]->buffer = in_page(v, lr[k]->order);
}

static int share(struct vchan *v, void *page, int readonly)
{
    int ref = gnttab_grant_foreign_access(v->peer, virt_to_gfn(page), readonly);
    if (ref >= 0)
        v->refs[v->nr_refs++] = (uint32_t)ref;
    return ref;
}

int vchan_server_init(struct vchan *v, domid_t peer, const char *xs_path,
                      size_t left_min, size_t right_min)
{
    char key[160], val[16];
    memset(v, 0, sizeof *v);
    if (left_min > (1u << MAX_RING_SHIFT) || right_min > (1u << MAX_RING_SHIFT) ||
        strlen(xs_path) >= sizeof v->xs_path)
        return -PV_EINVAL;
    int r = gnttab_init();
    if (r < 0)
        return r;
    if ((r = evtchn_init()) < 0)
        return r;
    v->is_server = 1;
    v->blocking = 1;
    v->peer = peer;
    memcpy(v->xs_path, xs_path, strlen(xs_path) + 1);
    /* libxenvchan's choice: in-page rings where they fit. */
    uint32_t rd = min_order(left_min), wr = min_order(right_min);
    if (left_min <= 1024 && right_min <= 2048) {
        rd = SMALL_RING_SHIFT; wr = LARGE_RING_SHIFT;
    } else if (left_min <= 2048 && right_min <= 1024) {
        rd = LARGE_RING_SHIFT; wr = SMALL_RING_SHIFT;
    } else if (left_min <= 2048) {
        rd = LARGE_RING_SHIFT;
    } else if (right_min <= 2048) {
        wr = LARGE_RING_SHIFT;
    }
    int port = evtchn_alloc_unbound(peer);
    if (port < 0)
        return port;
    v->port = (evtchn_port_t)port;
    v->ring = pv_page_alloc(1);
    if (!v->ring)
        return -PV_ENOMEM;
    int ring_ref = share(v, v->ring, 0);
    if (ring_ref < 0)
        return ring_ref;
    v->ring->left_order = (uint16_t)rd;
    v->ring->right_order = (uint16_t)wr;
    uint32_t g = 0;
    struct vchan_ring *rings[2];
    rings_of(v, rd, wr, rings);
    for (int k = 0; k < 2; k++) {
        struct vchan_ring *ring = rings[k];
        uint32_t n = ring_pages(ring->order);
        if (!n)
            continue;
        ring->buffer = pv_page_alloc(n);
        if (!ring->buffer)
            return -PV_ENOMEM;
        for (uint32_t i = 0; i < n; i++) {
            int ref = share(v, ring->buffer + i * 4096, 0);
            if (ref < 0)
                return ref;
            v->ring->grants[g++] = (uint32_t)ref;
        }
    }
    v->ring->cli_live = 2;
    v->ring->srv_live = 1;
    v->ring->cli_notify = VCHAN_NOTIFY_WRITE;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    snprintf(key, sizeof key, "%s/ring-ref", xs_path);
    snprintf(val, sizeof val, "%d", ring_ref);
    if ((r = (int)xs_write(key, val, peer)) < 0)
        return r;
    snprintf(key, sizeof key, "%s/event-channel", xs_path);
    snprintf(val, sizeof val, "%u", v->port);
    if ((r = (int)xs_write(key, val, peer)) < 0)
        return r;
    return 0;
}

static int map(struct vchan *v, uint32_t ref, int readonly, void **addr)
{
    uint32_t handle;
    int st = gnttab_map_grant_ref(v->peer, ref, readonly, addr, &handle);
    if (st != 0)
        return -PV_EINVAL;
    v->handles[v->nr_refs] = handle;
    v->addrs[v->nr_refs++] = *addr;
    return 0;
}

int vchan_client_init(struct vchan *v, domid_t peer, const char *xs_path,
                      uint64_t timeout_ns)
{
    char key[160];
    unsigned long ring_ref, remote_port;
    memset(v, 0, sizeof *v);
    int r = gnttab_init();
    if (r < 0)
        return r;
    if ((r = evtchn_init()) < 0)
        return r;
    v->peer = peer;
    v->blocking = 1;
    char buf[24];
    snprintf(key, sizeof key, "%s/event-channel", xs_path);
    /* The server writes ring-ref first: once event-channel is there, both are. */
    if ((r = (int)xs_wait_read(key, buf, sizeof buf, timeout_ns)) < 0)
        return r;
    if ((r = (int)xs_read_uint(key, &remote_port)) < 0)
        return r;
    snprintf(key, sizeof key, "%s/ring-ref", xs_path);
    if ((r = (int)xs_read_uint(key, &ring_ref)) < 0)
        return r;
    if (ring_ref > 0xFFFFFFFFul || remote_port > 0xFFFFFFFFul)   /* the peer wrote them */
        return -PV_EINVAL;
    int port = evtchn_bind_interdomain(peer, (evtchn_port_t)remote_port);
    if (port < 0)
        return port;
    v->port = (evtchn_port_t)port;
    evtchn_test_and_clear(v->port);     /* a new binding starts pending */
    void *page;
    if ((r = map(v, (uint32_t)ring_ref, 0, &page)) < 0)
        return r;
    v->ring = page;
    uint32_t wr = v->ring->left_order, rd = v->ring->right_order;   /* copied once */
    if (wr < SMALL_RING_SHIFT || wr > MAX_RING_SHIFT || rd < SMALL_RING_SHIFT ||
        rd > MAX_RING_SHIFT || (wr == rd && wr < PAGE_SHIFT))
        return -PV_EINVAL;
    uint32_t g = 0;
    struct vchan_ring *rings[2];
    rings_of(v, wr, rd, rings);
    for (int k = 0; k < 2; k++) {
        struct vchan_ring *ring = rings[k];
        uint32_t n = ring_pages(ring->order);
        if (!n)
            continue;
        /* The pages of one ring must be contiguous here: map them into
         * consecutive window slots. */
        uint8_t *base = 0;
        for (uint32_t i = 0; i < n; i++) {
            void *addr;
            uint32_t ref = __atomic_load_n(&v->ring->grants[g++], __ATOMIC_RELAXED);
            if ((r = map(v, ref, ring == &v->read, &addr)) < 0)
                return r;
            if (i == 0)
                base = addr;
            else if ((uint8_t *)addr != base + i * 4096)
                return -PV_ENOMEM;   /* the window is fragmented */
        }
        ring->buffer = base;
    }
    v->ring->cli_live = 1;
    v->ring->srv_notify = VCHAN_NOTIFY_WRITE;
    evtchn_send(v->port);
    return 0;
}

/* ---- the protocol ---------------------------------------------------------------- */

static void request_notify(struct vchan *v, uint8_t bit)
{
    uint8_t *n = v->is_server ? &v->ring->cli_notify : &v->ring->srv_notify;
    __atomic_fetch_or(n, bit, __ATOMIC_SEQ_CST);
}

static void send_notify(struct vchan *v, uint8_t bit)
{
    uint8_t *n = v->is_server ? &v->ring->srv_notify : &v->ring->cli_notify;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_fetch_and(n, (uint8_t)~bit, __ATOMIC_SEQ_CST) & bit)
        evtchn_send(v->port);
}

static uint32_t raw_data_ready(struct vchan *v)
{
    uint32_t ready = __atomic_load_n(&v->read.shr->prod, __ATOMIC_ACQUIRE) -
                     __atomic_load_n(&v->read.shr->cons, __ATOMIC_RELAXED);
    return ready > (1u << v->read.order) ? 0 : ready;   /* a hostile peer: stall */
}

static uint32_t raw_space(struct vchan *v)
{
    uint32_t size = 1u << v->write.order;
    uint32_t space = size - (__atomic_load_n(&v->write.shr->prod, __ATOMIC_RELAXED) -
                             __atomic_load_n(&v->write.shr->cons, __ATOMIC_ACQUIRE));
    return space > size ? 0 : space;
}

long vchan_data_ready(struct vchan *v)
{
    request_notify(v, VCHAN_NOTIFY_WRITE);
    return raw_data_ready(v);
}

long vchan_buffer_space(struct vchan *v)
{
    request_notify(v, VCHAN_NOTIFY_READ);
    return raw_space(v);
}

int vchan_is_open(struct vchan *v)
{
    return v->is_server ? __atomic_load_n(&v->ring->cli_live, __ATOMIC_ACQUIRE) != 0
                        : __atomic_load_n(&v->ring->srv_live, __ATOMIC_ACQUIRE) != 0;
}

int vchan_wait(struct vchan *v, uint64_t timeout_ns)
{
    return evtchn_wait(v->port, timeout_ns);
}

static void put(struct vchan *v, const uint8_t *data, uint32_t n)
{
    uint32_t size = 1u << v->write.order;
    uint32_t prod = v->write.shr->prod;
    uint32_t idx = prod & (size - 1);
    uint32_t first = size - idx < n ? size - idx : n;
    memcpy(v->write.buffer + idx, data, first);
    if (first < n)
        memcpy(v->write.buffer, data + first, n - first);
    __atomic_store_n(&v->write.shr->prod, prod + n, __ATOMIC_RELEASE);
    send_notify(v, VCHAN_NOTIFY_WRITE);
}

static void get(struct vchan *v, uint8_t *data, uint32_t n)
{
    uint32_t size = 1u << v->read.order;
    uint32_t cons = v->read.shr->cons;
    uint32_t idx = cons & (size - 1);
    uint32_t first = size - idx < n ? size - idx : n;
    memcpy(data, v->read.buffer + idx, first);
    if (first < n)
        memcpy(data + first, v->read.buffer, n - first);
    __atomic_store_n(&v->read.shr->cons, cons + n, __ATOMIC_RELEASE);
    send_notify(v, VCHAN_NOTIFY_READ);
}

long vchan_write(struct vchan *v, const void *data, size_t size)
{
    const uint8_t *p = data;
    size_t pos = 0;
    for (;;) {
        if (!vchan_is_open(v))
            return pos ? (long)pos : -PV_EPIPE;
        uint32_t avail = raw_space(v);
        if (avail < size - pos) {
            request_notify(v, VCHAN_NOTIFY_READ);
            avail = raw_space(v);
        }
        uint32_t n = avail < size - pos ? avail : (uint32_t)(size - pos);
        if (n) {
            put(v, p + pos, n);
            pos += n;
        }
        if (pos == size || !v->blocking)
            return (long)pos;
        vchan_wait(v, 100000000);
    }
}

long vchan_read(struct vchan *v, void *data, size_t size)
{
    for (;;) {
        uint32_t avail = raw_data_ready(v);
        if (!avail) {
            request_notify(v, VCHAN_NOTIFY_WRITE);
            avail = raw_data_ready(v);
        }
        if (avail) {
            uint32_t n = avail < size ? avail : (uint32_t)size;
            get(v, data, n);
            return n;
        }
        if (!vchan_is_open(v) || !v->blocking)
            return 0;
        vchan_wait(v, 100000000);
    }
}

void vchan_close(struct vchan *v)
{
    if (!v->ring)
        return;
    if (v->is_server) {
        __atomic_store_n(&v->ring->srv_live, 0, __ATOMIC_RELEASE);
        evtchn_send(v->port);
        /* A client that still maps them keeps them: the grants stay until it
         * unmaps (end_foreign_access is -EBUSY until then); the pages are
         * not reused in any case (pv_page_alloc never takes them back). */
        for (uint32_t i = 0; i < v->nr_refs; i++)
            gnttab_try_end_foreign_access(v->refs[i]);   /* revoke + free, or leave it */
        xs_rm(v->xs_path);
    } else {
        __atomic_store_n(&v->ring->cli_live, 0, __ATOMIC_RELEASE);
        evtchn_send(v->port);
        for (uint32_t i = 0; i < v->nr_refs; i++)
            gnttab_unmap_grant_ref(v->addrs[i], v->handles[i]);
    }
    evtchn_close(v->port);
    v->ring = 0;
}
