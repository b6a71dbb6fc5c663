/* vNet descriptor-ring data path (see vnet.h and backend/vswitch/vnet.py).
 *
 * Everything the peer wrote is untrusted: descriptor fields, cookies, map-table
 * entries. Each is read once into a local and checked against the memory the
 * peer really shared before a byte is copied. Frames sit PACKET_SKIP bytes into
 * their buffers and the peer must grant the copy rounded up to 8 bytes, as the
 * hypervisor's ldc_mem_copy wants (Linux VNET_PACKET_SKIP, illumos VNET_IPALIGN).
 *
 * From 1.7 a descriptor has an 8-byte extension where a third cookie would be
 * (Linux vio_net_ext: flags, hash value, LSO MSS, reserved). With LSO
 * negotiated a frame may be up to tsolen bytes instead of the MTU.
 */
#include "vnet.h"

#include <string.h>

#define PACKET_SKIP 6u
#define MIN_FRAME 14u
#define MAX_COOKIES 2u
#define COOKIE_LEN 16u
#define DESC_LEN 8u /* size, ncookies (after the 8-byte ring entry header) */
#define ENTRY_HEADER 8u
#define TX_PAYLOAD 24u /* DESC_LEN and one cookie */
#define EXT_AT (DESC_LEN + MAX_COOKIES * COOKIE_LEN) /* the extension, after two cookie slots */
#define EXT_LEN 8u

#define STATE_FREE 0x1
#define STATE_READY 0x2
#define ACK_ENABLE 0x1

#define PERM_COPY_READ 0x200u
#define MAX_PIECES 32 /* pages a frame's cookies may name, merged when contiguous */

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint16_t be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static uint64_t be64(const uint8_t *p)
{
    return (uint64_t)be32(p) << 32 | be32(p + 4);
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}

static uint64_t round8(uint64_t n)
{
    return (n + 7) & ~(uint64_t)7;
}

/* Resolve the first `length` bytes of the cookies (ldc_resolve: every page
 * checked) and copy bytes start..stop of them to dst. 0, or -1 if the cookies
 * do not grant them. */
static int copy_in(const struct ldc_peer_memory *peer, const uint8_t *wire_cookies, uint32_t ncookies,
                   uint64_t length, uint64_t start, uint64_t stop, uint8_t *dst)
{
    struct ldc_cookie cookies[MAX_COOKIES];
    for (uint32_t c = 0; c < ncookies; c++) {
        cookies[c].addr = be64(wire_cookies + c * COOKIE_LEN);
        cookies[c].size = be64(wire_cookies + c * COOKIE_LEN + 8);
    }
    struct iovec iov[MAX_PIECES];
    int pieces = ldc_resolve(peer, cookies, ncookies, length, PERM_COPY_READ, iov, MAX_PIECES);
    if (pieces < 0)
        return -1;
    uint64_t pos = 0;
    for (int i = 0; i < pieces; i++) {
        uint64_t lo = pos > start ? pos : start;
        uint64_t hi = pos + iov[i].iov_len < stop ? pos + iov[i].iov_len : stop;
        if (lo < hi)
            memcpy(dst + (lo - start), (const uint8_t *)iov[i].iov_base + (lo - pos), hi - lo);
        pos += iov[i].iov_len;
    }
    return 0;
}

/* The largest frame a descriptor may carry: the MTU, or with LSO negotiated tsolen. */
static uint32_t max_frame(const struct vnet_link *link)
{
    return link->tsolen > link->mtu ? link->tsolen : link->mtu;
}

int64_t vnet_rx(const uint8_t *descs, uint64_t desc_len, uint64_t n, const struct ldc_peer_memory *peer,
                const struct vnet_link *link, struct vnet_frames *out)
{
    if (n > out->count || (out->flags == NULL) != (out->mss == NULL))
        return -1;
    uint64_t room = desc_len >= DESC_LEN ? (desc_len - DESC_LEN) / COOKIE_LEN : 0;
    if (room > MAX_COOKIES)
        room = MAX_COOKIES;
    int ext = link->ext && desc_len >= EXT_AT + EXT_LEN;
    uint32_t maxlen = max_frame(link);
    uint64_t cursor = 0;
    out->good = out->bytes = out->lso = 0;
    for (uint64_t i = 0; i < n; i++) {
        const uint8_t *desc = descs + i * desc_len;
        out->offsets[i] = cursor;
        uint32_t size = room ? be32(desc) : 0;
        uint32_t ncookies = room ? be32(desc + 4) : 0;
        uint8_t flags = ext ? desc[EXT_AT] : 0;
        uint16_t mss = ext ? be16(desc + EXT_AT + 2) : 0;
        int lso = link->tsolen && (flags & VNET_PKT_IPV4_LSO);
        if (size < MIN_FRAME || size > maxlen || ncookies < 1 || ncookies > room || size > out->size - cursor
            || cursor > out->size || (lso && mss == 0)) {
            out->lengths[i] = VNET_RX_BAD_DESC;
            continue;
        }
        uint8_t *frame = out->data + cursor;
        if (copy_in(peer, desc + DESC_LEN, ncookies, round8(size + PACKET_SKIP), PACKET_SKIP,
                    PACKET_SKIP + size, frame)) {
            out->lengths[i] = VNET_RX_BAD_COOKIE;
            continue;
        }
        if (!link->allow_tags && frame[12] == 0x81 && frame[13] == 0x00) {
            out->lengths[i] = VNET_RX_TAGGED;
            continue;
        }
        if (out->flags) {
            out->flags[i] = lso ? flags : (uint8_t)(flags & ~VNET_PKT_IPV4_LSO);
            out->mss[i] = lso ? mss : 0;
        }
        out->lengths[i] = (int32_t)size;
        cursor += round8(size);
        out->good++;
        out->bytes += size;
        out->lso += (uint64_t)lso;
    }
    return (int64_t)out->good;
}

