/* Layout facts of guest/include/paravm/ivc.h for ctypes (tests/unit/test_ivc_c.py),
 * so the Python mirror of struct tegra_ivc is checked, not assumed. */
#include <stddef.h>
#include "paravm/ivc.h"

enum {
    L_HEADER_SIZE, L_W_COUNT, L_STATE, L_R_COUNT,
    L_IVC_SIZE, L_RX, L_TX, L_W_POS, L_R_POS, L_NFRAMES, L_FRAME_SIZE, L_FLAGS,
    L_NOTIFY, L_NOTIFY_DATA, L_COUNT
};

static const size_t layout[L_COUNT] = {
    [L_HEADER_SIZE] = sizeof(struct tegra_ivc_header),
    [L_W_COUNT] = offsetof(struct tegra_ivc_header, w_count),
    [L_STATE] = offsetof(struct tegra_ivc_header, state),
    [L_R_COUNT] = offsetof(struct tegra_ivc_header, r_count),
    [L_IVC_SIZE] = sizeof(struct tegra_ivc),
    [L_RX] = offsetof(struct tegra_ivc, rx_channel),
    [L_TX] = offsetof(struct tegra_ivc, tx_channel),
    [L_W_POS] = offsetof(struct tegra_ivc, w_pos),
    [L_R_POS] = offsetof(struct tegra_ivc, r_pos),
    [L_NFRAMES] = offsetof(struct tegra_ivc, nframes),
    [L_FRAME_SIZE] = offsetof(struct tegra_ivc, frame_size),
    [L_FLAGS] = offsetof(struct tegra_ivc, flags),
    [L_NOTIFY] = offsetof(struct tegra_ivc, notify),
    [L_NOTIFY_DATA] = offsetof(struct tegra_ivc, notify_data),
};

/* Entry i of the table above, or (size_t)-1 past its end. */
size_t ivc_shim_layout(unsigned i)
{
    return i < L_COUNT ? layout[i] : (size_t)-1;
}
