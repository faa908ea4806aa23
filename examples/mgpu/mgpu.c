/* examples/mgpu: draw a picture through the example mediated GPU (GVT-g style).
 *
 *   mgpu                draw the scene below, check it, present it (a PNG)
 *   mgpu variant N      the same scene in other colours: N = 1 turns every
 *                       colour 0xRRGGBB into 0xGGBBRR (N = 0: as is)
 *   mgpu isolation      the device's isolation: GTT entries that point
 *                       outside this domain's RAM, not present, past the
 *                       GTT, or torn by a 2-byte store, each fail with
 *                       MGPU_E_GTT_FAULT while the rest of the batch runs;
 *                       bad commands get their own errors; "isolation ok"
 *
 * The display is a 320x240 XRGB8888 surface (pitch 1280) at graphics
 * address 0: 75 graphics pages whose GTT entries point at 75 guest pages in
 * a scattered order (graphics page i -> guest page (7 i + 5) mod 75), so a
 * device that ignored the GTT would draw garbage.  The scene, in order:
 *   1. a vertical gradient: one FILL per row
 *   2. a horizontal gradient band (rows 96..127): one FILL per column
 *   3. six rectangles
 *   4. a filled circle: one FILL per row of it
 *   5. a 32x32 sprite the CPU draws into a second surface (graphics page
 *      96), COPY'd onto the display at four places
 *   6. REMAP: the GTT entries of display pages 55..59 (rows 176..191) are
 *      rewritten (one 8-byte store each, no reload: the host tracks the GTT
 *      pages) to five guest pages the CPU filled with diagonal stripes; then
 *      a FILL, the sprite and a COPY of the stripes go through them
 *   7. CHECKSUM of the whole display against the CPU's CRC of it (read
 *      through our own GTT, row by row), then PRESENT
 * tests/kvm/mgpu_reference.py draws the same scene with Pillow.
 * Exit 0 if every command did what it should, else 1. */
#include <paravm.h>
#include <paravm/mgpu.h>

#define W           320
#define H           240
#define PITCH       (W * 4)
#define DISPLAY     0x00000u            /* graphics addresses */
#define DISPLAY_PAGES (PITCH * H / 4096)  /* 75 */
#define SPRITE      0x60000u            /* graphics page 96 */
#define SPRITE_DIM  32
#define SPRITE_PITCH (SPRITE_DIM * 4)
#define REMAP_FIRST 55                  /* display pages 55..59 = rows 176..191 */
#define REMAP_PAGES 5
#define REMAP_ROW   (REMAP_FIRST * 4096 / PITCH)
#define REMAP_ROWS  (REMAP_PAGES * 4096 / PITCH)
#define SLOTS       256

static struct mgpu gpu;
static int variant;
static int failed;
static uint32_t kicks, commands;

#define CHECK(cond) do { if (!(cond)) { printf("FAILED line %d: %s\n", __LINE__, #cond); \
                                         failed = 1; } } while (0)

static uint32_t pal(uint32_t c)
{
    c &= 0xFFFFFF;
    return variant == 1 ? ((c << 8) | (c >> 16)) & 0xFFFFFF : c;
}

/* The CPU's view of a graphics address: through our own GTT entry. */
static uint8_t *gfx_ptr(uint32_t addr)
{
    uint64_t e = gpu.gtt[addr >> 12];
    return (uint8_t *)(uintptr_t)((e & MGPU_GTT_ADDR_MASK) + (addr & 4095));
}

static uint32_t *gfx_pixel(uint32_t surface, uint32_t pitch, unsigned x, unsigned y)
{
    return (uint32_t *)gfx_ptr(surface + y * pitch + x * 4);
}

/* Wait for the completion interrupt of the doorbell just rung. */
static void wait_irq(void)
{
    uint64_t end = pv_clock_ns() + 2000000000ull;
    while (gpu.irqs < kicks && pv_clock_ns() < end)
        pv_wait(10000000);
    CHECK(gpu.irqs == kicks);
}

/* Ring the doorbell for everything queued; every command must succeed. */
static void flush(void)
{
    uint32_t n = gpu.tail - commands, seq0 = gpu.fence->seqno;
    if (!n)
        return;
    uint32_t err = mgpu_kick(&gpu);
    kicks++;
    CHECK(err == MGPU_E_OK);
    CHECK(gpu.fence->seqno - seq0 == n);
    for (uint32_t i = commands; i != gpu.tail; i++) {
        struct mgpu_cmd *c = mgpu_slot(&gpu, (int)(i & (SLOTS - 1)));
        if (c->status != MGPU_E_OK) {
            printf("command %u (op %u) failed: %u\n", i, c->op, c->status);
            failed = 1;
        }
    }
    commands = gpu.tail;
    wait_irq();
}

