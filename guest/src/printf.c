/* printf family: %d %i %u %x %X %o %p %s %c %%, flags '-' '0' '+' ' ' '#',
 * width, precision, and the h/hh/l/ll/z/j/t length modifiers.
 * printf() formats into a buffer and writes it with one hypercall. */
#include "paravm.h"

struct out {
    char *buf;
    size_t size, len;
};

static void put(struct out *o, char c)
{
    if (o->len + 1 < o->size)
        o->buf[o->len] = c;
    o->len++;
}

static void put_padded(struct out *o, const char *s, size_t n, int width, int left, char pad,
                       const char *prefix)
{
    size_t plen = strlen(prefix);
    int fill = width > (int)(n + plen) ? width - (int)(n + plen) : 0;
    if (!left && pad == ' ')
        while (fill-- > 0) put(o, ' ');
    while (*prefix) put(o, *prefix++);
    if (!left && pad == '0')
        while (fill-- > 0) put(o, '0');
    for (size_t i = 0; i < n; i++) put(o, s[i]);
    if (left)
        while (fill-- > 0) put(o, ' ');
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct out o = {buf, size, 0};
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            put(&o, *fmt);
            continue;
        }
        int left = 0, plus = 0, space = 0, alt = 0, width = 0, prec = -1, lng = 0;
        char pad = ' ';
        for (;; fmt++) {
            if (fmt[1] == '-') left = 1;
            else if (fmt[1] == '0') pad = '0';
            else if (fmt[1] == '+') plus = 1;
            else if (fmt[1] == ' ') space = 1;
            else if (fmt[1] == '#') alt = 1;
            else break;
        }
        fmt++;
        if (*fmt == '*') { width = va_arg(ap, int); fmt++; }
        else while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
        if (*fmt == '.') {
            fmt++;
            prec = 0;
            if (*fmt == '*') { prec = va_arg(ap, int); fmt++; }
            else while (*fmt >= '0' && *fmt <= '9') prec = prec * 10 + (*fmt++ - '0');
        }
        for (;; fmt++) {
            if (*fmt == 'l' || *fmt == 'z' || *fmt == 'j' || *fmt == 't') lng++;
            else if (*fmt == 'h') continue;
            else break;
        }
        if (left) pad = ' ';
        char tmp[24];
        char *p = tmp + sizeof(tmp);
        switch (*fmt) {
        case 'd': case 'i': {
            long long v = lng ? va_arg(ap, long long) : va_arg(ap, int);
            unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
            do { *--p = (char)('0' + u % 10); u /= 10; } while (u);
            put_padded(&o, p, (size_t)(tmp + sizeof(tmp) - p), width, left, pad,
                       v < 0 ? "-" : plus ? "+" : space ? " " : "");
            break;
        }
        case 'u': case 'x': case 'X': case 'o': case 'p': {
            unsigned long long u;
            unsigned base = *fmt == 'u' ? 10 : *fmt == 'o' ? 8 : 16;
            const char *digits = *fmt == 'X' ? "0123456789ABCDEF" : "0123456789abcdef";
            if (*fmt == 'p') u = (unsigned long long)(uintptr_t)va_arg(ap, void *);
            else u = lng ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned);
            unsigned long long u0 = u;
            do { *--p = digits[u % base]; u /= base; } while (u);
            put_padded(&o, p, (size_t)(tmp + sizeof(tmp) - p), width, left, pad,
                       *fmt == 'p' || (alt && *fmt == 'x' && u0) ? "0x"
                       : (alt && *fmt == 'X' && u0) ? "0X" : (alt && *fmt == 'o' && u0) ? "0" : "");
            break;
        }
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s) s = "(null)";
            size_t n = 0;
            while (s[n] && (prec < 0 || n < (size_t)prec)) n++;
            put_padded(&o, s, n, width, left, ' ', "");
            break;
        }
        case 'c': {
            char c = (char)va_arg(ap, int);
            put_padded(&o, &c, 1, width, left, ' ', "");
            break;
        }
        case '%':
            put(&o, '%');
            break;
        case '\0':
            fmt--;
            break;
        default:
            put(&o, '%');
            put(&o, *fmt);
        }
    }
    if (size)
        buf[o.len < size ? o.len : size - 1] = '\0';
    return (int)o.len;
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
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    size_t len = n < (int)sizeof(buf) ? (size_t)n : sizeof(buf) - 1;
    pv_console_write(buf, len);
    return n;
}

int puts(const char *s)
{
    size_t n = strlen(s);
    pv_console_write(s, n);
    pv_console_write("\n", 1);
    return 0;
}
