/* grant: one end of the grant table tests (tests/kvm/test_grant.py).
 *
 *   grant granter PEER   grant page P0 (rw, ref 8) and P1 (ro, ref 9) to PEER,
 *                        then follow the script below with a "mapper"; exit 0
 *   grant mapper PEER    map PEER's refs 8 (rw) and 9 (ro), read, write, copy
 *   grant hostile        XTF-style calls against itself; prints NAME=VALUE
 *                        lines, then "hostile done"; exit 0
 *   grant full           grant until the table is full; prints NAME=VALUE
 *   grant survivor PEER  grant P0 to PEER (ref 8); once the mapper has written
 *                        its mark, end_foreign_access until it succeeds
 *   grant crasher PEER   map PEER's ref 8, write the mark, then fault
 *   grant host           grant P0 to domain 0; wait for the host's mark; show
 *                        end_foreign_access busy; wait until it succeeds
 *   grant noxen          gnttab_init() without Xen services
 *   grant exiter PEER    grant P0 to PEER (ref 8), exit once the mapper's mark is there
 *   grant zombie PEER    map PEER's ref 8; probe with second maps until the granter
 *                        is gone (a status), then until a new instance of it answers;
 *                        the first mapping must keep the old page throughout
 *   grant idle           gnttab_init(), print "idle", wait forever
 *
 * Granter/mapper script; the shared words live in P0 (mapped by both):
 *   granter: fill P0/P1, grant, print "granted 8 9"
 *   mapper:  map both, check the bytes, write a greeting, B_STATE = 1
 *   granter: sees the greeting, end_foreign_access = -EBUSY on both, A_STATE = 1
 *   mapper:  writes through the ro mapping (discarded), copies, B_STATE = 2, unmaps
 *   granter: checks P1 unchanged and the copied bytes, end_foreign_access until 0
 */
#include <paravm.h>
#include <paravm/gnttab.h>

#define B_STATE 0          /* u32 offsets in P0 */
#define A_STATE 64
#define GREETING 2048
#define COPIED 3000

static uint8_t pages[4][4096] __attribute__((aligned(4096)));

#define CHECK(cond) do { if (!(cond)) { printf("FAILED line %d: %s\n", __LINE__, #cond); \
                                         return 10; } } while (0)

static volatile uint32_t *word(void *page, unsigned off)
{
    return (volatile uint32_t *)((uint8_t *)page + off);
}

/* Poll *w until it equals v: 1, or 0 after ~20 s. */
static int wait_word(volatile uint32_t *w, uint32_t v)
{
    for (int i = 0; i < 20000; i++) {
        if (__atomic_load_n(w, __ATOMIC_ACQUIRE) == v)
            return 1;
        pv_wait(1000000);
    }
    return 0;
}

/* end_foreign_access until it succeeds: 0, or the last error after ~20 s. */
static int revoke(grant_ref_t ref)
{
    int r = -PV_EBUSY;
    for (int i = 0; i < 20000 && r == -PV_EBUSY; i++) {
        r = gnttab_end_foreign_access_ref(ref);
        if (r == -PV_EBUSY)
            pv_wait(1000000);
    }
    return r;
}

static void fill(uint8_t *p, uint8_t seed)
{
    for (int i = 0; i < 4096; i++)
        p[i] = (uint8_t)(seed + i * 7);
}

static int check(const volatile uint8_t *p, uint8_t seed, int from, int to)
{
    for (int i = from; i < to; i++)
        if (p[i] != (uint8_t)(seed + i * 7))
            return 0;
    return 1;
}

