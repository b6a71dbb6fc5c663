/* Switch engine batch step (see vsw.h and Switch.receive_batch in backend/vswitch/switch.py).
 *
 * Frames with the same (destination, source) pair, untagged, unicast and within
 * the ingress size limit get the same forwarding decision, so the engine decides
 * once per group. Anything else is left to the per-frame engine.
 */
#include "vsw.h"

#include <string.h>

#define ADDRS_LEN 12u
#define HEADER_LEN 14

static int needs_engine(const uint8_t *frame)
{
    unsigned type = (unsigned)frame[12] << 8 | frame[13];
    /* group destination, an 802.1Q tag, or the stacked-tag TPIDs the engine refuses */
    return (frame[0] & 1) || type == 0x8100 || type == 0x88A8 || type == 0x9100 || type == 0x9200
           || type == 0x9300;
}

uint64_t vsw_classify(const struct vnet_frames *frames, int32_t max_len, int32_t *group_of,
                      uint32_t *group_first, uint32_t *group_count, uint64_t *group_bytes, uint64_t max_groups)
{
    uint64_t groups = 0;
    for (uint64_t i = 0; i < frames->count; i++) {
        int32_t len = frames->lengths[i];
        uint64_t offset = frames->offsets[i];
        if (len < 0 || offset > frames->size || (uint64_t)len > frames->size - offset) {
            group_of[i] = VSW_NONE;
            continue;
        }
        const uint8_t *frame = frames->data + offset;
        if (len < HEADER_LEN || len > max_len || needs_engine(frame)) {
            group_of[i] = VSW_SLOW;
            continue;
        }
        uint64_t g = 0;
        while (g < groups && memcmp(frames->data + frames->offsets[group_first[g]], frame, ADDRS_LEN))
            g++;
        if (g == groups) {
            if (groups == max_groups) {
                group_of[i] = VSW_SLOW;
                continue;
            }
            group_first[g] = (uint32_t)i;
            group_count[g] = 0;
            group_bytes[g] = 0;
            groups++;
        }
        group_of[i] = (int32_t)g;
        group_count[g]++;
        group_bytes[g] += (uint64_t)len;
    }
    return groups;
}
