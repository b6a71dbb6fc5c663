/* vNet descriptor-ring data path: frames in through the peer's cookies, frames out into our TX slots. */
#ifndef VNET_H
#define VNET_H

#include <stddef.h>
#include <stdint.h>

#include "ldc.h"

/* Frames side by side in one buffer: frame i is lengths[i] bytes at offsets[i]
 * (a negative length: no frame, with the reason from enum vnet_rx_status).
 * flags/mss (both NULL or both set): frame i's descriptor extension, VNET_PKT_*
 * flags and, for an LSO frame (VNET_PKT_IPV4_LSO), its TCP MSS. */
struct vnet_frames {
    uint8_t *data;
    uint64_t size;
    uint64_t *offsets;
    int32_t *lengths;
    uint64_t count;
    uint64_t good;  /* frames present (length >= 0), set by vnet_rx */
    uint64_t bytes; /* their bytes, set by vnet_rx */
    uint8_t *flags;
    uint16_t *mss;
    uint64_t lso; /* LSO frames present, set by vnet_rx */
};

enum vnet_pkt_flags {
    VNET_PKT_HCK_IPV4_HDRCKSUM = 0x02, /* the receiver is to fill in the IPv4 header checksum */
    VNET_PKT_HCK_FULLCKSUM = 0x04,     /* the receiver is to fill in the L4 checksum */
    VNET_PKT_IPV4_LSO = 0x08,          /* one large TCP/IPv4 frame to be cut at mss */
};

/* What the session negotiated: frames up to mtu, LSO frames up to tsolen (0: no LSO),
 * tags (1.3+), the 8-byte descriptor extension after two cookie slots (1.7+). */
struct vnet_link {
    uint32_t mtu;
    uint32_t tsolen;
    int allow_tags;
    int ext;
};

enum vnet_rx_status {
    VNET_RX_BAD_DESC = -1,   /* size or cookie count out of range */
    VNET_RX_BAD_COOKIE = -2, /* the cookies do not grant the bytes (revoked, outside shared memory) */
    VNET_RX_TAGGED = -3,     /* an 802.1Q tag before version 1.3 */
};

enum { VNET_EXT_DESC = 48 }; /* a TX payload with the extension: size, ncookies, 2 cookie slots, ext */

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
    struct vnet_link link;
    uint32_t ack_every; /* ask for an ACK on every ack_every-th entry queued */
};

/* What vnet_tx did: entries queued (the first left FREE, its payload in first_desc),
 * frames looked at (in order), frames refused (size, tag). */
struct vnet_tx_result {
    uint64_t queued;
    uint64_t consumed;
    uint64_t refused;
    uint64_t bytes; /* of the frames queued */
    uint8_t first_desc[VNET_EXT_DESC];
    uint32_t first_len; /* bytes of first_desc in use */
    int first_ack;
};

int64_t vnet_rx(const uint8_t *descs, uint64_t desc_len, uint64_t n, const struct ldc_peer_memory *peer,
                const struct vnet_link *link, struct vnet_frames *out);
void vnet_tx(const struct vnet_tx_ring *tx, uint64_t prod, uint64_t room, uint64_t pending,
             const struct vnet_frames *frames, const int32_t *group_of, const uint8_t *selected,
             uint64_t ngroups, struct vnet_tx_result *result);

#endif
