/*
 * Tegra IVC protocol library (see paravm/ivc.h and specs/ivc-lguest-pvz.md
 * part A).
 *
 * Shared memory is written by the peer at any time, so:
 *  - every shared word is read with a fresh atomic load each time it is
 *    needed (READ_ONCE in Linux), and a value that is tested twice is
 *    loaded once into a local first;
 *  - frame contents are ordered against the counters by fences, mapping the
 *    kernel's barriers onto C11: smp_rmb -> acquire fence, smp_wmb ->
 *    release fence, smp_mb -> sequentially consistent fence.  On x86 (TSO)
 *    the first two only stop the compiler; the full fence is an mfence,
 *    needed where a counter store must be visible before the peer's counter
 *    is loaded (the notification decision).
 *  - positions are ours alone and always < nframes, so frame pointers never
 *    leave the channel whatever the peer writes.
 * The Linux reference also flushes/invalidates cache lines for non-coherent
 * peers; paravm's shared memory is coherent, so those steps vanish.
 *
 * Freestanding: only compiler builtins (memcpy/memset calls that the
 * compiler may emit are provided by the SDK or, on the host, by libc).
 */
#include "paravm/ivc.h"

#define IVC_INT_MAX 0x7fffffffu

static inline uint32_t ld(const uint32_t *p)
{
    return __atomic_load_n((const volatile uint32_t *)p, __ATOMIC_RELAXED);
}

static inline void st(uint32_t *p, uint32_t v)
{
    __atomic_store_n((volatile uint32_t *)p, v, __ATOMIC_RELAXED);
}

