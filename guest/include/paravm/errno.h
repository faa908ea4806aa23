/*
 * The Linux errno values paravm's calls return, negated (-PV_EINVAL ...):
 * the VMM's hypercalls and the SDK's libraries alike.  Freestanding (no
 * other header), so the IVC library can build on the host with it.
 */
#ifndef PARAVM_ERRNO_H
#define PARAVM_ERRNO_H

#define PV_EPERM           1
#define PV_ENOENT          2
#define PV_ESRCH           3
#define PV_EIO             5
#define PV_E2BIG           7
#define PV_EAGAIN         11
#define PV_ENOMEM         12
#define PV_EACCES         13
#define PV_EFAULT         14
#define PV_EBUSY          16
#define PV_ENODEV         19
#define PV_EINVAL         22
#define PV_ENOSPC         28
#define PV_EPIPE          32
#define PV_ENOSYS         38
#define PV_ECONNRESET    104
#define PV_ETIMEDOUT     110

#endif