static int granter(domid_t peer)
{
    CHECK(gnttab_init() == 0);
    fill(pages[0], 0x10);
    fill(pages[1], 0x20);
    *word(pages[0], B_STATE) = 0;
    *word(pages[0], A_STATE) = 0;
    int r0 = gnttab_grant_foreign_access(peer, virt_to_gfn(pages[0]), 0);
    int r1 = gnttab_grant_foreign_access(peer, virt_to_gfn(pages[1]), 1);
    CHECK(gnttab_query_foreign_access((grant_ref_t)r0) == 0);
    printf("granted %d %d\n", r0, r1);

    CHECK(wait_word(word(pages[0], B_STATE), 1));
    CHECK(!memcmp(pages[0] + GREETING, "hello from B", 13));
    printf("in use: %#x %#x\n", gnttab_query_foreign_access((grant_ref_t)r0),
           gnttab_query_foreign_access((grant_ref_t)r1));
    printf("busy: %d %d\n", gnttab_end_foreign_access_ref((grant_ref_t)r0),
           gnttab_end_foreign_access_ref((grant_ref_t)r1));
    CHECK(gnttab_free_grant_reference((grant_ref_t)r0) == -PV_EBUSY);   /* still valid */
    __atomic_store_n(word(pages[0], A_STATE), 1, __ATOMIC_RELEASE);

    CHECK(wait_word(word(pages[0], B_STATE), 2));
    printf("ro page intact: %d\n", check(pages[1], 0x20, 0, 4096));
    printf("copied in: '%s'\n", (const char *)pages[0] + COPIED);
    int e0 = revoke((grant_ref_t)r0), e1 = revoke((grant_ref_t)r1);
    printf("revoked: %d %d, flags %#x %#x\n", e0, e1, gnttab_shared()[r0].flags,
           gnttab_shared()[r1].flags);
    CHECK(gnttab_free_grant_reference((grant_ref_t)r0) == 0);
    CHECK(gnttab_free_grant_reference((grant_ref_t)r0) == -PV_EINVAL);
    CHECK(gnttab_grant_foreign_access(peer, virt_to_gfn(pages[2]), 0) == r0);   /* reused */
    return 0;
}

static int mapper(domid_t peer)
{
    CHECK(gnttab_init() == 0);
    const struct pv_boot_info *bi = pv_boot_info();
    void *p0, *p1;
    grant_handle_t h0, h1;
    CHECK(gnttab_map_grant_ref(peer, 8, 0, &p0, &h0) == GNTST_okay);
    CHECK(gnttab_map_grant_ref(peer, 9, 1, &p1, &h1) == GNTST_okay);
    printf("mapped at %#lx %#lx (windows %#lx %#lx)\n", (unsigned long)(uintptr_t)p0,
           (unsigned long)(uintptr_t)p1, (unsigned long)bi->grant_window,
           (unsigned long)bi->grant_window_ro);
    CHECK((uintptr_t)p0 == bi->grant_window && (uintptr_t)p1 == bi->grant_window_ro);
    /* A's bytes, past the shared words */
    printf("reads: %d %d\n", check(p0, 0x10, 128, GREETING), check(p1, 0x20, 0, 4096));
    /* a writable map of the read-only grant is refused */
    void *p2;
    grant_handle_t h2;
    printf("rw map of ro grant: %d\n", gnttab_map_grant_ref(peer, 9, 0, &p2, &h2));

    memcpy((uint8_t *)p0 + GREETING, "hello from B", 13);
    __atomic_store_n(word(p0, B_STATE), 1, __ATOMIC_RELEASE);
    CHECK(wait_word(word(p0, A_STATE), 1));

    /* Writes through the read-only mapping exit and are dropped. */
    volatile uint8_t *ro = p1;
    for (int i = 0; i < 64; i++)
        ro[i] = 0xEE;
    *(volatile uint64_t *)(ro + 512) = ~0ull;
    printf("ro write discarded: %d\n", check(ro, 0x20, 0, 4096));

    /* Copies: out of the ro grant, into the rw grant, into the ro grant (refused),
     * a ref past the table, a frame of A by number. */
    static char local[64] __attribute__((aligned(64))) = "copied by B";
    struct gnttab_copy ops[5] = {
        { .source = { .u.ref = 9, .domid = peer, .offset = 100 },
          .dest = { .u.gmfn = virt_to_gfn(pages[3]), .domid = DOMID_SELF, .offset = 8 },
          .len = 200, .flags = GNTCOPY_source_gref },
        { .source = { .u.gmfn = virt_to_gfn(local), .domid = DOMID_SELF,
                      .offset = (uint16_t)((uintptr_t)local & 4095) },
          .dest = { .u.ref = 8, .domid = peer, .offset = COPIED },
          .len = 12, .flags = GNTCOPY_dest_gref },
        { .source = { .u.gmfn = virt_to_gfn(local), .domid = DOMID_SELF },
          .dest = { .u.ref = 9, .domid = peer }, .len = 4, .flags = GNTCOPY_dest_gref },
        { .source = { .u.ref = 1u << 20, .domid = peer },
          .dest = { .u.gmfn = virt_to_gfn(pages[3]), .domid = DOMID_SELF },
          .len = 4, .flags = GNTCOPY_source_gref },
        { .source = { .u.gmfn = 0x200, .domid = peer },
          .dest = { .u.gmfn = virt_to_gfn(pages[3]), .domid = DOMID_SELF }, .len = 4 },
    };
    CHECK(gnttab_copy(ops, 5) == 0);
    printf("copy: %d %d %d %d %d, bytes %d\n", ops[0].status, ops[1].status, ops[2].status,
           ops[3].status, ops[4].status, check(pages[3] + 8 - 100, 0x20, 100, 300));

    __atomic_store_n(word(p0, B_STATE), 2, __ATOMIC_RELEASE);
    int u0 = gnttab_unmap_grant_ref(p0, h0), u1 = gnttab_unmap_grant_ref(p1, h1);
    int again = gnttab_unmap_grant_ref(p0, h0);
    printf("unmap: %d %d, again %d\n", u0, u1, again);
    return 0;
}

