/*
 * What Xen's public/xen.h gives every other Xen header: domain ids.
 */
#ifndef PARAVM_XEN_XEN_H
#define PARAVM_XEN_XEN_H

#include <stdint.h>

typedef uint16_t domid_t;

#define DOMID_FIRST_RESERVED 0x7FF0
#define DOMID_SELF           0x7FF0   /* "the calling domain" */
#define DOMID_IO             0x7FF1
#define DOMID_INVALID        0x7FF4

#endif
