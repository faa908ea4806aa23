/* What an IVC end's protocol would see, read without side effects (for the
 * benchmarks' waits): frames ready in my rx channel, frames free in my tx
 * channel; over-full counts as empty / full, as in guest/src/ivc.c. */
#ifndef BENCH_IVC_OCCUPANCY_H
#define BENCH_IVC_OCCUPANCY_H

#include <paravm/ivc.h>

static inline uint32_t rx_ready(const struct tegra_ivc *ivc)
{
    uint32_t n = __atomic_load_n(&ivc->rx_channel->w_count, __ATOMIC_ACQUIRE) -
                 __atomic_load_n(&ivc->rx_channel->r_count, __ATOMIC_RELAXED);
    return n > ivc->nframes ? 0 : n;
}

static inline uint32_t tx_free(const struct tegra_ivc *ivc)
{
    uint32_t n = __atomic_load_n(&ivc->tx_channel->w_count, __ATOMIC_RELAXED) -
                 __atomic_load_n(&ivc->tx_channel->r_count, __ATOMIC_ACQUIRE);
    return n >= ivc->nframes ? 0 : ivc->nframes - n;
}

#endif
