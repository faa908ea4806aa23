/*
 * The Tegra hypervisor's IVC cookie API (specs A.1.5, A.2), over paravm's
 * IVC service: the hypervisor hands out an info page of shared areas and
 * queues (ivc_read_info hypercall); a reserved queue is a tegra_ivc channel
 * pair in the area shared with the peer; notifying the peer rings its
 * doorbell (an in-kernel ioeventfd -> irqfd, no VMM exit); the queue's
 * interrupt arrives on cookie->irq (a vector) while the vCPU waits.
 */
#ifndef PARAVM_TEGRA_HV_H
#define PARAVM_TEGRA_HV_H

#include "paravm/ivc.h"

#define PV_HC_IVC_READ_INFO  16
#define PV_HC_IVC_READ_GID   17
#define PV_HC_IVC_RAISE_IRQ  18
#define PV_IVC_DOORBELL_PORT 0x510
#define PV_IVC_MAX_QUEUES    128   /* vectors 0x40..0xBF */
#define PV_IVC_MAX_MEMPOOLS  64

struct ivc_info_page {
    uint32_t nr_queues;
    uint32_t nr_areas;
    uint32_t nr_mempools;
    uint32_t pad;
};

struct ivc_shared_area {
    uint64_t pa;
    uint64_t size;
    uint32_t guest;          /* the peer's vmid */
    uint16_t free_irq_start;
    uint16_t free_irq_count;
};

struct tegra_hv_queue_data {
    uint32_t id;
    uint32_t peers[2];
    uint32_t size;           /* bytes per direction: header + frames */
    uint32_t nframes;
    uint32_t frame_size;
    uint32_t offset;         /* into the area shared with the peer */
    uint16_t irq;            /* vector I receive on */
    uint16_t raise_irq;      /* doorbell token to ring the peer */
};

struct ivc_mempool {
    uint64_t pa;
    uint64_t size;
    uint32_t id;
    uint32_t peer_vmid;
};

struct tegra_hv_ivc_cookie {
    int irq;
    int peer_vmid;
    int nframes;
    int frame_size;
};

struct tegra_hv_ivc_ops {
    void (*rx_rdy)(struct tegra_hv_ivc_cookie *ivck);
    void (*tx_rdy)(struct tegra_hv_ivc_cookie *ivck);
};

/* A reserved mempool: guest-physical (= virtual) address, bytes, the peer. */
struct tegra_hv_ivm_cookie {
    uint64_t ipa;
    uint64_t size;
    unsigned peer_vmid;
    void *reserved;
};

/* Kernel-style error pointers. */
#define PV_MAX_ERRNO 4095
static inline void *PV_ERR_PTR(long err) { return (void *)err; }
static inline long PV_PTR_ERR(const void *p) { return (long)p; }
static inline int PV_IS_ERR(const void *p) { return (unsigned long)p >= (unsigned long)-PV_MAX_ERRNO; }

/* Reserve queue *id*: a cookie, or PV_ERR_PTR(-PV_ENODEV) for an unknown id,
 * (-PV_EBUSY) if reserved (or in loopback), (-PV_EPROBE_DEFER) if this domain
 * has no IVC.  With ops, rx_rdy/tx_rdy are called now if the queue can be read
 * / written, and again on each of its interrupts.  The channel is not reset. */
struct tegra_hv_ivc_cookie *tegra_hv_ivc_reserve(void *dn, int id,
                                                 const struct tegra_hv_ivc_ops *ops);
int tegra_hv_ivc_unreserve(struct tegra_hv_ivc_cookie *ivck);
int tegra_hv_ivc_write(struct tegra_hv_ivc_cookie *ivck, const void *buf, int size);
int tegra_hv_ivc_read(struct tegra_hv_ivc_cookie *ivck, void *buf, int size);
int tegra_hv_ivc_can_read(struct tegra_hv_ivc_cookie *ivck);
int tegra_hv_ivc_can_write(struct tegra_hv_ivc_cookie *ivck);
int tegra_hv_ivc_tx_empty(struct tegra_hv_ivc_cookie *ivck);
int tegra_hv_ivc_read_peek(struct tegra_hv_ivc_cookie *ivck, void *buf, int off, int count);
int tegra_hv_ivc_write_poke(struct tegra_hv_ivc_cookie *ivck, const void *buf, int off,
                            int count);
void *tegra_hv_ivc_read_get_next_frame(struct tegra_hv_ivc_cookie *ivck);
void *tegra_hv_ivc_write_get_next_frame(struct tegra_hv_ivc_cookie *ivck);
int tegra_hv_ivc_read_advance(struct tegra_hv_ivc_cookie *ivck);
int tegra_hv_ivc_write_advance(struct tegra_hv_ivc_cookie *ivck);
int tegra_hv_ivc_channel_notified(struct tegra_hv_ivc_cookie *ivck);
/* Not allowed on a cookie reserved with ops (the reference BUG()s): returns
 * -PV_EINVAL here instead. */
int tegra_hv_ivc_channel_reset(struct tegra_hv_ivc_cookie *ivck);
int tegra_hv_ivc_dump(struct tegra_hv_ivc_cookie *ivck);
/* Gen-1 loopback (specs A.2): 1 enables a kernel echo of every frame, 0
 * disables it.  Through a cookie the queue is reserved by the caller, so
 * enabling gives -PV_EBUSY, as the reference; pv_ivc_set_loopback(id, mode) is
 * the sysfs-like switch for an unreserved queue. */
int tegra_hv_ivc_set_loopback(struct tegra_hv_ivc_cookie *ivck, int mode);
int tegra_hv_ivc_perform_loopback(struct tegra_hv_ivc_cookie *ivck);
int pv_ivc_set_loopback(int id, int mode);

/* How this end rings its peer (a paravm extension): PV_IVC_DOORBELL_PORT_IO
 * (the default) is `outl raise_irq, $0x510`, signalled in the kernel with no
 * VMM exit; PV_IVC_DOORBELL_HYPERCALL is the RAISE_IRQ hypercall, relayed by
 * the VMM (an exit per notification; counted in the VMM's statistics).
 * 0, or -PV_EINVAL for another mode. */
#define PV_IVC_DOORBELL_PORT_IO   0
#define PV_IVC_DOORBELL_HYPERCALL 1
int pv_ivc_set_doorbell(struct tegra_hv_ivc_cookie *ivck, int mode);

/* Mempools (shared memory pools with one peer, specs A.1.4-A.1.5), with the
 * 4.9 reference's errors: reserve gives a cookie, PV_ERR_PTR(-PV_EPROBE_DEFER)
 * without IVC, (-PV_ENODEV) for an unknown id, (-PV_EBUSY) if reserved;
 * unreserve gives 0, or -PV_EINVAL if it was not reserved.  The memory is
 * mapped at cookie->ipa, usable at once (identity mapping). */
struct tegra_hv_ivm_cookie *tegra_hv_mempool_reserve(void *dn, unsigned id);
int tegra_hv_mempool_unreserve(struct tegra_hv_ivm_cookie *ck);

/* The queue's tegra_ivc channel (for the tegra_ivc_* calls). */
struct tegra_ivc *tegra_hv_ivc_convert_cookie(struct tegra_hv_ivc_cookie *ivck);
/* My vmid (READ_GID). */
int pv_ivc_vmid(void);

#endif
