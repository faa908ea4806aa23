"""The Xen grant-table ABI as paravm models it (specs/grant-mpt.md §D1.1, §D1.3, §D1.4).

Each binary layout is declared once, as a :class:`struct.Struct` with the C
declaration beside it (the x86-64 layout of ``xen/include/public/grant_table.h``
and Linux ``include/uapi/xen/gntdev.h``); ``tests/unit/test_grant_abi.py``
checks sizes and offsets against the spec and the guest SDK header
``guest/include/paravm/xen/grant_table.h``.
"""

from __future__ import annotations

import struct

# --- grant entries (v1) ----------------------------------------------------------
#   struct grant_entry_v1 { uint16_t flags; domid_t domid; uint32_t frame; };  8 bytes
GRANT_ENTRY_V1 = struct.Struct("<HHI")
ENTRIES_PER_FRAME = 4096 // GRANT_ENTRY_V1.size     # 512
NR_RESERVED_ENTRIES = 8                              # refs 0..7 (console, xenstore, ...)

GTF_invalid = 0
GTF_permit_access = 1
GTF_accept_transfer = 2
GTF_transitive = 3
GTF_type_mask = 3
GTF_readonly = 1 << 2
GTF_reading = 1 << 3
GTF_writing = 1 << 4
GTF_PWT = 1 << 5
GTF_PCD = 1 << 6
GTF_PAT = 1 << 7
GTF_sub_page = 1 << 8

# --- GNTTABOP_* ------------------------------------------------------------------
GNTTABOP_map_grant_ref = 0
GNTTABOP_unmap_grant_ref = 1
GNTTABOP_setup_table = 2
GNTTABOP_dump_table = 3
GNTTABOP_transfer = 4
GNTTABOP_copy = 5
GNTTABOP_query_size = 6
GNTTABOP_unmap_and_replace = 7
GNTTABOP_set_version = 8
GNTTABOP_get_status_frames = 9
GNTTABOP_get_version = 10
GNTTABOP_swap_grant_ref = 11
GNTTABOP_cache_flush = 12
GNTTABOP_CMD_MASK = 0xFFF    # the command; bits above carry a continuation's progress

# --- GNTMAP_* (map op flags) --------------------------------------------------------
GNTMAP_device_map = 1 << 0
GNTMAP_host_map = 1 << 1
GNTMAP_readonly = 1 << 2
GNTMAP_application_map = 1 << 3
GNTMAP_contains_pte = 1 << 4

# --- GNTCOPY_* ------------------------------------------------------------------------
GNTCOPY_source_gref = 1 << 0
GNTCOPY_dest_gref = 1 << 1

# --- GNTST_* (all <= 0) ----------------------------------------------------------------
GNTST_okay = 0
GNTST_general_error = -1
GNTST_bad_domain = -2
GNTST_bad_gntref = -3
GNTST_bad_handle = -4
GNTST_bad_virt_addr = -5
GNTST_bad_dev_addr = -6
GNTST_no_device_space = -7
GNTST_permission_denied = -8
GNTST_bad_page = -9
GNTST_bad_copy_arg = -10
GNTST_address_too_big = -11
GNTST_eagain = -12
GNTST_no_space = -13
GNTST_NAMES = {0: "okay", -1: "general_error", -2: "bad_domain", -3: "bad_gntref",
               -4: "bad_handle", -5: "bad_virt_addr", -6: "bad_dev_addr",
               -7: "no_device_space", -8: "permission_denied", -9: "bad_page",
               -10: "bad_copy_arg", -11: "address_too_big", -12: "eagain", -13: "no_space"}

# --- hypercall argument structs ---------------------------------------------------------
#   struct gnttab_map_grant_ref { uint64_t host_addr; uint32_t flags; grant_ref_t ref;
#       domid_t dom; int16_t status; grant_handle_t handle; uint64_t dev_bus_addr; };  32
MAP_GRANT_REF = struct.Struct("<QIIHhIQ")
#   struct gnttab_unmap_grant_ref { uint64_t host_addr; uint64_t dev_bus_addr;
#       grant_handle_t handle; int16_t status; };  24 (4 bytes of tail padding)
UNMAP_GRANT_REF = struct.Struct("<QQIh2x")
#   struct gnttab_unmap_and_replace { uint64_t host_addr; uint64_t new_addr;
#       grant_handle_t handle; int16_t status; };  24
UNMAP_AND_REPLACE = struct.Struct("<QQIh2x")
#   struct gnttab_copy { union { grant_ref_t ref; xen_pfn_t gmfn; } u; domid_t domid;
#       uint16_t offset; } source, dest; uint16_t len; uint16_t flags; int16_t status; };  40
COPY = struct.Struct("<QHH4xQHH4xHHh2x")
#   struct gnttab_setup_table { domid_t dom; uint32_t nr_frames; int16_t status;
#       XEN_GUEST_HANDLE(xen_pfn_t) frame_list; };  24
SETUP_TABLE = struct.Struct("<H2xIh6xQ")
#   struct gnttab_query_size { domid_t dom; uint32_t nr_frames; uint32_t max_nr_frames;
#       int16_t status; };  16
QUERY_SIZE = struct.Struct("<H2xIIh2x")
#   struct gnttab_set_version { uint32_t version; };  /  struct gnttab_get_version
#   { domid_t dom; uint16_t pad; uint32_t version; };
SET_VERSION = struct.Struct("<I")
GET_VERSION = struct.Struct("<HHI")

DOMID_SELF = 0x7FF0
DOMID_IO = 0x7FF1
DOMID_INVALID = 0x7FF4

# --- limits (xen/common/grant_table.c defaults) ------------------------------------------
INITIAL_NR_GRANT_FRAMES = 1
DEFAULT_MAX_GRANT_FRAMES = 64          # 32768 v1 refs
DEFAULT_MAX_MAPTRACK_FRAMES = 1024     # 262144 mappings per mapping domain
MAPTRACK_PER_FRAME = 4096 // 16        # one maptrack entry is 16 bytes
PIN_FAIL_BIT = 0x80                    # a pin counter with this set takes no more pins

# Active entry pin counter: four 8-bit counters in one u32.
PIN_HOST_WRITE = 0
PIN_HOST_READ = 8
PIN_DEV_WRITE = 16
PIN_DEV_READ = 24
PIN_WRITE_MASK = 0x00FF00FF            # host-write and device-write counters

# --- gntdev / gntalloc uapi (the host API's errno semantics) --------------------------------
UNMAP_NOTIFY_CLEAR_BYTE = 0x1
UNMAP_NOTIFY_SEND_EVENT = 0x2
GNTDEV_DMA_FLAG_WC = 0x1
GNTDEV_DMA_FLAG_COHERENT = 0x2
GNTDEV_LIMIT = 65536                   # module parameter `limit`: grants per request
GNTALLOC_FLAG_WRITABLE = 1
GNTALLOC_LIMIT = 1024                  # module parameter `limit`: pages per host
