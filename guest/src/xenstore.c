/* xenstore client: see paravm/xenstore.h. */
#include <paravm.h>
#include <paravm/xenstore.h>


long xs_read(const char *path, char *buf, size_t len)
{
    if (!len)
        return -PV_EINVAL;
    long n = pv_hypercall6(PV_HC_XENSTORE_OP, XS_OP_READ, (uint64_t)path, strlen(path),
                           (uint64_t)buf, len - 1, 0);
    if (n >= 0)
        buf[(size_t)n < len - 1 ? (size_t)n : len - 1] = 0;
    return n;
}

long xs_write(const char *path, const char *value, unsigned reader_domid)
{
    return pv_hypercall6(PV_HC_XENSTORE_OP, XS_OP_WRITE, (uint64_t)path, strlen(path),
                         (uint64_t)value, strlen(value), reader_domid);
}

long xs_rm(const char *path)
{
    return pv_hypercall6(PV_HC_XENSTORE_OP, XS_OP_RM, (uint64_t)path, strlen(path), 0, 0, 0);
}

long xs_wait_read(const char *path, char *buf, size_t len, uint64_t timeout_ns)
{
    uint64_t deadline = pv_clock_ns() + timeout_ns;
    for (;;) {
        long n = xs_read(path, buf, len);
        if (n != -PV_ENOENT)
            return n;
        if (pv_clock_ns() >= deadline)
            return -PV_ETIMEDOUT;
        pv_wait(1000000);
    }
}

long xs_read_uint(const char *path, unsigned long *out)
{
    char buf[24];
    long n = xs_read(path, buf, sizeof buf);
    if (n < 0)
        return n;
    char *end;
    long v = strtol(buf, &end, 10);
    if (end == buf || *end || v < 0)
        return -PV_EINVAL;
    *out = (unsigned long)v;
    return 0;
}