/* Queue one command, ringing the doorbell first when the ring is full. */
#define Q(call) do { if ((call) < 0) { flush(); CHECK((call) >= 0); } } while (0)

static unsigned isqrt(unsigned v)
{
    unsigned r = 0;
    while ((r + 1) * (r + 1) <= v)
        r++;
    return r;
}

static void set_up(void)
{
    int r = mgpu_init(&gpu, 1, SLOTS);
    if (r < 0) {
        printf("mgpu_init failed: %d\n", r);
        pv_exit(1);
    }
    const char *op = mgpu_opregion();
    printf("mgpu %08x version %u, MSI vector %#x, OpRegion %s\n", mgpu_reg(&gpu, MGPU_REG_ID),
           mgpu_reg(&gpu, MGPU_REG_VERSION), MGPU_VECTOR,
           !op ? "none" : memcmp(op, MGPU_OPREGION_SIGNATURE, 16) == 0 ? "signed" : "UNSIGNED");
    CHECK(mgpu_reg(&gpu, MGPU_REG_OPREGION) == (uint32_t)(uintptr_t)op);

    uint8_t *display = pv_page_alloc(DISPLAY_PAGES), *sprite = pv_page_alloc(1);
    if (!display || !sprite) {
        printf("out of pages\n");
        pv_exit(1);
    }
    for (uint32_t i = 0; i < DISPLAY_PAGES; i++)
        mgpu_gtt_map(&gpu, DISPLAY / 4096 + i,
                     (uint64_t)(uintptr_t)display + (7 * i + 5) % DISPLAY_PAGES * 4096, 1);
    mgpu_gtt_map(&gpu, SPRITE / 4096, (uint64_t)(uintptr_t)sprite, 1);
    mgpu_gtt_load(&gpu);
    CHECK(mgpu_reg(&gpu, MGPU_REG_STATUS) == (MGPU_STATUS_GTT_VALID | MGPU_STATUS_RING_VALID));
}

static void draw_sprite(void)
{
    for (unsigned y = 0; y < SPRITE_DIM; y++)
        for (unsigned x = 0; x < SPRITE_DIM; x++) {
            uint32_t c;
            if (x == 0 || y == 0 || x == SPRITE_DIM - 1 || y == SPRITE_DIM - 1)
                c = 0xFFFFFF;
            else if (x == y || x + y == SPRITE_DIM - 1)
                c = 0xFF0000;
            else
                c = ((x >> 2) ^ (y >> 2)) & 1 ? 0x8000FF : 0x00FFFF;
            *gfx_pixel(SPRITE, SPRITE_PITCH, x, y) = pal(c);
        }
}

static const struct { uint16_t x, y, w, h; uint32_t color; } rects[] = {
    {16, 24, 96, 56, 0xE04040}, {64, 56, 80, 64, 0x40C040}, {180, 140, 120, 40, 0x4060E0},
    {8, 150, 60, 80, 0xF0D020}, {300, 0, 20, 240, 0x202020}, {0, 232, 320, 8, 0xFFFFFF},
};
static const struct { uint16_t x, y; } sprites[] = {{8, 8}, {120, 100}, {200, 180}, {272, 120}};

static void draw_scene(void)
{
    for (unsigned y = 0; y < H; y++) {
        uint32_t r = y * 255 / (H - 1);
        Q(mgpu_fill(&gpu, DISPLAY, PITCH, 0, y, W, 1, pal(r << 16 | 40 << 8 | (255 - r))));
    }
    for (unsigned x = 0; x < W; x++) {
        uint32_t c = x * 255 / (W - 1);
        Q(mgpu_fill(&gpu, DISPLAY, PITCH, x, 96, 1, 32, pal((255 - c) << 16 | c << 8 | 64)));
    }
    for (unsigned i = 0; i < sizeof rects / sizeof rects[0]; i++)
        Q(mgpu_fill(&gpu, DISPLAY, PITCH, rects[i].x, rects[i].y, rects[i].w, rects[i].h,
                    pal(rects[i].color)));
    const int cx = 232, cy = 64, rad = 44;
    for (int dy = -rad; dy <= rad; dy++) {
        int half = (int)isqrt((unsigned)(rad * rad - dy * dy));
        Q(mgpu_fill(&gpu, DISPLAY, PITCH, cx - half, cy + dy, 2 * half + 1, 1, pal(0xFF8000)));
    }
    draw_sprite();
    for (unsigned i = 0; i < sizeof sprites / sizeof sprites[0]; i++)
        Q(mgpu_copy(&gpu, DISPLAY, PITCH, sprites[i].x, sprites[i].y, SPRITE_DIM, SPRITE_DIM,
                    SPRITE, SPRITE_PITCH, 0, 0));
    flush();
}