static void show(const char *name, long v) { printf("%s=%ld\n", name, v); }

static int map_one(struct gnttab_map_grant_ref *op, uint64_t addr, uint32_t flags,
                   grant_ref_t ref, domid_t dom)
{
    gnttab_set_map_op(op, addr, flags, ref, dom);
    long rc = HYPERVISOR_grant_table_op(GNTTABOP_map_grant_ref, op, 1);
    return rc ? (int)rc : op->status;
}

/* XTF-style: every call against this domain's own table (the self-grant trick:
 * grant to your own domid, then map it). */
static int hostile(void)
{
    CHECK(gnttab_init() == 0);
    const struct pv_boot_info *bi = pv_boot_info();
    domid_t me = (domid_t)bi->domid;
    struct gnttab_query_size q = { .dom = DOMID_SELF };
    CHECK(HYPERVISOR_grant_table_op(GNTTABOP_query_size, &q, 1) == 0);
    show("frames", q.nr_frames);
    show("max_frames", q.max_nr_frames);

    fill(pages[0], 0x30);
    int ref = gnttab_grant_foreign_access(me, virt_to_gfn(pages[0]), 0);
    show("self_ref", ref);
    struct gnttab_map_grant_ref op;
    void *claimed[2];               /* window pages 0 and 1, kept from the allocator */
    CHECK(gnttab_alloc_pages(2, claimed, 0) == 0);
    uint64_t win = (uintptr_t)claimed[0];
    CHECK(win == bi->grant_window && (uintptr_t)claimed[1] == win + 4096);
    show("self_map", map_one(&op, win, GNTMAP_host_map, (grant_ref_t)ref, me));
    grant_handle_t h = op.handle;
    show("self_read", check((volatile uint8_t *)win, 0x30, 0, 4096));
    *(volatile uint32_t *)win = 0xC0FFEE;
    show("self_write_seen", *(volatile uint32_t *)pages[0] == 0xC0FFEE);
    show("self_flags", gnttab_query_foreign_access((grant_ref_t)ref));
    show("self_end_busy", gnttab_end_foreign_access_ref((grant_ref_t)ref));

    /* xsa-316: an entry naming another domain; the call returns 0, the status
     * is general_error and never positive. */
    int other = gnttab_grant_foreign_access((domid_t)(me + 1), virt_to_gfn(pages[1]), 0);
    op.status = 77;
    long rc = (gnttab_set_map_op(&op, win + 4096, GNTMAP_host_map, (grant_ref_t)other, me),
               HYPERVISOR_grant_table_op(GNTTABOP_map_grant_ref, &op, 1));
    show("xsa316_rc", rc);
    show("xsa316_status", op.status);
    show("wrong_flags_after", gnttab_query_foreign_access((grant_ref_t)other));

    show("no_host_no_device", map_one(&op, win + 4096, 0, (grant_ref_t)ref, me));
    show("device_map", map_one(&op, win + 4096, GNTMAP_device_map, (grant_ref_t)ref, me));
    show("ref_past_table", map_one(&op, win + 4096, GNTMAP_host_map,
                                   gnttab_nr_refs(), me));
    show("ref_huge", map_one(&op, win + 4096, GNTMAP_host_map, 0xFFFFFFFFu, me));
    show("unknown_dom", map_one(&op, win + 4096, GNTMAP_host_map, (grant_ref_t)ref, 999));
    show("outside_window", map_one(&op, (uintptr_t)pages[2], GNTMAP_host_map,
                                   (grant_ref_t)ref, me));
    show("past_window", map_one(&op, win + (uint64_t)bi->grant_window_pages * 4096,
                                GNTMAP_host_map, (grant_ref_t)ref, me));
    show("misaligned", map_one(&op, win + 4096 + 8, GNTMAP_host_map, (grant_ref_t)ref, me));
    show("occupied", map_one(&op, win, GNTMAP_host_map, (grant_ref_t)ref, me));
    show("ro_into_rw_window", map_one(&op, win + 4096, GNTMAP_host_map | GNTMAP_readonly,
                                      (grant_ref_t)ref, me));
    show("reserved_ref", map_one(&op, win + 4096, GNTMAP_host_map, 1, me));

    /* a batch: per-op statuses, the good ones mapped */
    struct gnttab_map_grant_ref batch[3];
    void *slots[3];
    CHECK(gnttab_alloc_pages(2, slots, 0) == 0 && gnttab_alloc_pages(1, slots + 2, 1) == 0);
    gnttab_set_map_op(&batch[0], (uintptr_t)slots[0], GNTMAP_host_map, (grant_ref_t)ref, me);
    gnttab_set_map_op(&batch[1], (uintptr_t)slots[1], GNTMAP_host_map, (grant_ref_t)other, me);
    gnttab_set_map_op(&batch[2], (uintptr_t)slots[2], GNTMAP_host_map | GNTMAP_readonly,
                      (grant_ref_t)ref, me);
    show("batch_rc", gnttab_map_refs(batch, 3));
    printf("batch=%d,%d,%d\n", batch[0].status, batch[1].status, batch[2].status);
    show("batch_ro_read", check((volatile uint8_t *)slots[2], 0x30, 4, 4096));
    struct gnttab_unmap_grant_ref ub[2];
    gnttab_set_unmap_op(&ub[0], (uintptr_t)slots[0], GNTMAP_host_map, batch[0].handle);
    gnttab_set_unmap_op(&ub[1], (uintptr_t)slots[2], GNTMAP_host_map, batch[2].handle);
    show("batch_unmap_rc", gnttab_unmap_refs(ub, 2));
    printf("batch_unmap=%d,%d\n", ub[0].status, ub[1].status);
    gnttab_free_pages(3, slots);

    /* copy: frame form with its own domid spelled out; through its own grant */
    struct gnttab_copy c[2] = {
        { .source = { .u.gmfn = virt_to_gfn(pages[0]), .domid = me },
          .dest = { .u.gmfn = virt_to_gfn(pages[3]), .domid = DOMID_SELF }, .len = 8 },
        { .source = { .u.ref = (grant_ref_t)ref, .domid = me, .offset = 4 },
          .dest = { .u.gmfn = virt_to_gfn(pages[3]), .domid = DOMID_SELF, .offset = 4 },
          .len = 100, .flags = GNTCOPY_source_gref },
    };
    show("copy_rc", gnttab_copy(c, 2));
    printf("copy=%d,%d\n", c[0].status, c[1].status);
    show("copy_bytes", !memcmp(pages[3] + 4, pages[0] + 4, 100));

    /* hypercall-level errors */
    show("bad_uop", HYPERVISOR_grant_table_op(GNTTABOP_map_grant_ref, (void *)0xD0000000, 1));
    show("cmd_high_bits", HYPERVISOR_grant_table_op(GNTTABOP_query_size | 0x1000, &q, 1));
    show("dump_table", HYPERVISOR_grant_table_op(GNTTABOP_dump_table, &q, 1));
    struct gnttab_set_version v = { .version = 2 };
    show("set_version_2", HYPERVISOR_grant_table_op(GNTTABOP_set_version, &v, 1));

    /* unmap the self mapping twice */
    struct gnttab_unmap_grant_ref u;
    gnttab_set_unmap_op(&u, win, GNTMAP_host_map, h);
    CHECK(gnttab_unmap_refs(&u, 1) == 0);
    show("unmap", u.status);
    CHECK(gnttab_unmap_refs(&u, 1) == 0);
    show("double_unmap", u.status);
    show("self_end_after", gnttab_end_foreign_access_ref((grant_ref_t)ref));
    show("end_reserved", gnttab_end_foreign_access_ref(0));
    puts("hostile done");
    return 0;
}