/* The MSS of frame i when it goes out as an LSO frame (0: a plain frame). */
static uint16_t tx_mss(const struct vnet_tx_ring *tx, const struct vnet_frames *frames, uint64_t i)
{
    return tx->link.tsolen && tx->link.ext && frames->mss ? frames->mss[i] : 0;
}

static int frame_fits(const struct vnet_tx_ring *tx, const struct vnet_frames *frames, uint64_t i, uint16_t mss)
{
    int32_t len = frames->lengths[i];
    uint32_t limit = mss ? max_frame(&tx->link) : tx->link.mtu;
    if (len < (int32_t)MIN_FRAME || (uint32_t)len > limit || frames->offsets[i] > frames->size
        || (uint64_t)len > frames->size - frames->offsets[i] || len + PACKET_SKIP > tx->slot_size)
        return 0;
    const uint8_t *frame = frames->data + frames->offsets[i];
    return tx->link.allow_tags || frame[12] != 0x81 || frame[13] != 0x00;
}

void vnet_tx(const struct vnet_tx_ring *tx, uint64_t prod, uint64_t room, uint64_t pending,
             const struct vnet_frames *frames, const int32_t *group_of, const uint8_t *selected,
             uint64_t ngroups, struct vnet_tx_result *result)
{
    memset(result, 0, sizeof *result);
    uint32_t payload_len = tx->link.ext ? VNET_EXT_DESC : TX_PAYLOAD;
    int ring_ok = tx->count && tx->desc_size >= ENTRY_HEADER + payload_len && prod < tx->count
                  && tx->count <= tx->ring_size / tx->desc_size && tx->ack_every
                  && tx->count <= tx->buffers_size / (tx->slot_size ? tx->slot_size : 1) && tx->slot_size;
    uint64_t i = 0;
    for (; i < frames->count; i++) {
        if (group_of) {
            int32_t g = group_of[i];
            if (g < 0 || (uint64_t)g >= ngroups || !selected[g])
                continue;
        } else if (frames->lengths[i] < 0) {
            continue;
        }
        if (!ring_ok || result->queued == room)
            break;
        uint16_t mss = tx_mss(tx, frames, i);
        if (!frame_fits(tx, frames, i, mss)) {
            result->refused++;
            continue;
        }
        uint64_t index = (prod + result->queued) % tx->count;
        uint8_t *entry = tx->ring + index * tx->desc_size;
        if (entry[0] != STATE_FREE)
            break; /* the session finds the ring broken when it queues there */
        uint32_t len = (uint32_t)frames->lengths[i];
        uint8_t *slot = tx->buffers + index * tx->slot_size;
        memcpy(slot + PACKET_SKIP, frames->data + frames->offsets[i], len);
        uint8_t payload[VNET_EXT_DESC] = {0};
        put_be32(payload, len);
        put_be32(payload + 4, 1);
        put_be64(payload + 8, tx->slot_cookies[index]);
        put_be64(payload + 16, round8(len + PACKET_SKIP));
        if (mss) {
            payload[EXT_AT] = VNET_PKT_IPV4_LSO;
            payload[EXT_AT + 2] = (uint8_t)(mss >> 8);
            payload[EXT_AT + 3] = (uint8_t)mss;
        }
        int ack = (pending + result->queued) % tx->ack_every == tx->ack_every - 1;
        if (result->queued == 0) {
            memcpy(result->first_desc, payload, payload_len); /* the session queues it and kicks */
            result->first_len = payload_len;
            result->first_ack = ack;
        } else {
            memset(entry + 1, 0, ENTRY_HEADER - 1);
            entry[1] = ack ? ACK_ENABLE : 0;
            memcpy(entry + ENTRY_HEADER, payload, payload_len);
            __atomic_store_n(entry, (uint8_t)STATE_READY, __ATOMIC_RELEASE); /* last: the peer may look */
        }
        result->queued++;
        result->bytes += len;
    }
    result->consumed = i;
}