static uint32_t stripe(unsigned x, unsigned yy)
{
    return pal(((x + 2 * yy) >> 3) & 1 ? 0x00E0E0 : 0x303030);
}

/* Point display pages REMAP_FIRST.. at fresh guest pages with stripes in
 * them, one tracked 8-byte store per entry, and draw through them. */
static void remap(void)
{
    uint32_t *fresh = pv_page_alloc(REMAP_PAGES);
    if (!fresh) {
        printf("out of pages\n");
        pv_exit(1);
    }
    for (unsigned yy = 0; yy < REMAP_ROWS; yy++)
        for (unsigned x = 0; x < W; x++)
            fresh[yy * W + x] = stripe(x, yy);
    mgpu_gtt_map(&gpu, DISPLAY / 4096 + REMAP_FIRST, (uint64_t)(uintptr_t)fresh, REMAP_PAGES);
    Q(mgpu_fill(&gpu, DISPLAY, PITCH, 96, 180, 24, 8, pal(0xFFFFFF)));
    Q(mgpu_copy(&gpu, DISPLAY, PITCH, 144, 168, SPRITE_DIM, SPRITE_DIM, SPRITE, SPRITE_PITCH,
                0, 0));
    Q(mgpu_copy(&gpu, DISPLAY, PITCH, 248, 216, 64, REMAP_ROWS, DISPLAY, PITCH, 0, REMAP_ROW));
    flush();
    /* The FILL landed in the fresh pages, not in the ones they replaced. */
    CHECK(fresh[(180 - REMAP_ROW) * W + 96] == pal(0xFFFFFF));
    printf("remapped display rows %u..%u to guest pages at %#lx\n", REMAP_ROW,
           REMAP_ROW + REMAP_ROWS - 1, (unsigned long)(uintptr_t)fresh);
}

static uint32_t cpu_checksum(uint32_t surface, uint32_t pitch, unsigned w, unsigned h)
{
    uint32_t crc = 0;
    for (unsigned y = 0; y < h; y++)
        for (uint32_t off = surface + y * pitch, left = w * 4; left;) {
            uint32_t n = 4096 - (off & 4095);
            n = n < left ? n : left;
            crc = pv_crc32(crc, gfx_ptr(off), n);
            off += n;
            left -= n;
        }
    return crc;
}

static int draw(void)
{
    set_up();
    draw_scene();
    remap();
    int slot = mgpu_checksum(&gpu, DISPLAY, PITCH, 0, 0, W, H);
    CHECK(slot >= 0);
    Q(mgpu_present_surface(&gpu, DISPLAY, PITCH, W, H));
    flush();
    uint32_t dev = mgpu_slot(&gpu, slot)->result, cpu = cpu_checksum(DISPLAY, PITCH, W, H);
    printf("device checksum %08x, CPU checksum %08x: %s\n", dev, cpu,
           dev == cpu ? "checksum ok" : "checksum MISMATCH");
    if (dev != cpu)
        failed = 1;
    printf("%u commands in %u doorbells, %u completion interrupts (status %#x)\n", commands,
           kicks, gpu.irqs, gpu.irq_bits);
    CHECK(gpu.irq_bits == MGPU_IRQ_COMPLETE);
    printf("presented %ux%u%s\n", W, H, failed ? "; FAILED" : "");
    return failed;
}

/* --- isolation ------------------------------------------------------------- */
#define BAD_PAGE    100                 /* graphics pages for the tests */
#define ODD_PAGE    101
#define SMALL       16                  /* 16x16 surfaces, pitch 64: 1 KiB */

static struct { int slot; uint32_t want; } expect[32];
static unsigned nexpect;

static void want(int slot, uint32_t status)
{
    CHECK(slot >= 0 && nexpect < sizeof expect / sizeof expect[0]);
    expect[nexpect].slot = slot;
    expect[nexpect++].want = status;
}

