/* printf: the same formats through the SDK's snprintf/printf (as a paravm
 * guest) and through the host's libc (built with -DHOST); the test compares
 * the two outputs line by line. */
#ifdef HOST
#include <stdio.h>
#include <string.h>
#define OUT(...) printf(__VA_ARGS__)
#else
#include <paravm.h>
#define OUT(...) printf(__VA_ARGS__)
#endif

#pragma GCC diagnostic ignored "-Wformat"
#define CASE(...) do { char b[128]; int n = snprintf(b, sizeof b, __VA_ARGS__); \
                       OUT("%d|%s|\n", n, b); } while (0)

int main(int argc, char **argv)
{
    (void)argc, (void)argv;
    CASE("%d %i %u", 0, -42, 42u);
    CASE("%d %d", 2147483647, -2147483647 - 1);
    CASE("%ld %lld %lu", -9000000000L, -1LL, 18446744073709551615UL);
    CASE("%zu %zd %jd %td", (size_t)7, (long)-7, (long)8, (long)-8);
    CASE("%x %X %o %#x %#X %#o %#x %#o", 255u, 255u, 8u, 255u, 255u, 8u, 0u, 0u);
    CASE("%hhx %hhd %hx %hd %hhu", 0x1ff, 0xff, 0x1ffff, 0xffff, 300);
    CASE("[%5d] [%-5d] [%05d] [%+d] [% d] [%+5d] [%-+5d]", 42, 42, 42, 42, 42, 42, 42);
    CASE("[%.3d] [%.0d] [%5.3d] [%-5.3d|] [%05.3d] [%.3x] [%#.3x]", 5, 0, 5, 5, 5, 10u, 10u);
    CASE("[%#.0o] [%#o] [%#.0x] [%#5.0o]", 0u, 0u, 0u, 0u);
    CASE("[%*d] [%*d] [%-*d] [%.*d]", 4, 7, -4, 7, 4, 7, 3, 7);
    CASE("[%s] [%.2s] [%5s] [%-5s] [%.*s] [%c] [%3c] [%-3c]", "abc", "abc", "ab", "ab", 1, "xyz",
         'q', 'r', 's');
    CASE("%p %p", (void *)0x1000, (void *)0xdeadbeefUL);
    CASE("100%%");
    CASE("%ld", (long)(-9223372036854775807L - 1));
    {
        char small[6];
        int n = snprintf(small, sizeof small, "%s", "truncated");
        OUT("%d|%s|\n", n, small);
    }
    char big[3001];
    memset(big, 'z', 3000);
    big[3000] = 0;
    int n = OUT("%s\n", big);
    OUT("long=%d\n", n);
    return 0;
}
