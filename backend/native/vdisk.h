/* The vds walk step for cached reads: serve READY BREAD descriptors of a
 * client's ring straight from the page cache into the client's pages.
 *
 * Only the plain case is served here: BREAD, absolute slice, a size and
 * offset inside the export, cookies that map directly, and data the page cache
 * holds (preadv2 with RWF_NOWAIT). At the first entry that is anything else
 * the step stops and leaves that entry READY for the Python device, which
 * answers errors, other operations and reads that must wait for the disk.
 */
#ifndef VDISK_H
#define VDISK_H

#include <stdint.h>

#include "ldc.h"

struct vdisk_disk {
    int fd;
    uint64_t start;      /* byte offset of the export window in the file */
    uint64_t length;     /* bytes in the window */
    uint32_t block_size; /* the unit of a descriptor's offset */
    uint64_t max_xfer;   /* largest transfer in bytes */
};

/* Why a step stopped. */
enum {
    VDISK_STOP_LIMIT = 0,     /* served all it was allowed to */
    VDISK_STOP_NOT_READY = 1, /* the next entry is not READY: the walk is at its end */
    VDISK_STOP_PYTHON = 2,    /* the next entry needs the Python device (left READY) */
    VDISK_STOP_BLOCKED = 3,   /* the next read is not all in the page cache (left READY; errno in `error`) */
    VDISK_STOP_CHANGED = 4,   /* the client changed an entry's state while we served it */
};

struct vdisk_step {
    uint32_t served; /* entries from `first` that are now DONE */
    uint32_t nacks;  /* entries of those that asked for an ACK, in acks[] */
    int32_t stop;    /* VDISK_STOP_* */
    int32_t error;   /* errno of a failed read (VDISK_STOP_BLOCKED) */
    uint32_t changed; /* the entry that changed state (VDISK_STOP_CHANGED) */
    uint64_t nbytes;  /* bytes read for the served entries */
};

/* Serve up to `limit` entries from `first` of a ring of `count` entries of
 * `desc_size` bytes at `ring` (`ring_bytes` long); never past the ring's end.
 * `acks` has room for `limit` indices. Returns 0, or -1 for arguments that do
 * not describe a ring (nothing touched). */
int vdisk_serve_reads(uint8_t *ring, uint64_t ring_bytes, uint32_t count, uint32_t desc_size, uint32_t first,
                      uint32_t limit, const struct ldc_peer_memory *memory, const struct vdisk_disk *disk,
                      uint32_t *acks, struct vdisk_step *step);

#endif
