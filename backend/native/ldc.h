/* LDC shared memory for C: the peer's map table and segments, and cookie resolution.
 *
 * The same rules as PeerMemory.resolve (backend/ldc/memory.py): every page a
 * cookie names must be a valid map-table entry of the cookie's page size that
 * grants `need`, and must lie inside a segment the peer really shared. All of
 * it is memory the peer can write, so every value read from it is checked.
 */
#ifndef LDC_H
#define LDC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

struct ldc_segment {
    uint64_t id;
    uint8_t *base;
    uint64_t size;
};

struct ldc_peer_memory {
    const uint8_t *table; /* big-endian 64-bit map-table entries */
    uint64_t entries;
    const struct ldc_segment *segments;
    uint32_t nsegments;
};

/* A transport cookie as decoded from the wire (host byte order). */
struct ldc_cookie {
    uint64_t addr;
    uint64_t size;
};

/* Resolve the first `length` bytes the cookies describe into at most `max_iov`
 * iovecs (contiguous pieces merged). Returns the number of iovecs, or -1 when
 * a cookie or entry is not usable, the cookies cover fewer than `length` bytes,
 * or more than `max_iov` pieces would be needed. */
int ldc_resolve(const struct ldc_peer_memory *memory, const struct ldc_cookie *cookies, uint32_t ncookies,
                uint64_t length, uint64_t need, struct iovec *iov, int max_iov);

#endif
