#include "ldc.h"

#include <string.h>

#define COOKIE_CODE_SHIFT 60
#define BASE_PAGE_SHIFT 13
#define MAX_PAGE_CODE 3
#define SEGMENT_SHIFT 36
#define INDEX_BITS ((UINT64_C(1) << COOKIE_CODE_SHIFT) - 1)
#define MTE_ADDRESS_MASK UINT64_C(0x0FFFFFFFFFFFE000)
#define MTE_PAGE_CODE_MASK UINT64_C(0xF)
#define MTE_PERM_BITS UINT64_C(0x7F0)
#define OFFSET_IN_SEGMENT ((UINT64_C(1) << SEGMENT_SHIFT) - 1)

static uint64_t load_be64(const uint8_t *p)
{
    uint64_t value;
    memcpy(&value, p, sizeof value);
    return __builtin_bswap64(value);
}

static const struct ldc_segment *find_segment(const struct ldc_peer_memory *memory, uint64_t id)
{
    for (uint32_t i = 0; i < memory->nsegments; i++)
        if (memory->segments[i].id == id)
            return &memory->segments[i];
    return NULL;
}

/* One page's worth (or less) of a cookie: check its entry, append or merge the piece. */
static int add_piece(const struct ldc_peer_memory *memory, uint64_t index, uint64_t code, uint64_t position,
                     uint64_t length, uint64_t need, struct iovec *iov, int *niov, int max_iov)
{
    uint64_t entry = load_be64(memory->table + index * 8);
    if ((entry & MTE_PAGE_CODE_MASK) != code || !(entry & MTE_PERM_BITS) || (entry & need) != need)
        return -1;
    uint64_t real = entry & MTE_ADDRESS_MASK;
    const struct ldc_segment *segment = find_segment(memory, real >> SEGMENT_SHIFT);
    uint64_t start = (real & OFFSET_IN_SEGMENT) + position; /* < 2^37: no overflow */
    if (segment == NULL || start > segment->size || length > segment->size - start)
        return -1;
    uint8_t *base = segment->base + start;
    if (*niov > 0) {
        struct iovec *last = &iov[*niov - 1];
        if ((uint8_t *)last->iov_base + last->iov_len == base) {
            last->iov_len += length;
            return 0;
        }
    }
    if (*niov >= max_iov)
        return -1;
    iov[*niov].iov_base = base;
    iov[*niov].iov_len = length;
    (*niov)++;
    return 0;
}

int ldc_resolve(const struct ldc_peer_memory *memory, const struct ldc_cookie *cookies, uint32_t ncookies,
                uint64_t length, uint64_t need, struct iovec *iov, int max_iov)
{
    int niov = 0;
    uint64_t remaining = length;
    if (memory->table == NULL || need == 0)
        return -1;
    for (uint32_t c = 0; c < ncookies && remaining; c++) {
        uint64_t addr = cookies[c].addr;
        if (cookies[c].size == 0)
            continue;
        uint64_t take = cookies[c].size < remaining ? cookies[c].size : remaining;
        uint64_t code = addr >> COOKIE_CODE_SHIFT;
        if (code > MAX_PAGE_CODE)
            return -1;
        unsigned shift = BASE_PAGE_SHIFT + 3 * (unsigned)code;
        uint64_t page_size = UINT64_C(1) << shift;
        uint64_t position = addr & (page_size - 1);
        uint64_t index = (addr & INDEX_BITS) >> shift;
        uint64_t left = take;
        while (left) {
            if (index >= memory->entries)
                return -1;
            uint64_t piece = page_size - position < left ? page_size - position : left;
            if (add_piece(memory, index, code, position, piece, need, iov, &niov, max_iov) < 0)
                return -1;
            left -= piece;
            position = 0;
            index++;
        }
        remaining -= take;
    }
    return remaining ? -1 : niov;
}