/* Ring the doorbell for a batch with some failing commands: each command
 * its own status, the fence the first failure's, ERROR the last one's, the
 * error interrupt. */
static void run_expecting(const char *what)
{
    uint32_t first = MGPU_E_OK, last = MGPU_E_OK, bits0 = gpu.irq_bits;
    for (unsigned i = 0; i < nexpect; i++)
        if (expect[i].want != MGPU_E_OK) {
            first = first ? first : expect[i].want;
            last = expect[i].want;
        }
    gpu.irq_bits = 0;
    uint32_t err = mgpu_kick(&gpu);
    kicks++;
    commands = gpu.tail;
    int bad = err != first;
    for (unsigned i = 0; i < nexpect; i++)
        bad |= mgpu_slot(&gpu, expect[i].slot)->status != expect[i].want;
    wait_irq();
    uint32_t bits = gpu.irq_bits;
    bad |= bits != (MGPU_IRQ_COMPLETE | (first ? MGPU_IRQ_ERROR : 0));
    if (first) {
        bad |= mgpu_reg(&gpu, MGPU_REG_ERROR) != last;      /* the last failure's */
        bad |= !(mgpu_reg(&gpu, MGPU_REG_STATUS) & MGPU_STATUS_ERROR);
    }
    printf("%s: fence error %u, statuses", what, err);
    for (unsigned i = 0; i < nexpect; i++)
        printf(" %u", mgpu_slot(&gpu, expect[i].slot)->status);
    printf(", irq %#x: %s\n", bits, bad ? "WRONG" : "as expected");
    failed |= bad;
    gpu.irq_bits |= bits0;
    nexpect = 0;
}

/* A 2-byte store into a GTT entry: a torn entry the device must not use. */
static void store16(void *p, uint16_t v)
{
    __asm__ volatile("movw %1, %0" : "=m"(*(uint16_t *)p) : "r"(v) : "memory");
}

static void out_of_bounds(const char *what, uint32_t bad_addr, uint32_t marker)
{
    uint32_t bad_pitch = SMALL * 4;
    /* A marker the CPU checks: a COPY from a bad page must not write it. */
    want(mgpu_fill(&gpu, DISPLAY, PITCH, 0, 0, SMALL, SMALL, marker), MGPU_E_OK);
    want(mgpu_fill(&gpu, bad_addr, bad_pitch, 0, 0, SMALL, SMALL, 0xDEAD), MGPU_E_GTT_FAULT);
    want(mgpu_copy(&gpu, DISPLAY, PITCH, 0, 0, SMALL, SMALL, bad_addr, bad_pitch, 0, 0),
         MGPU_E_GTT_FAULT);
    want(mgpu_copy(&gpu, bad_addr, bad_pitch, 0, 0, SMALL, SMALL, DISPLAY, PITCH, 0, 0),
         MGPU_E_GTT_FAULT);
    want(mgpu_checksum(&gpu, bad_addr, bad_pitch, 0, 0, SMALL, SMALL), MGPU_E_GTT_FAULT);
    want(mgpu_present_surface(&gpu, bad_addr, bad_pitch, SMALL, SMALL), MGPU_E_GTT_FAULT);
    int sum = mgpu_checksum(&gpu, DISPLAY, PITCH, 0, 0, SMALL, SMALL);
    want(sum, MGPU_E_OK);
    run_expecting(what);
    uint32_t crc = 0;
    for (unsigned y = 0; y < SMALL; y++)
        crc = pv_crc32(crc, gfx_pixel(DISPLAY, PITCH, 0, y), SMALL * 4);
    CHECK(*gfx_pixel(DISPLAY, PITCH, SMALL - 1, SMALL - 1) == marker);
    CHECK(mgpu_slot(&gpu, sum)->result == crc);
}

