#include "csum.h"

#include <string.h>

uint32_t csum_ones_sum(const uint8_t *data, size_t length)
{
    uint64_t sum = 0;
    size_t i = 0;
    /* Eight bytes at a time: big-endian words are summed as they lie in memory
     * and swapped once at the end (one's-complement sums commute with a byte
     * swap, RFC 1071 section 2(B)); a 64-bit word's halves are added with their
     * carries kept in the upper bits of `sum`. */
    for (; i + 8 <= length; i += 8) {
        uint64_t word;
        memcpy(&word, data + i, sizeof word);
        uint64_t before = sum;
        sum += word;
        sum += sum < before; /* end-around carry out of bit 63 */
    }
    while (sum >> 32)
        sum = (sum & 0xffffffffu) + (sum >> 32);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    /* `sum` is now the sum of the words as this machine read them: swap if they were little-endian. */
    uint16_t host_order = 1;
    if (*(const uint8_t *)&host_order == 1)
        sum = (uint64_t)(((sum & 0xff) << 8) | (sum >> 8));
    for (; i + 2 <= length; i += 2)
        sum += (uint32_t)data[i] << 8 | data[i + 1];
    if (i < length)
        sum += (uint32_t)data[i] << 8;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint32_t)sum;
}
