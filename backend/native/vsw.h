/* Switch engine batch step: frames of one ingress batch grouped by address pair. */
#ifndef VSW_H
#define VSW_H

#include <stdint.h>

#include "vnet.h"

enum vsw_group {
    VSW_SLOW = -1, /* through the per-frame engine (group address, tag, over max_len, too many pairs) */
    VSW_NONE = -2, /* no frame (a receive error) */
};

/* Give every plain unicast frame of `frames` the group of its (destination,
 * source) pair, in order of first appearance; returns the number of groups. */
uint64_t vsw_classify(const struct vnet_frames *frames, int32_t max_len, int32_t *group_of,
                      uint32_t *group_first, uint32_t *group_count, uint64_t *group_bytes, uint64_t max_groups);

#endif