static int isolation(void)
{
    const struct pv_boot_info *bi = pv_boot_info();
    set_up();
    Q(mgpu_fill(&gpu, DISPLAY, PITCH, 0, 0, W, H, 0x102030));
    flush();

    /* Entries the device must refuse: outside RAM (4 GiB, the first byte
     * past RAM, the device's own registers), not present, past the GTT. */
    static const char *names[] = {"gtt entry at 4 GiB", "gtt entry at ram_size",
                                  "gtt entry at the registers", "gtt entry not present"};
    uint64_t entries[] = {mgpu_gtt_entry(0x100000000ull), mgpu_gtt_entry(bi->ram_size),
                          mgpu_gtt_entry(MGPU_REGS_GPA),
                          mgpu_gtt_entry(bi->heap_start) & ~MGPU_GTT_PRESENT};
    for (unsigned i = 0; i < sizeof entries / sizeof entries[0]; i++) {
        mgpu_gtt_set(&gpu, BAD_PAGE, entries[i]);
        out_of_bounds(names[i], BAD_PAGE * 4096, 0x010101 * (i + 1));
    }
    out_of_bounds("graphics page past the GTT", gpu.gtt_pages * MGPU_GTT_ENTRIES_PER_PAGE * 4096,
                  0x0A0B0C);

    /* A 2-byte store tears the entry: the device marks it invalid until a
     * whole 8-byte store rewrites it. */
    uint32_t *page = pv_page_alloc(1);
    CHECK(page != 0);
    uint64_t entry = mgpu_gtt_entry((uint64_t)(uintptr_t)page);
    uint32_t odd = ODD_PAGE * 4096, pitch = SMALL * 4;
    mgpu_gtt_set(&gpu, ODD_PAGE, entry);
    want(mgpu_fill(&gpu, odd, pitch, 0, 0, SMALL, SMALL, 0xAAAAAA), MGPU_E_OK);
    run_expecting("8-byte entry");
    CHECK(page[0] == 0xAAAAAA && page[SMALL * SMALL - 1] == 0xAAAAAA);
    store16(&gpu.gtt[ODD_PAGE], (uint16_t)entry);      /* the same bits, torn */
    want(mgpu_fill(&gpu, DISPLAY, PITCH, 0, 0, 1, 1, 0x111111), MGPU_E_OK);
    want(mgpu_fill(&gpu, odd, pitch, 0, 0, SMALL, SMALL, 0xBBBBBB), MGPU_E_GTT_FAULT);
    want(mgpu_fill(&gpu, DISPLAY, PITCH, 1, 0, 1, 1, 0x222222), MGPU_E_OK);
    run_expecting("after a 2-byte store");
    CHECK(page[0] == 0xAAAAAA);
    mgpu_gtt_set(&gpu, ODD_PAGE, entry);
    want(mgpu_fill(&gpu, odd, pitch, 0, 0, SMALL, SMALL, 0xCCCCCC), MGPU_E_OK);
    run_expecting("rewritten with an 8-byte store");
    CHECK(page[0] == 0xCCCCCC);

    /* Bad commands: each its own error, the good one between them runs. */
    struct mgpu_cmd bad_op = {.op = 99};
    want(mgpu_submit(&gpu, &bad_op), MGPU_E_BAD_OP);
    want(mgpu_fill(&gpu, DISPLAY, PITCH, 0, 0, 0, 1, 0), MGPU_E_BAD_RECT);         /* w 0 */
    want(mgpu_fill(&gpu, DISPLAY, PITCH, 0, 0, 1, 0, 0), MGPU_E_BAD_RECT);         /* h 0 */
    want(mgpu_fill(&gpu, DISPLAY, 8, 0, 0, 3, 1, 0), MGPU_E_BAD_RECT);    /* row > pitch */
    want(mgpu_fill(&gpu, DISPLAY, PITCH + 2, 0, 0, 1, 1, 0), MGPU_E_BAD_RECT);  /* pitch % 4 */
    want(mgpu_fill(&gpu, DISPLAY, 4, 0, 4095, 1, 2, 0), MGPU_E_BAD_RECT);    /* y + h > 4096 */
    want(mgpu_fill(&gpu, DISPLAY, PITCH, 0, 0, 1, 1, 0x333333), MGPU_E_OK);
    run_expecting("bad commands");
    CHECK(*gfx_pixel(DISPLAY, PITCH, 0, 0) == 0x333333);

    printf("%u doorbells, %u interrupts\n", kicks, gpu.irqs);
    printf("isolation %s\n", failed ? "FAILED" : "ok");
    return failed;
}

int main(int argc, char **argv)
{
    if (!mgpu_present()) {
        printf("no mediated GPU in this domain (manifest: mgpu = { png = ... })\n");
        return 1;
    }
    if (argc > 1 && strcmp(argv[1], "isolation") == 0)
        return isolation() ? 1 : 0;
    if (argc > 2 && strcmp(argv[1], "variant") == 0)
        variant = (int)strtol(argv[2], 0, 10);
    else if (argc > 1) {
        printf("usage: mgpu [variant N | isolation]\n");
        return 1;
    }
    return draw() ? 1 : 0;
}
