#define _GNU_SOURCE
#include "vdisk.h"

#include <errno.h>
#include <string.h>
#include <sys/uio.h>

/* Ring entry: 8-byte header {state, ack, reserved}, then the disk descriptor
 * {req_id u64, operation u8, slice u8, pad u16, status u32, offset u64,
 * size u64, ncookies u32, pad u32}, then the cookies {addr u64, size u64}. */
#define DESC_HEADER 8
#define REQUEST_HEAD 40
#define COOKIE_SIZE 16
#define MAX_COOKIES 64
#define MAX_IOV 256
#define STATE_READY 0x2
#define STATE_ACCEPTED 0x3
#define STATE_DONE 0x4
#define ACK_ENABLE 0x1
#define OP_BREAD 0x01
#define SLICE_ABSOLUTE 0xFF
#define NEED_MAP_WRITE UINT64_C(0x030) /* direct map, read and write */

static uint64_t be64(const uint8_t *p)
{
    uint64_t value;
    memcpy(&value, p, sizeof value);
    return __builtin_bswap64(value);
}

static uint32_t be32(const uint8_t *p)
{
    uint32_t value;
    memcpy(&value, p, sizeof value);
    return __builtin_bswap32(value);
}

static uint8_t load_state(const uint8_t *entry)
{
    return __atomic_load_n(entry, __ATOMIC_ACQUIRE);
}

static void store_state(uint8_t *entry, uint8_t state)
{
    __atomic_store_n(entry, state, __ATOMIC_RELEASE); /* after the payload it publishes */
}

/* Where a valid plain read goes: its byte offset in the file and its iovecs; -1 if Python must look. */
static int plan_read(const uint8_t *head, const uint8_t *cookie_bytes, uint32_t room, const struct ldc_peer_memory *memory,
                     const struct vdisk_disk *disk, uint64_t *file_offset, struct iovec *iov)
{
    uint8_t op = head[8], slice = head[9];
    uint64_t block = be64(head + 16), size = be64(head + 24);
    uint32_t ncookies = be32(head + 32);
    if (op != OP_BREAD || slice != SLICE_ABSOLUTE || ncookies > room || ncookies > MAX_COOKIES)
        return -1;
    if (disk->block_size == 0 || size == 0 || size % disk->block_size || size > disk->max_xfer)
        return -1;
    if (block > disk->length / disk->block_size)
        return -1;
    uint64_t offset = block * disk->block_size;
    if (size > disk->length - offset)
        return -1;
    struct ldc_cookie cookies[MAX_COOKIES];
    for (uint32_t i = 0; i < ncookies; i++) {
        cookies[i].addr = be64(cookie_bytes + i * COOKIE_SIZE);
        cookies[i].size = be64(cookie_bytes + i * COOKIE_SIZE + 8);
    }
    int niov = ldc_resolve(memory, cookies, ncookies, size, NEED_MAP_WRITE, iov, MAX_IOV);
    if (niov < 0)
        return -1;
    *file_offset = disk->start + offset;
    return niov;
}

int vdisk_serve_reads(uint8_t *ring, uint64_t ring_bytes, uint32_t count, uint32_t desc_size, uint32_t first,
                      uint32_t limit, const struct ldc_peer_memory *memory, const struct vdisk_disk *disk,
                      uint32_t *acks, struct vdisk_step *step)
{
    memset(step, 0, sizeof *step);
    if (desc_size < DESC_HEADER + REQUEST_HEAD || first >= count || (uint64_t)count * desc_size > ring_bytes)
        return -1;
    if (limit > count - first)
        limit = count - first;
    uint32_t room = (desc_size - DESC_HEADER - REQUEST_HEAD) / COOKIE_SIZE;
    step->stop = VDISK_STOP_LIMIT;
    for (uint32_t n = 0; n < limit; n++) {
        uint32_t index = first + n;
        uint8_t *entry = ring + (uint64_t)index * desc_size;
        if (load_state(entry) != STATE_READY) {
            step->stop = VDISK_STOP_NOT_READY;
            break;
        }
        /* Our own copy of everything the client wrote: it may change it at any time. */
        uint8_t head[REQUEST_HEAD];
        uint8_t cookie_bytes[MAX_COOKIES * COOKIE_SIZE];
        memcpy(head, entry + DESC_HEADER, REQUEST_HEAD);
        uint32_t copied = room < MAX_COOKIES ? room : MAX_COOKIES;
        memcpy(cookie_bytes, entry + DESC_HEADER + REQUEST_HEAD, (size_t)copied * COOKIE_SIZE);
        struct iovec iov[MAX_IOV];
        uint64_t offset;
        int niov = plan_read(head, cookie_bytes, copied, memory, disk, &offset, iov);
        if (niov < 0) {
            step->stop = VDISK_STOP_PYTHON;
            break;
        }
        store_state(entry, STATE_ACCEPTED);
        uint64_t size = be64(head + 24);
        ssize_t got = preadv2(disk->fd, iov, niov, (off_t)offset, RWF_NOWAIT);
        if (got < 0 || (uint64_t)got != size) {
            /* Not (all) in the page cache, or failing: the Python device reads it again
             * in its I/O thread (a read can be repeated) and reports any error. */
            store_state(entry, STATE_READY);
            step->stop = VDISK_STOP_BLOCKED;
            step->error = got < 0 ? errno : EAGAIN;
            break;
        }
        memset(head + 12, 0, 4); /* status 0; the rest as the client wrote it */
        memcpy(entry + DESC_HEADER, head, REQUEST_HEAD);
        if (load_state(entry) != STATE_ACCEPTED) {
            step->stop = VDISK_STOP_CHANGED;
            step->changed = index;
            break;
        }
        if (entry[1] & ACK_ENABLE)
            acks[step->nacks++] = index;
        store_state(entry, STATE_DONE);
        step->served++;
        step->nbytes += size;
    }
    return 0;
}
