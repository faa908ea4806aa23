/* printf family: %d %i %u %x %X %o %p %s %c %%; flags '-' '0' '+' ' ' '#';
 * width and precision (also as '*', a negative '*' width left-justifies);
 * length modifiers hh h l ll z j t.  As C99 7.19.6.1 for these.
 * printf() formats into a 1 KiB buffer and writes it with one hypercall per
 * buffer-full, so output of any length comes out whole. */
#include "paravm.h"

struct out {
    char *buf;
    size_t size, len;   /* len: bytes in buf now */
    size_t total;       /* bytes produced in all */
    int flush;          /* 1: write full buffers to the console (printf) */
};

static void put(struct out *o, char c)
{
    if (o->len + 1 >= o->size && o->flush) {
        pv_console_write(o->buf, o->len);
        o->len = 0;
    }
    if (o->len + 1 < o->size)
        o->buf[o->len++] = c;
    o->total++;
}

static void pad(struct out *o, char c, int n)
{
    while (n-- > 0)
        put(o, c);
}

/* prefix, then zeros up to prec digits, then the digits, within width. */
static void put_field(struct out *o, const char *digits, int ndigits, int prec, int width,
                      int left, int zero, const char *prefix)
{
    int plen = (int)strlen(prefix);
    int zeros = prec > ndigits ? prec - ndigits : 0;
    int body = plen + zeros + ndigits;
    int fill = width > body ? width - body : 0;
    if (!left && !zero)
        pad(o, ' ', fill);
    while (*prefix)
        put(o, *prefix++);
    if (!left && zero)
        pad(o, '0', fill);
    pad(o, '0', zeros);
    for (int i = 0; i < ndigits; i++)
        put(o, digits[i]);
    if (left)
        pad(o, ' ', fill);
}

static void format(struct out *o, const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            put(o, *fmt);
            continue;
        }
        int left = 0, plus = 0, space = 0, alt = 0, zero = 0, width = 0, prec = -1, size = 0;
        for (;; fmt++) {
            if (fmt[1] == '-') left = 1;
            else if (fmt[1] == '0') zero = 1;
            else if (fmt[1] == '+') plus = 1;
            else if (fmt[1] == ' ') space = 1;
            else if (fmt[1] == '#') alt = 1;
            else break;
        }
        fmt++;
        if (*fmt == '*') {
            width = va_arg(ap, int);
            if (width < 0) {
                left = 1;
                width = -width;
            }
            fmt++;
        } else {
            while (*fmt >= '0' && *fmt <= '9')
                width = width * 10 + (*fmt++ - '0');
        }
        if (*fmt == '.') {
            fmt++;
            prec = 0;
            if (*fmt == '*') {
                prec = va_arg(ap, int);
                fmt++;
            } else {
                while (*fmt >= '0' && *fmt <= '9')
                    prec = prec * 10 + (*fmt++ - '0');
            }
        }
        for (;; fmt++) {   /* size: -2 hh, -1 h, 0 int, 1 long and wider */
            if (*fmt == 'h') size = size < 0 ? -2 : -1;
            else if (*fmt == 'l' || *fmt == 'z' || *fmt == 'j' || *fmt == 't') size = 1;
            else break;
        }
        if (left || prec >= 0)
            zero = 0;   /* '-' and an integer precision override '0' */
        char tmp[24];
        char *end = tmp + sizeof(tmp), *p = end;
        switch (*fmt) {
        case 'd': case 'i': {
            long long v = size > 0 ? va_arg(ap, long long) : va_arg(ap, int);
            if (size == -1) v = (short)v;
            if (size == -2) v = (signed char)v;
            unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
            while (u) { *--p = (char)('0' + u % 10); u /= 10; }
            if (p == end && prec != 0) *--p = '0';
            put_field(o, p, (int)(end - p), prec, width, left, zero,
                      v < 0 ? "-" : plus ? "+" : space ? " " : "");
            break;
        }
        case 'u': case 'x': case 'X': case 'o': case 'p': {
            unsigned long long u;
            unsigned base = *fmt == 'u' ? 10 : *fmt == 'o' ? 8 : 16;
            const char *digits = *fmt == 'X' ? "0123456789ABCDEF" : "0123456789abcdef";
            if (*fmt == 'p') {
                u = (unsigned long long)(uintptr_t)va_arg(ap, void *);
            } else {
                u = size > 0 ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned);
                if (size == -1) u = (unsigned short)u;
                if (size == -2) u = (unsigned char)u;
            }
            unsigned long long u0 = u;
            while (u) { *--p = digits[u % base]; u /= base; }
            if (p == end && prec != 0) *--p = '0';
            const char *prefix = "";
            if (*fmt == 'p') prefix = "0x";
            else if (alt && u0 && *fmt == 'x') prefix = "0x";
            else if (alt && u0 && *fmt == 'X') prefix = "0X";
            else if (alt && *fmt == 'o' && (p == end || *p != '0')) prefix = "0";
            put_field(o, p, (int)(end - p), prec, width, left, zero, prefix);
            break;
        }
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s) s = "(null)";
            int n = 0;
            while (s[n] && (prec < 0 || n < prec)) n++;
            put_field(o, s, n, -1, width, left, 0, "");
            break;
        }
        case 'c': {
            char c = (char)va_arg(ap, int);
            put_field(o, &c, 1, -1, width, left, 0, "");
            break;
        }
        case '%':
            put(o, '%');
            break;
        case '\0':
            fmt--;
            break;
        default:
            put(o, '%');
            put(o, *fmt);
        }
    }
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct out o = {buf, size, 0, 0, 0};
    format(&o, fmt, ap);
    if (size)
        buf[o.len] = '\0';
    return (int)o.total;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

int printf(const char *fmt, ...)
{
    char buf[1024];
    struct out o = {buf, sizeof(buf), 0, 0, 1};
    va_list ap;
    va_start(ap, fmt);
    format(&o, fmt, ap);
    va_end(ap);
    if (o.len)
        pv_console_write(buf, o.len);
    return (int)o.total;
}

int puts(const char *s)
{
    char buf[1024];
    size_t n = strlen(s);
    if (n < sizeof(buf)) {   /* one write: the line cannot be split by another vCPU */
        memcpy(buf, s, n);
        buf[n] = '\n';
        pv_console_write(buf, n + 1);
    } else {
        pv_console_write(s, n);
        pv_console_write("\n", 1);
    }
    return 0;
}