static int full(void)
{
    CHECK(gnttab_init() == 0);
    unsigned n = 0;
    int r, first = -1, last = -1;
    while ((r = gnttab_grant_foreign_access(0, virt_to_gfn(pages[0]), 1)) >= 0) {
        if (first < 0)
            first = r;
        last = r;
        n++;
    }
    show("refs", gnttab_nr_refs());
    show("granted", n);
    show("first", first);
    show("last", last);
    show("when_full", r);
    CHECK(gnttab_try_end_foreign_access(100) == 0);
    show("after_free", gnttab_grant_foreign_access(0, virt_to_gfn(pages[0]), 1));
    show("gfn_too_big", gnttab_grant_foreign_access(0, 1ull << 32, 1));
    return 0;
}

static int survivor(domid_t peer)
{
    CHECK(gnttab_init() == 0);
    *word(pages[0], B_STATE) = 0;
    int ref = gnttab_grant_foreign_access(peer, virt_to_gfn(pages[0]), 0);
    printf("granted %d\n", ref);
    CHECK(wait_word(word(pages[0], B_STATE), 0xDEAD));
    printf("mark seen\n");
    int r = revoke((grant_ref_t)ref);
    printf("revoked after the mapper died: %d, flags %#x\n", r, gnttab_shared()[ref].flags);
    return 0;
}