static inline void ivc_rmb(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
static inline void ivc_wmb(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
static inline void ivc_mb(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

static inline int empty_full_err(const struct tegra_ivc *ivc)
{
    return (ivc->flags & TEGRA_IVC_FLAG_ENOSPC) ? -PV_ENOSPC : -PV_ENOMEM;
}

/* Over-full (more than nframes) reads as empty: a lying peer looks silent
 * rather than flooding us.  One load of each counter for both tests. */
static int channel_empty(const struct tegra_ivc *ivc, const struct tegra_ivc_header *ch)
{
    uint32_t w = ld(&ch->w_count), r = ld(&ch->r_count);
    return w - r > ivc->nframes || w == r;
}

/* Over-capacity also reads as full. */
static int channel_full(const struct tegra_ivc *ivc, const struct tegra_ivc_header *ch)
{
    return ld(&ch->w_count) - ld(&ch->r_count) >= ivc->nframes;
}

/* Raw occupancy, no sanity: only for the notification decisions, where a
 * wrong answer costs at most a spurious or missed doorbell. */
static uint32_t channel_avail(const struct tegra_ivc_header *ch)
{
    return ld(&ch->w_count) - ld(&ch->r_count);
}

static uint32_t my_state(const struct tegra_ivc *ivc)
{
    return ld(&ivc->tx_channel->state);
}

/* The state tested is our own (in our tx header): the peer cannot zero
 * the counters we use before we have acknowledged its SYNC. */
static int check_read(const struct tegra_ivc *ivc)
{
    if (my_state(ivc) != TEGRA_IVC_STATE_ESTABLISHED)
        return -PV_ECONNRESET;
    return channel_empty(ivc, ivc->rx_channel) ? empty_full_err(ivc) : 0;
}

static int check_write(const struct tegra_ivc *ivc)
{
    if (my_state(ivc) != TEGRA_IVC_STATE_ESTABLISHED)
        return -PV_ECONNRESET;
    return channel_full(ivc, ivc->tx_channel) ? empty_full_err(ivc) : 0;
}

static inline uint8_t *frame_ptr(const struct tegra_ivc *ivc, struct tegra_ivc_header *ch,
                                 uint32_t pos)
{
    return (uint8_t *)(ch + 1) + (size_t)ivc->frame_size * pos;
}

/* Publish one more frame written / consumed.  Our own counter is re-read
 * from shared memory, as the reference does, so a peer scribbling on it
 * loses or repeats frames but never moves our positions out of range. */
static void advance_tx(struct tegra_ivc *ivc)
{
    uint32_t *w = &ivc->tx_channel->w_count;
    st(w, ld(w) + 1);
    ivc->w_pos = ivc->w_pos == ivc->nframes - 1 ? 0 : ivc->w_pos + 1;
}

static void advance_rx(struct tegra_ivc *ivc)
{
    uint32_t *r = &ivc->rx_channel->r_count;
    st(r, ld(r) + 1);
    ivc->r_pos = ivc->r_pos == ivc->nframes - 1 ? 0 : ivc->r_pos + 1;
}

/* After consuming a frame: r_count store before the w_count load, then
 * notify only on full -> not-full (the occupancy can only have grown since,
 * so at worst the notification is spurious). */
static void finish_read(struct tegra_ivc *ivc)
{
    /* The frame's loads complete before the peer may reuse the frame. */
    ivc_wmb();
    advance_rx(ivc);
    ivc_mb();
    if (channel_avail(ivc->rx_channel) == ivc->nframes - 1)
        ivc->notify(ivc, ivc->notify_data);
}

/* After filling a frame: payload before w_count, w_count before the r_count
 * load, then notify only on empty -> non-empty. */
static void finish_write(struct tegra_ivc *ivc)
{
    ivc_wmb();
    advance_tx(ivc);
    ivc_mb();
    if (channel_avail(ivc->tx_channel) == 1)
        ivc->notify(ivc, ivc->notify_data);
}

/* --- geometry ---------------------------------------------------------- */
unsigned tegra_ivc_align(unsigned size)
{
    return (size + (TEGRA_IVC_ALIGN - 1)) & ~(unsigned)(TEGRA_IVC_ALIGN - 1);
}

unsigned tegra_ivc_total_queue_size(unsigned queue_size)
{
    if (queue_size & (TEGRA_IVC_ALIGN - 1))
        return 0;
    return queue_size + TEGRA_IVC_HEADER_SIZE;
}

/* The reference's check_ivc_params, in its order; the overlap test counts
 * the header and cannot overflow. */
static int check_params(uintptr_t rx, uintptr_t tx, unsigned nframes, unsigned frame_size)
{
    uint64_t frames = (uint64_t)nframes * frame_size;
    if (frames >= 0x100000000ull)
        return -PV_EINVAL;
    if ((rx | tx) & (TEGRA_IVC_ALIGN - 1))
        return -PV_EINVAL;
    if (frame_size & (TEGRA_IVC_ALIGN - 1))
        return -PV_EINVAL;
    uintptr_t lo = rx < tx ? rx : tx, hi = rx < tx ? tx : rx;
    if (hi - lo < TEGRA_IVC_HEADER_SIZE + frames)
        return -PV_EINVAL;
    return 0;
}

int tegra_ivc_init(struct tegra_ivc *ivc, void *rx, void *tx, unsigned nframes,
                   unsigned frame_size, void (*notify)(struct tegra_ivc *, void *),
                   void *data)
{
    int err = check_params((uintptr_t)rx, (uintptr_t)tx, nframes, frame_size);
    if (err)
        return err;
    if (!ivc || !notify)
        return -PV_EINVAL;
    /* Every size a call returns must fit in an int. */
    if (frame_size > IVC_INT_MAX)
        return -PV_E2BIG;
    ivc->rx_channel = rx;
    ivc->tx_channel = tx;
    ivc->w_pos = 0;
    ivc->r_pos = 0;
    ivc->nframes = nframes;
    ivc->frame_size = frame_size;
    ivc->flags = 0;
    ivc->notify = notify;
    ivc->notify_data = data;
    return 0;
}

int tegra_ivc_set_flags(struct tegra_ivc *ivc, unsigned flags)
{
    if (flags & ~TEGRA_IVC_FLAGS_ALL)
        return -PV_EINVAL;
    ivc->flags = flags;
    return 0;
}

/* --- reset handshake ----------------------------------------------------- */
void tegra_ivc_channel_reset(struct tegra_ivc *ivc)
{
    st(&ivc->tx_channel->state, TEGRA_IVC_STATE_SYNC);
    ivc->notify(ivc, ivc->notify_data);
}

/* Both sides are quiescent (the peer waits on our state), so the counters
 * we own can be cleared; they must be seen cleared before the new state. */
static void clear_and_publish(struct tegra_ivc *ivc, uint32_t state)
{
    ivc_rmb();
    st(&ivc->tx_channel->w_count, 0);
    st(&ivc->rx_channel->r_count, 0);
    ivc->w_pos = 0;
    ivc->r_pos = 0;
    ivc_wmb();
    st(&ivc->tx_channel->state, state);
}

/*
 *  local  remote        action
 *  any    SYNC          clear counters, -> ACK, notify
 *  SYNC   ACK           clear counters, -> EST, notify
 *  SYNC   EST/garbage   none (wait for the peer)
 *  ACK    ACK           -> EST, notify
 *  ACK    EST           -> EST, notify    (OE4T flag: no notify)
 *  ACK    garbage       -> EST, notify    (OE4T flag: none)
 *  EST    not SYNC      none
 */
int tegra_ivc_channel_notified(struct tegra_ivc *ivc)
{
    uint32_t peer = ld(&ivc->rx_channel->state);
    uint32_t me = my_state(ivc);

    if (peer == TEGRA_IVC_STATE_SYNC) {
        clear_and_publish(ivc, TEGRA_IVC_STATE_ACK);
        ivc->notify(ivc, ivc->notify_data);
    } else if (me == TEGRA_IVC_STATE_SYNC && peer == TEGRA_IVC_STATE_ACK) {
        clear_and_publish(ivc, TEGRA_IVC_STATE_ESTABLISHED);
        ivc->notify(ivc, ivc->notify_data);
    } else if (me == TEGRA_IVC_STATE_ACK) {
        int oe4t = ivc->flags & TEGRA_IVC_FLAG_OE4T_HANDSHAKE;
        if (!oe4t || peer == TEGRA_IVC_STATE_ACK || peer == TEGRA_IVC_STATE_ESTABLISHED) {
            /* Both counters were cleared when we entered ACK, and the peer
             * (ACK or EST) has cleared its own. */
            ivc_rmb();
            st(&ivc->tx_channel->state, TEGRA_IVC_STATE_ESTABLISHED);
            if (!oe4t || peer == TEGRA_IVC_STATE_ACK)
                ivc->notify(ivc, ivc->notify_data);
        }
    }
    return my_state(ivc) == TEGRA_IVC_STATE_ESTABLISHED ? 0 : -PV_EAGAIN;
}

int tegra_ivc_channel_sync(struct tegra_ivc *ivc)
{
    if (!ivc || ivc->nframes == 0)
        return -PV_EINVAL;
    ivc->w_pos = ld(&ivc->tx_channel->w_count) % ivc->nframes;
    ivc->r_pos = ld(&ivc->rx_channel->r_count) % ivc->nframes;
    return 0;
}

/* --- state queries ------------------------------------------------------- */
int tegra_ivc_can_read(struct tegra_ivc *ivc) { return check_read(ivc) == 0; }
int tegra_ivc_can_write(struct tegra_ivc *ivc) { return check_write(ivc) == 0; }
int tegra_ivc_tx_empty(struct tegra_ivc *ivc) { return channel_empty(ivc, ivc->tx_channel); }

unsigned tegra_ivc_tx_frames_available(struct tegra_ivc *ivc)
{
    return ivc->nframes - channel_avail(ivc->tx_channel);
}

/* --- frames -------------------------------------------------------------- */
static int peek_poke_bounds(const struct tegra_ivc *ivc, size_t off, size_t count)
{
    return off > ivc->frame_size || count > ivc->frame_size - off ? -PV_E2BIG : 0;
}

int tegra_ivc_read(struct tegra_ivc *ivc, void *buf, size_t max)
{
    if (max > ivc->frame_size)
        return -PV_E2BIG;
    int err = check_read(ivc);
    if (err)
        return err;
    ivc_rmb();      /* the w_count we saw before the payload */
    __builtin_memcpy(buf, frame_ptr(ivc, ivc->rx_channel, ivc->r_pos), max);
    finish_read(ivc);
    return (int)max;
}

int tegra_ivc_write(struct tegra_ivc *ivc, const void *buf, size_t size)
{
    if (size > ivc->frame_size)
        return -PV_E2BIG;
    int err = check_write(ivc);
    if (err)
        return err;
    uint8_t *p = frame_ptr(ivc, ivc->tx_channel, ivc->w_pos);
    __builtin_memcpy(p, buf, size);
    __builtin_memset(p + size, 0, ivc->frame_size - size);
    finish_write(ivc);
    return (int)size;
}

int tegra_ivc_read_peek(struct tegra_ivc *ivc, void *buf, size_t off, size_t count)
{
    int err = peek_poke_bounds(ivc, off, count);
    if (err)
        return err;
    err = check_read(ivc);
    if (err)
        return err;
    ivc_rmb();
    __builtin_memcpy(buf, frame_ptr(ivc, ivc->rx_channel, ivc->r_pos) + off, count);
    return (int)count;
}

int tegra_ivc_write_poke(struct tegra_ivc *ivc, const void *buf, size_t off, size_t count)
{
    int err = peek_poke_bounds(ivc, off, count);
    if (err)
        return err;
    err = check_write(ivc);
    if (err)
        return err;
    __builtin_memcpy(frame_ptr(ivc, ivc->tx_channel, ivc->w_pos) + off, buf, count);
    return (int)count;
}

void *tegra_ivc_read_get_next_frame_err(struct tegra_ivc *ivc, int *err)
{
    int e = check_read(ivc);
    if (err)
        *err = e;
    if (e)
        return NULL;
    ivc_rmb();
    return frame_ptr(ivc, ivc->rx_channel, ivc->r_pos);
}

void *tegra_ivc_read_get_next_frame(struct tegra_ivc *ivc)
{
    return tegra_ivc_read_get_next_frame_err(ivc, NULL);
}

int tegra_ivc_read_advance(struct tegra_ivc *ivc)
{
    /* Only catches programming errors: the caller saw a frame already. */
    int err = check_read(ivc);
    if (err)
        return err;
    finish_read(ivc);
    return 0;
}

void *tegra_ivc_write_get_next_frame_err(struct tegra_ivc *ivc, int *err)
{
    int e = check_write(ivc);
    if (err)
        *err = e;
    if (e)
        return NULL;
    return frame_ptr(ivc, ivc->tx_channel, ivc->w_pos);
}

void *tegra_ivc_write_get_next_frame(struct tegra_ivc *ivc)
{
    return tegra_ivc_write_get_next_frame_err(ivc, NULL);
}

int tegra_ivc_write_advance(struct tegra_ivc *ivc)
{
    int err = check_write(ivc);
    if (err)
        return err;
    finish_write(ivc);
    return 0;
}
