/* debugcon: write a line byte by byte to port 0xE9; exit 0 if reading the
 * port answers 0xE9 (as QEMU's isa-debugcon does). */
#include <paravm.h>

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }

int main(int argc, char **argv)
{
    (void)argc, (void)argv;
    for (const char *s = "via debugcon\n"; *s; s++)
        outb(0xE9, (uint8_t)*s);
    return inb(0xE9) == 0xE9 ? 0 : 1;
}
