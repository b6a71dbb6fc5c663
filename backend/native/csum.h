/* The Internet checksum's one's-complement sum, for frames the switch finishes. */
#ifndef CSUM_H
#define CSUM_H

#include <stddef.h>
#include <stdint.h>

/* The 16-bit one's-complement sum of `data` read as big-endian 16-bit words
 * (an odd last byte is the high byte of a word padded with zero): 0 only when
 * every word is 0, otherwise 1..0xffff (RFC 1071, end-around carry). */
uint32_t csum_ones_sum(const uint8_t *data, size_t length);

#endif
