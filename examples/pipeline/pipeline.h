/* The pipeline example's two layouts (little endian), shared by the guests
 * (pipeline.c) and the host program (host.py, which declares the same
 * offsets with struct).
 *
 * 1. An IVC frame from reader to hasher: a 64-byte header, then up to
 *    PIPE_CHUNK bytes of the input.  The queue's frame_size is
 *    PIPE_FRAME_SIZE.  Frames carry the stream in order: DATA frames with
 *    seq 0, 1, 2, ... and offset = the bytes before them; then one END frame
 *    (len 0) whose total is the input's size, or one ERROR frame whose len is
 *    the reader's negative errno.
 *
 * 2. The result page the hasher grants to the host (domain 0): progress while
 *    streaming (bytes), then the digests and state DONE (or FAILED with an
 *    error), published before the event is sent.  The host writes only
 *    host_done, when it has read the result (then it unmaps the grant).
 */
#ifndef PIPELINE_H
#define PIPELINE_H
#include <stdint.h>

#define PIPE_FRAME_MAGIC   0x454d5246u   /* "FRME" */
#define PIPE_CHUNK         262144u       /* 4 lguest block requests of 16 pages */
#define PIPE_HDR_SIZE      64u
#define PIPE_FRAME_SIZE    (PIPE_HDR_SIZE + PIPE_CHUNK)

#define PIPE_DATA   1u
#define PIPE_END    2u
#define PIPE_ERROR  3u

struct pipe_frame {
    uint32_t magic;
    uint32_t kind;       /* PIPE_DATA, PIPE_END, PIPE_ERROR */
    uint32_t len;        /* DATA: payload bytes (1..PIPE_CHUNK); ERROR: -errno */
    uint32_t seq;        /* frame number, from 0 */
    uint64_t offset;     /* DATA: stream offset of the payload */
    uint64_t total;      /* the input's size in bytes (the disk's exact size) */
    uint8_t pad[PIPE_HDR_SIZE - 32];
};
_Static_assert(sizeof(struct pipe_frame) == PIPE_HDR_SIZE, "frame header");

#define PIPE_RESULT_MAGIC  0x45504950u   /* "PIPE" */
#define PIPE_STREAMING 0u
#define PIPE_DONE      1u
#define PIPE_FAILED    2u

/* Hasher errors (result.error) beyond negative errnos. */
#define PIPE_EPROTO   (-71)   /* a frame broke the stream rules (EPROTO) */

struct pipe_result {
    uint32_t magic;          /*  0 */
    uint32_t state;          /*  4: STREAMING, DONE, FAILED */
    uint64_t bytes;          /*  8: bytes hashed so far; all of them when DONE */
    uint64_t total;          /* 16: the size the reader announced */
    uint32_t crc32;          /* 24: zlib.crc32 of the stream */
    int32_t error;           /* 28: FAILED: a negative errno or PIPE_EPROTO */
    uint8_t sha256[32];      /* 32 */
    uint64_t stream_ns;      /* 64: first frame taken -> last frame hashed */
    char impl[16];           /* 72: the SHA-256 code used ("sha-ni", "generic") */
    uint32_t host_done;      /* 88: written by the host once it has the result */
};
_Static_assert(sizeof(struct pipe_result) == 96, "result page layout");

#endif