static int crasher(domid_t peer)
{
    CHECK(gnttab_init() == 0);
    void *p;
    grant_handle_t h;
    CHECK(gnttab_map_grant_ref(peer, 8, 0, &p, &h) == GNTST_okay);
    __atomic_store_n(word(p, B_STATE), 0xDEAD, __ATOMIC_RELEASE);
    printf("crashing with the grant mapped\n");
    *(volatile int *)0 = 1;
    return 1;
}

static int host(void)
{
    CHECK(gnttab_init() == 0);
    fill(pages[0], 0x40);
    *word(pages[0], 0) = 0;
    int ref = gnttab_grant_foreign_access(0, virt_to_gfn(pages[0]), 0);
    printf("granted %d gfn %#lx\n", ref, (unsigned long)virt_to_gfn(pages[0]));
    CHECK(wait_word(word(pages[0], 0), 0x484F5354));       /* "HOST" */
    printf("host wrote '%s', flags %#x, end %d\n", (const char *)pages[0] + 8,
           gnttab_query_foreign_access((grant_ref_t)ref),
           gnttab_end_foreign_access_ref((grant_ref_t)ref));
    int r = revoke((grant_ref_t)ref);
    printf("revoked: %d\n", r);
    return 0;
}

static int exiter(domid_t peer)
{
    CHECK(gnttab_init() == 0);
    fill(pages[0], 0x50);
    *word(pages[0], B_STATE) = 0;
    printf("granted %d\n", gnttab_grant_foreign_access(peer, virt_to_gfn(pages[0]), 0));
    CHECK(wait_word(word(pages[0], B_STATE), 1));
    puts("exiting with the grant mapped");
    return 0;
}

