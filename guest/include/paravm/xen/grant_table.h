/*
 * Xen grant tables: the public ABI a guest uses (the numbers and x86_64
 * layouts of Xen's public grant_table.h, version 1 entries), written for
 * paravm from specs/grant-mpt.md §D1.1.  The VMM side is
 * src/paravm/services/grant/abi.py; tests/unit/test_grant_abi.py compiles
 * this header and checks every number, size and offset against it.
 * What paravm models of it, and how it differs from Xen HVM: docs/grant.md.
 *
 * Freestanding (stdint.h only), so it also builds on the host.
 */
#ifndef PARAVM_XEN_GRANT_TABLE_H
#define PARAVM_XEN_GRANT_TABLE_H

#include <stdint.h>

#include "paravm/xen/xen.h"

typedef uint32_t grant_ref_t;      /* index into the granter's table */
typedef uint32_t grant_handle_t;   /* index into the mapper's maptrack */

/* The hypercall: grant_table_op(cmd, GPA of an array of cmd's struct, count)
 * -> 0 with a status per element, or -errno for the call as a whole
 * (Xen's __HYPERVISOR_grant_table_op number). */
#define PV_HC_GRANT_TABLE_OP 20

/* --- the table ------------------------------------------------------------ */

/* One v1 entry, written by the granter: domid and frame first, then (after a
 * write barrier) flags.  The hypervisor sets GTF_reading / GTF_writing while
 * the grant is in use, on the 32-bit word {flags, domid} with cmpxchg. */
struct grant_entry_v1 {
    uint16_t flags;     /* @0: GTF_* */
    domid_t domid;      /* @2: the one domain that may use this entry */
    uint32_t frame;     /* @4: the granter's GFN */
};

#define GNTTAB_ENTRIES_PER_FRAME   (4096 / sizeof(struct grant_entry_v1))   /* 512 */
#define GNTTAB_NR_RESERVED_ENTRIES 8      /* refs 0..7: console, xenstore, ... */

/* flags: type in the low two bits */
#define GTF_invalid          0x0000
#define GTF_permit_access    0x0001   /* the domain may map or copy the frame */
#define GTF_accept_transfer  0x0002   /* (transfer: not modelled by paravm) */
#define GTF_transitive       0x0003   /* (v2 only) */
#define GTF_type_mask        0x0003
#define GTF_readonly         0x0004   /* the grantee may only read */
#define GTF_reading          0x0008   /* set by the hypervisor: pinned */
#define GTF_writing          0x0010   /* set by the hypervisor: pinned writable */
#define GTF_PWT              0x0020   /* cache attributes: refused for HVM mappers */
#define GTF_PCD              0x0040
#define GTF_PAT              0x0080
#define GTF_sub_page         0x0100   /* (v2 only) */
#define GTF_transfer_committed 0x0004
#define GTF_transfer_completed 0x0008

/* --- commands ---------------------------------------------------------------- */
#define GNTTABOP_map_grant_ref        0
#define GNTTABOP_unmap_grant_ref      1
#define GNTTABOP_setup_table          2
#define GNTTABOP_dump_table           3
#define GNTTABOP_transfer             4
#define GNTTABOP_copy                 5
#define GNTTABOP_query_size           6
#define GNTTABOP_unmap_and_replace    7
#define GNTTABOP_set_version          8
#define GNTTABOP_get_status_frames    9
#define GNTTABOP_get_version          10
#define GNTTABOP_swap_grant_ref       11
#define GNTTABOP_cache_flush          12

/* map op flags */
#define GNTMAP_device_map      0x01
#define GNTMAP_host_map        0x02
#define GNTMAP_readonly        0x04
#define GNTMAP_application_map 0x08
#define GNTMAP_contains_pte    0x10

/* copy op flags: which side is a grant reference (else a frame of the caller) */
#define GNTCOPY_source_gref 0x1
#define GNTCOPY_dest_gref   0x2

/* Per-op statuses: every one is <= 0. */
#define GNTST_okay               0
#define GNTST_general_error     (-1)
#define GNTST_bad_domain        (-2)
#define GNTST_bad_gntref        (-3)
#define GNTST_bad_handle        (-4)
#define GNTST_bad_virt_addr     (-5)
#define GNTST_bad_dev_addr      (-6)
#define GNTST_no_device_space   (-7)
#define GNTST_permission_denied (-8)
#define GNTST_bad_page          (-9)
#define GNTST_bad_copy_arg      (-10)
#define GNTST_address_too_big   (-11)
#define GNTST_eagain            (-12)
#define GNTST_no_space          (-13)

/* --- op structs (IN fields set by the caller, OUT by the hypervisor) ---------- */

/* Map grant <ref> of domain <dom> at <host_addr>: for a paravm guest a
 * page-aligned GPA in the grant window that matches GNTMAP_readonly. */
struct gnttab_map_grant_ref {
    uint64_t host_addr;        /* @0  IN */
    uint32_t flags;            /* @8  IN: GNTMAP_* */
    grant_ref_t ref;           /* @12 IN */
    domid_t dom;               /* @16 IN: the granter */
    int16_t status;            /* @18 OUT: GNTST_* */
    grant_handle_t handle;     /* @20 OUT */
    uint64_t dev_bus_addr;     /* @24 OUT (0 for host mappings) */
};

struct gnttab_unmap_grant_ref {
    uint64_t host_addr;        /* @0  IN: where it is mapped (0: leave the host half) */
    uint64_t dev_bus_addr;     /* @8  IN (0: leave the device half) */
    grant_handle_t handle;     /* @16 IN */
    int16_t status;            /* @20 OUT */
};

