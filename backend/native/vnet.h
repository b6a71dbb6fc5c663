/* vNet descriptor-ring data path: frames in through the peer's cookies, frames out into our TX slots. */
#ifndef VNET_H
#define VNET_H

#include <stddef.h>
#include <stdint.h>

#include "ldc.h"

/* Frames side by side in one buffer: frame i is lengths[i] bytes at offsets[i]
 * (a negative length: no frame, with the reason from enum vnet_rx_status). */
struct vnet_frames {
    uint8_t *data;
    uint64_t size;
    uint64_t *offsets;
    int32_t *lengths;
    uint64_t count;
    uint64_t good;  /* frames present (length >= 0), set by vnet_rx */
    uint64_t bytes; /* their bytes, set by vnet_rx */
};

enum vnet_rx_status {
    VNET_RX_BAD_DESC = -1,   /* size or cookie count out of range */
    VNET_RX_BAD_COOKIE = -2, /* the cookies do not grant the bytes (revoked, outside shared memory) */
    VNET_RX_TAGGED = -3,     /* an 802.1Q tag before version 1.3 */
};

/* Our TX ring and the frame buffer behind each of its entries (slot i at i * slot_size). */
struct vnet_tx_ring {
    uint8_t *ring;
    uint64_t ring_size;
    uint64_t count;
    uint64_t desc_size;
    uint8_t *buffers;
    uint64_t buffers_size;
    uint64_t slot_size;
    const uint64_t *slot_cookies;
    uint32_t mtu;
    int allow_tags;
    uint32_t ack_every; /* ask for an ACK on every ack_every-th entry queued */
};

/* What vnet_tx did: entries queued (the first left FREE, its payload in first_desc),
 * frames looked at (in order), frames refused (size, tag). */
struct vnet_tx_result {
    uint64_t queued;
    uint64_t consumed;
    uint64_t refused;
    uint64_t bytes; /* of the frames queued */
    uint8_t first_desc[24];
    int first_ack;
};

int64_t vnet_rx(const uint8_t *descs, uint64_t desc_len, uint64_t n, const struct ldc_peer_memory *peer,
                uint32_t mtu, int allow_tags, struct vnet_frames *out);
void vnet_tx(const struct vnet_tx_ring *tx, uint64_t prod, uint64_t room, uint64_t pending,
             const struct vnet_frames *frames, const int32_t *group_of, const uint8_t *selected,
             uint64_t ngroups, struct vnet_tx_result *result);

#endif