/* Map <ref> of <peer> once more and unmap at once, until the status is not
 * okay: that status, or okay after ~20 s. */
static int probe_until_refused(domid_t peer, grant_ref_t ref)
{
    for (int i = 0; i < 20000; i++) {
        void *p;
        grant_handle_t h;
        int st = gnttab_map_grant_ref(peer, ref, 1, &p, &h);
        if (st != GNTST_okay)
            return st;
        gnttab_unmap_grant_ref(p, h);
        pv_wait(1000000);
    }
    return GNTST_okay;
}

static int zombie(domid_t peer)
{
    CHECK(gnttab_init() == 0);
    void *p;
    grant_handle_t h;
    CHECK(gnttab_map_grant_ref(peer, 8, 0, &p, &h) == GNTST_okay);
    CHECK(check(p, 0x50, 128, 4096));
    __atomic_store_n(word(p, B_STATE), 1, __ATOMIC_RELEASE);
    printf("granter gone: %d\n", probe_until_refused(peer, 8));
    printf("old page kept: %d\n", check(p, 0x50, 128, 4096));
    memcpy((uint8_t *)p + 200, "still mine", 11);
    int st;
    while ((st = probe_until_refused(peer, 8)) == GNTST_bad_domain)
        pv_wait(1000000);
    printf("new granter: %d\n", st);
    printf("old page still: %d '%s'\n", check(p, 0x50, 128, 200),
           (const char *)p + 200);
    printf("unmap: %d\n", gnttab_unmap_grant_ref(p, h));
    return 0;
}

/* Grant a page to ourselves (XTF's self-grant) and map / check / unmap it
 * n times: the VMM must not leak anything per cycle. */
static int cycles(long n)
{
    CHECK(gnttab_init() == 0);
    uint8_t *page = pv_page_alloc(1);
    CHECK(page != 0);
    int ref = gnttab_grant_foreign_access(pv_boot_info()->domid, virt_to_gfn(page), 0);
    CHECK(ref >= 8);
    puts("cycling");
    for (long i = 0; i < n; i++) {
        page[0] = (uint8_t)i;
        void *p;
        grant_handle_t h;
        CHECK(gnttab_map_grant_ref(pv_boot_info()->domid, (grant_ref_t)ref, 0, &p, &h)
              == GNTST_okay);
        CHECK(*(volatile uint8_t *)p == (uint8_t)i);
        ((volatile uint8_t *)p)[1] = (uint8_t)(i + 1);
        CHECK(page[1] == (uint8_t)(i + 1));
        CHECK(gnttab_unmap_grant_ref(p, h) == GNTST_okay);
    }
    CHECK(gnttab_end_foreign_access_ref((grant_ref_t)ref) == 0);
    printf("cycles %ld ok\n", n);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        puts("usage: grant MODE [PEER]");
        return 2;
    }
    domid_t peer = (domid_t)(argc > 2 ? strtol(argv[2], 0, 0) : 0);
    const char *m = argv[1];
    if (!strcmp(m, "granter"))
        return granter(peer);
    if (!strcmp(m, "mapper"))
        return mapper(peer);
    if (!strcmp(m, "hostile"))
        return hostile();
    if (!strcmp(m, "full"))
        return full();
    if (!strcmp(m, "survivor"))
        return survivor(peer);
    if (!strcmp(m, "crasher"))
        return crasher(peer);
    if (!strcmp(m, "host"))
        return host();
    if (!strcmp(m, "exiter"))
        return exiter(peer);
    if (!strcmp(m, "zombie"))
        return zombie(peer);
    if (!strcmp(m, "cycles"))
        return cycles(argc > 2 ? strtol(argv[2], 0, 0) : 1000);
    if (!strcmp(m, "idle")) {
        CHECK(gnttab_init() == 0);
        puts("idle");
        for (;;)
            pv_wait(0);
    }
    if (!strcmp(m, "noxen")) {
        printf("init=%d grant=%d\n", gnttab_init(), gnttab_grant_foreign_access(0, 0x200, 0));
        return 0;
    }
    printf("unknown mode %s\n", m);
    return 2;
}