/* Grow the caller's table to <nr_frames> and list its frames' GFNs. count 1. */
struct gnttab_setup_table {
    domid_t dom;               /* @0  IN: DOMID_SELF or the caller */
    uint32_t nr_frames;        /* @4  IN */
    int16_t status;            /* @8  OUT */
    uint64_t frame_list;       /* @16 IN: GPA of nr_frames u64 (XEN_GUEST_HANDLE) */
};

/* One copy side: a grant (ref, of domid) or a frame of the caller (gmfn,
 * domid DOMID_SELF), and a byte offset in that page. */
struct gnttab_copy_ptr {
    union {
        grant_ref_t ref;
        uint64_t gmfn;         /* xen_pfn_t */
    } u;                       /* @0 */
    domid_t domid;             /* @8 */
    uint16_t offset;           /* @10 */
};

struct gnttab_copy {
    struct gnttab_copy_ptr source;   /* @0  IN */
    struct gnttab_copy_ptr dest;     /* @16 IN */
    uint16_t len;                    /* @32 IN: bytes; offset + len <= 4096 each side */
    uint16_t flags;                  /* @34 IN: GNTCOPY_* */
    int16_t status;                  /* @36 OUT */
};

struct gnttab_query_size {
    domid_t dom;               /* @0  IN */
    uint32_t nr_frames;        /* @4  OUT */
    uint32_t max_nr_frames;    /* @8  OUT */
    int16_t status;            /* @12 OUT */
};

/* HVM: new_addr must be 0 (unmap_and_replace then equals unmap). */
struct gnttab_unmap_and_replace {
    uint64_t host_addr;        /* @0  IN */
    uint64_t new_addr;         /* @8  IN */
    grant_handle_t handle;     /* @16 IN */
    int16_t status;            /* @20 OUT */
};

struct gnttab_set_version {
    uint32_t version;          /* @0 IN/OUT: paravm has only version 1 */
};

struct gnttab_get_version {
    domid_t dom;               /* @0 IN */
    uint16_t pad;
    uint32_t version;          /* @4 OUT */
};

/* The x86_64 layouts, checked at compile time (specs §D1.1). */
#define PV_GNT_LAYOUT(T, F, OFF) _Static_assert(__builtin_offsetof(T, F) == (OFF), #T "." #F)
_Static_assert(sizeof(struct grant_entry_v1) == 8, "grant_entry_v1");
PV_GNT_LAYOUT(struct grant_entry_v1, domid, 2);
PV_GNT_LAYOUT(struct grant_entry_v1, frame, 4);
_Static_assert(sizeof(struct gnttab_map_grant_ref) == 32, "gnttab_map_grant_ref");
PV_GNT_LAYOUT(struct gnttab_map_grant_ref, flags, 8);
PV_GNT_LAYOUT(struct gnttab_map_grant_ref, ref, 12);
PV_GNT_LAYOUT(struct gnttab_map_grant_ref, dom, 16);
PV_GNT_LAYOUT(struct gnttab_map_grant_ref, status, 18);
PV_GNT_LAYOUT(struct gnttab_map_grant_ref, handle, 20);
PV_GNT_LAYOUT(struct gnttab_map_grant_ref, dev_bus_addr, 24);
_Static_assert(sizeof(struct gnttab_unmap_grant_ref) == 24, "gnttab_unmap_grant_ref");
PV_GNT_LAYOUT(struct gnttab_unmap_grant_ref, dev_bus_addr, 8);
PV_GNT_LAYOUT(struct gnttab_unmap_grant_ref, handle, 16);
PV_GNT_LAYOUT(struct gnttab_unmap_grant_ref, status, 20);
_Static_assert(sizeof(struct gnttab_setup_table) == 24, "gnttab_setup_table");
PV_GNT_LAYOUT(struct gnttab_setup_table, nr_frames, 4);
PV_GNT_LAYOUT(struct gnttab_setup_table, status, 8);
PV_GNT_LAYOUT(struct gnttab_setup_table, frame_list, 16);
_Static_assert(sizeof(struct gnttab_copy) == 40, "gnttab_copy");
PV_GNT_LAYOUT(struct gnttab_copy, source.domid, 8);
PV_GNT_LAYOUT(struct gnttab_copy, source.offset, 10);
PV_GNT_LAYOUT(struct gnttab_copy, dest, 16);
PV_GNT_LAYOUT(struct gnttab_copy, dest.domid, 24);
PV_GNT_LAYOUT(struct gnttab_copy, dest.offset, 26);
PV_GNT_LAYOUT(struct gnttab_copy, len, 32);
PV_GNT_LAYOUT(struct gnttab_copy, flags, 34);
PV_GNT_LAYOUT(struct gnttab_copy, status, 36);
_Static_assert(sizeof(struct gnttab_query_size) == 16, "gnttab_query_size");
PV_GNT_LAYOUT(struct gnttab_query_size, nr_frames, 4);
PV_GNT_LAYOUT(struct gnttab_query_size, max_nr_frames, 8);
PV_GNT_LAYOUT(struct gnttab_query_size, status, 12);
_Static_assert(sizeof(struct gnttab_unmap_and_replace) == 24, "gnttab_unmap_and_replace");
PV_GNT_LAYOUT(struct gnttab_unmap_and_replace, new_addr, 8);
PV_GNT_LAYOUT(struct gnttab_unmap_and_replace, handle, 16);
PV_GNT_LAYOUT(struct gnttab_unmap_and_replace, status, 20);
_Static_assert(sizeof(struct gnttab_set_version) == 4, "gnttab_set_version");
_Static_assert(sizeof(struct gnttab_get_version) == 8, "gnttab_get_version");
PV_GNT_LAYOUT(struct gnttab_get_version, version, 4);
#undef PV_GNT_LAYOUT

#endif
