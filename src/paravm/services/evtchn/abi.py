"""The Xen event channel ABI as a guest sees it: numbers and layouts.

From Xen's public ``event_channel.h`` and ``xen.h`` (specs/grant-mpt.md
§D1.2, verified there against the real headers on x86_64).  The C side is
``guest/include/paravm/xen/event_channel.h``; tests/unit/test_evtchn.py
compiles it and checks every size and offset against these structs.

Each argument struct is one :class:`struct.Struct`, little endian, with the C
layout in a comment above it; ``domid_t`` is u16, ``evtchn_port_t`` u32.
"""

from __future__ import annotations

import struct

# The hypercall: Xen's __HYPERVISOR_event_channel_op number, (cmd, arg GPA) -> 0 / -errno.
HC_EVENT_CHANNEL_OP = 32

# EVTCHNOP_* (cmd)
EVTCHNOP_bind_interdomain = 0
EVTCHNOP_bind_virq = 1
EVTCHNOP_bind_pirq = 2
EVTCHNOP_close = 3
EVTCHNOP_send = 4
EVTCHNOP_status = 5
EVTCHNOP_alloc_unbound = 6
EVTCHNOP_bind_ipi = 7
EVTCHNOP_bind_vcpu = 8
EVTCHNOP_unmask = 9
EVTCHNOP_reset = 10
EVTCHNOP_init_control = 11
EVTCHNOP_expand_array = 12
EVTCHNOP_set_priority = 13

# evtchn_status.status
EVTCHNSTAT_closed = 0
EVTCHNSTAT_unbound = 1
EVTCHNSTAT_interdomain = 2
EVTCHNSTAT_pirq = 3
EVTCHNSTAT_virq = 4
EVTCHNSTAT_ipi = 5

DOMID_FIRST_RESERVED = 0x7FF0
DOMID_SELF = 0x7FF0
DOMID_IO = 0x7FF1
DOMID_INVALID = 0x7FF4

# struct evtchn_alloc_unbound { domid_t dom @0; domid_t remote_dom @2;
#                               evtchn_port_t port @4 (OUT); }            8 bytes
ALLOC_UNBOUND = struct.Struct("<HHI")
ALLOC_UNBOUND_PORT = 4

# struct evtchn_bind_interdomain { domid_t remote_dom @0; (pad 2)
#     evtchn_port_t remote_port @4; evtchn_port_t local_port @8 (OUT); }   12 bytes
BIND_INTERDOMAIN = struct.Struct("<H2xII")
BIND_INTERDOMAIN_LOCAL_PORT = 8

# struct evtchn_send / evtchn_close / evtchn_unmask { evtchn_port_t port; }  4 bytes
PORT_ARG = struct.Struct("<I")

# struct evtchn_bind_ipi { uint32_t vcpu @0; evtchn_port_t port @4 (OUT); }  8 bytes
BIND_IPI = struct.Struct("<II")
BIND_IPI_PORT = 4

# struct evtchn_bind_vcpu { evtchn_port_t port @0; uint32_t vcpu @4; }      8 bytes
BIND_VCPU = struct.Struct("<II")

# struct evtchn_status { domid_t dom @0; (pad 2) evtchn_port_t port @4;
#     uint32_t status @8 (OUT); uint32_t vcpu @12 (OUT);
#     union { struct { domid_t dom; } unbound;                       @16
#             struct { domid_t dom; evtchn_port_t port; } interdomain; @16, @20
#             uint32_t pirq; uint32_t virq; } u (OUT); }                 24 bytes
STATUS = struct.Struct("<H2xI")            # the IN part: dom, port
STATUS_SIZE = 24
STATUS_OUT = struct.Struct("<II")          # status, vcpu
STATUS_STATUS = 8
STATUS_U = 16
STATUS_U_DOM = struct.Struct("<H")         # u.unbound.dom / u.interdomain.dom @16
STATUS_U_PORT = 20                         # u.interdomain.port (u32)

ARG_SIZE = {                               # bytes copied in for each modelled cmd
    EVTCHNOP_alloc_unbound: ALLOC_UNBOUND.size,
    EVTCHNOP_bind_interdomain: BIND_INTERDOMAIN.size,
    EVTCHNOP_send: PORT_ARG.size,
    EVTCHNOP_close: PORT_ARG.size,
    EVTCHNOP_unmask: PORT_ARG.size,
    EVTCHNOP_status: STATUS_SIZE,
    EVTCHNOP_bind_ipi: BIND_IPI.size,
    EVTCHNOP_bind_vcpu: BIND_VCPU.size,
}

# --- shared_info, 2-level ABI, x86_64 (struct shared_info: 3136 bytes) -----------------
# struct vcpu_info (64 bytes): evtchn_upcall_pending u8 @0, evtchn_upcall_mask u8 @1,
# (pad 6), evtchn_pending_sel xen_ulong_t @8, arch_vcpu_info @16 (16 bytes),
# vcpu_time_info @32 (32 bytes).
VCPU_INFO_SIZE = 64
XEN_LEGACY_MAX_VCPUS = 32
VI_UPCALL_PENDING = 0
VI_UPCALL_MASK = 1
VI_PENDING_SEL = 8
# struct shared_info: vcpu_info[32] @0, evtchn_pending[64] (u64) @0x800,
# evtchn_mask[64] (u64) @0xA00, wc_version u32 @0xC00, ...
SHINFO_EVTCHN_PENDING = 0x800
SHINFO_EVTCHN_MASK = 0xA00
SHINFO_WC_VERSION = 0xC00
SHARED_INFO_SIZE = 3136
BITS_PER_WORD = 64
NR_EVENT_CHANNELS = 4096                   # 2-level, 64-bit guests: 64 words x 64 bits


def vcpu_info(vcpu: int) -> int:
    """Byte offset of ``vcpu_info[vcpu]`` in the shared_info page."""
    return vcpu * VCPU_INFO_SIZE


# --- /dev/xen/evtchn ioctls (Linux include/uapi/xen/evtchn.h; specs §D1.5) -------------
# Recorded for reference: the host API (EvtchnHandle) is a Python object, not a
# character device; its calls are named after these.
IOCTL_EVTCHN_BIND_INTERDOMAIN = 0x00084501
IOCTL_EVTCHN_BIND_UNBOUND_PORT = 0x00044502
IOCTL_EVTCHN_UNBIND = 0x00044503
IOCTL_EVTCHN_NOTIFY = 0x00044504
IOCTL_EVTCHN_RESET = 0x00004505
