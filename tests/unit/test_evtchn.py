"""Xen event channels on fake domains (no KVM): the port state machine, 2-level
delivery into shared_info, the hypercall's checks and the host handle.

The cases of specs/grant-mpt.md §D4 case 15 (Xen's event_channel.c and
event_2l.c semantics, §D2.6), the hostile cases of §D3, and the Linux
/dev/xen/evtchn behaviour of the host API (§D1.5).
"""

from __future__ import annotations

import errno
import re
import selectors
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from paravm.arch.x86 import layout as L
from paravm.hypercall.table import HypercallTable
from paravm.memory.guest import GuestMemory, Region
from paravm.services.evtchn import abi
from paravm.services.evtchn.abi import DOMID_SELF
from paravm.services.evtchn.service import EvtchnService
from paravm.vm.vcpu import _dispatch

from c_probe import probe

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "guest/include/paravm/xen/event_channel.h"

ARG = 0x180000            # argument structs go here (guest RAM above the reserved 1 MiB)
RO_GPA = 0xD0000000       # a read-only page some tests map
NR = abi.NR_EVENT_CHANNELS


# --- fakes ----------------------------------------------------------------------------------
class FakeIrqfd:
    def __init__(self):
        self.fired = 0

    def fire(self):
        self.fired += 1

    def fileno(self):
        return -1


class FakeDomain:
    """What the service uses of a Domain: name, domid, nr_vcpus, memory,
    hypercalls, irqfd(vcpu, vector)."""

    def __init__(self, machine, name, domid, regions, nr_vcpus=1):
        self.name, self.domid, self.nr_vcpus = name, domid, nr_vcpus
        self.ram = machine.alloc(512, name)                # 2 MiB
        self.ro = machine.alloc(1, f"{name}-ro")
        self.memory = GuestMemory()
        self.memory.add_region(Region(0, self.ram))
        self.memory.add_region(Region(RO_GPA, self.ro, readonly=True))
        for gpa, frames, ro in regions:
            self.memory.add_region(Region(gpa, frames, readonly=ro))
        self.hypercalls = HypercallTable()
        self.irqfds: dict[int, FakeIrqfd] = {}
        self.result = None
        self._runner = SimpleNamespace(domain=self, hypercall_counts=[0] * 64)

    def irqfd(self, vcpu, vector):
        assert vector == L.VEC_EVTCHN and 0 <= vcpu < self.nr_vcpus
        self.irqfds[vcpu] = FakeIrqfd()
        return self.irqfds[vcpu]

    def fired(self, vcpu=0):
        return self.irqfds[vcpu].fired

    def call(self, cmd, gpa=ARG):
        """The hypercall as the vCPU run loop dispatches it."""
        return _dispatch(self._runner, abi.HC_EVENT_CHANNEL_OP, cmd, gpa, 0, 0, 0, 0)

    # --- the guest's side of the ABI, one call each ---------------------------------------
    def alloc_unbound(self, remote, dom=DOMID_SELF):
        self.memory.write(ARG, abi.ALLOC_UNBOUND.pack(dom, remote, 0xDEADBEEF))
        r = self.call(abi.EVTCHNOP_alloc_unbound)
        return r if r < 0 else self.memory.read_u32(ARG + 4)

    def bind_interdomain(self, rdom, rport):
        self.memory.write(ARG, abi.BIND_INTERDOMAIN.pack(rdom, rport, 0xDEADBEEF))
        r = self.call(abi.EVTCHNOP_bind_interdomain)
        return r if r < 0 else self.memory.read_u32(ARG + 8)

    def port_op(self, cmd, port):
        self.memory.write(ARG, abi.PORT_ARG.pack(port))
        return self.call(cmd)

    def send(self, port):
        return self.port_op(abi.EVTCHNOP_send, port)

    def close(self, port):
        return self.port_op(abi.EVTCHNOP_close, port)

    def unmask(self, port):
        return self.port_op(abi.EVTCHNOP_unmask, port)

    def bind_ipi(self, vcpu):
        self.memory.write(ARG, abi.BIND_IPI.pack(vcpu, 0xDEADBEEF))
        r = self.call(abi.EVTCHNOP_bind_ipi)
        return r if r < 0 else self.memory.read_u32(ARG + 4)

    def bind_vcpu(self, port, vcpu):
        self.memory.write(ARG, abi.BIND_VCPU.pack(port, vcpu))
        return self.call(abi.EVTCHNOP_bind_vcpu)

    def status(self, port, dom=DOMID_SELF, fill=0xAB):
        """(result, (status, vcpu, u.dom, u.port), raw 24 bytes)"""
        self.memory.write(ARG, abi.STATUS.pack(dom, port) + bytes([fill]) * 16)
        r = self.call(abi.EVTCHNOP_status)
        raw = self.memory.read(ARG, abi.STATUS_SIZE)
        st_, vcpu = abi.STATUS_OUT.unpack_from(raw, 8)
        udom = abi.STATUS_U_DOM.unpack_from(raw, 16)[0]
        uport = abi.PORT_ARG.unpack_from(raw, 20)[0]
        return r, (st_, vcpu, udom, uport), raw

    # --- shared_info as the guest sees it ---------------------------------------------
    @property
    def shinfo(self):
        return self.memory.view(L.XEN_SHARED_INFO_GPA, 4096)

    def bit(self, base, port):
        return self.shinfo[base + port // 8] >> (port % 8) & 1

    def pending(self, port):
        return self.bit(abi.SHINFO_EVTCHN_PENDING, port)

    def masked(self, port):
        return self.bit(abi.SHINFO_EVTCHN_MASK, port)

    def set_mask(self, port, on=True):
        off = abi.SHINFO_EVTCHN_MASK + port // 8
        b = self.shinfo[off]
        self.shinfo[off] = b | (1 << port % 8) if on else b & ~(1 << port % 8)

    def sel(self, vcpu=0):
        return int.from_bytes(self.shinfo[abi.vcpu_info(vcpu) + 8:abi.vcpu_info(vcpu) + 16],
                              "little")

    def upcall_pending(self, vcpu=0):
        return self.shinfo[abi.vcpu_info(vcpu)]

    def take_events(self, vcpu=0):
        """What the SDK's upcall does: clear upcall_pending, take pending_sel,
        take the pending unmasked bits of those words; the ports taken."""
        si = self.shinfo
        vi = abi.vcpu_info(vcpu)
        si[vi] = 0
        sel = self.sel(vcpu)
        si[vi + 8:vi + 16] = bytes(8)
        ports = []
        for w in range(64):
            if not sel >> w & 1:
                continue
            off_p = abi.SHINFO_EVTCHN_PENDING + 8 * w
            pend = int.from_bytes(si[off_p:off_p + 8], "little")
            mask = int.from_bytes(si[abi.SHINFO_EVTCHN_MASK + 8 * w:
                                     abi.SHINFO_EVTCHN_MASK + 8 * w + 8], "little")
            take = pend & ~mask
            si[off_p:off_p + 8] = (pend & ~take).to_bytes(8, "little")
            ports += [w * 64 + b for b in range(64) if take >> b & 1]
        return ports


def xen_spec(name, domid, ports=NR, vcpus=1):
    return SimpleNamespace(name=name, domid=domid, vcpus=vcpus,
                           xen=SimpleNamespace(max_evtchn_ports=ports))


def world(machine, specs, vcpus=None):
    """A service and an attached FakeDomain per spec."""
    svc = EvtchnService(machine, specs)
    doms = {}
    for s in specs:
        d = FakeDomain(machine, s.name, s.domid, svc.regions(s.name), s.vcpus)
        svc.attach(d)
        doms[s.name] = d
    return svc, doms


@pytest.fixture
def ab(machine):
    """Guests a (domid 1) and b (domid 2), 4096 ports each, and c (domid 3)
    without Xen services."""
    specs = [xen_spec("a", 1), xen_spec("b", 2),
             SimpleNamespace(name="c", domid=3, vcpus=1, xen=None)]
    svc, doms = world(machine, specs)
    yield svc, doms["a"], doms["b"], doms["c"]
    svc.close()


def channel(a, b):
    """a allocates for b, b binds: (a's port, b's port)."""
    pa = a.alloc_unbound(b.domid)
    pb = b.bind_interdomain(a.domid, pa)
    assert pa > 0 and pb > 0
    return pa, pb


def readable(fd):
    import select
    return bool(select.select([fd], [], [], 0)[0])


# --- the ABI: the C header and the Python structs agree ------------------------------------
PROGRAM = r"""
#include <stddef.h>
#include <stdio.h>
#include "paravm/xen/event_channel.h"
#define P(x) printf(#x " %lu\n", (unsigned long)(x))
int main(void)
{
    P(sizeof(struct evtchn_alloc_unbound)); P(offsetof(struct evtchn_alloc_unbound, remote_dom));
    P(offsetof(struct evtchn_alloc_unbound, port));
    P(sizeof(struct evtchn_bind_interdomain));
    P(offsetof(struct evtchn_bind_interdomain, remote_port));
    P(offsetof(struct evtchn_bind_interdomain, local_port));
    P(sizeof(struct evtchn_send)); P(sizeof(struct evtchn_close)); P(sizeof(struct evtchn_unmask));
    P(sizeof(struct evtchn_bind_ipi)); P(offsetof(struct evtchn_bind_ipi, port));
    P(sizeof(struct evtchn_bind_vcpu)); P(offsetof(struct evtchn_bind_vcpu, vcpu));
    P(sizeof(struct evtchn_status)); P(offsetof(struct evtchn_status, port));
    P(offsetof(struct evtchn_status, status)); P(offsetof(struct evtchn_status, vcpu));
    P(offsetof(struct evtchn_status, u.unbound.dom));
    P(offsetof(struct evtchn_status, u.interdomain.dom));
    P(offsetof(struct evtchn_status, u.interdomain.port));
    P(sizeof(struct vcpu_info)); P(offsetof(struct vcpu_info, evtchn_upcall_mask));
    P(offsetof(struct vcpu_info, evtchn_pending_sel));
    P(sizeof(struct shared_info)); P(offsetof(struct shared_info, evtchn_pending));
    P(offsetof(struct shared_info, evtchn_mask)); P(offsetof(struct shared_info, wc_version));
    P(offsetof(struct shared_info, vcpu_info[1]));
    return 0;
}
"""


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory):
    return probe(tmp_path_factory.mktemp("evtchn_abi"), PROGRAM,
                 ("-std=gnu11", "-Wall", "-Werror"))


def test_struct_layouts_match_the_c_header(c_layout):
    c = c_layout
    assert (c["sizeof(struct evtchn_alloc_unbound)"],
            c["offsetof(struct evtchn_alloc_unbound, remote_dom)"],
            c["offsetof(struct evtchn_alloc_unbound, port)"]) == (
        abi.ALLOC_UNBOUND.size, 2, abi.ALLOC_UNBOUND_PORT) == (8, 2, 4)
    assert (c["sizeof(struct evtchn_bind_interdomain)"],
            c["offsetof(struct evtchn_bind_interdomain, remote_port)"],
            c["offsetof(struct evtchn_bind_interdomain, local_port)"]) == (
        abi.BIND_INTERDOMAIN.size, 4, abi.BIND_INTERDOMAIN_LOCAL_PORT) == (12, 4, 8)
    assert c["sizeof(struct evtchn_send)"] == c["sizeof(struct evtchn_close)"] == \
        c["sizeof(struct evtchn_unmask)"] == abi.PORT_ARG.size == 4
    assert (c["sizeof(struct evtchn_bind_ipi)"], c["offsetof(struct evtchn_bind_ipi, port)"]) \
        == (abi.BIND_IPI.size, abi.BIND_IPI_PORT)
    assert (c["sizeof(struct evtchn_bind_vcpu)"], c["offsetof(struct evtchn_bind_vcpu, vcpu)"]) \
        == (abi.BIND_VCPU.size, 4)
    assert [c[f"offsetof(struct evtchn_status, {f})"]
            for f in ("port", "status", "vcpu", "u.unbound.dom", "u.interdomain.dom",
                      "u.interdomain.port")] == [4, abi.STATUS_STATUS, 12, abi.STATUS_U,
                                                 abi.STATUS_U, abi.STATUS_U_PORT]
    assert c["sizeof(struct evtchn_status)"] == abi.STATUS_SIZE == 24
    assert (c["sizeof(struct vcpu_info)"], c["offsetof(struct vcpu_info, evtchn_upcall_mask)"],
            c["offsetof(struct vcpu_info, evtchn_pending_sel)"]) == (
        abi.VCPU_INFO_SIZE, abi.VI_UPCALL_MASK, abi.VI_PENDING_SEL)
    assert c["offsetof(struct shared_info, vcpu_info[1])"] == abi.vcpu_info(1)
    assert (c["sizeof(struct shared_info)"], c["offsetof(struct shared_info, evtchn_pending)"],
            c["offsetof(struct shared_info, evtchn_mask)"],
            c["offsetof(struct shared_info, wc_version)"]) == (
        abi.SHARED_INFO_SIZE, abi.SHINFO_EVTCHN_PENDING, abi.SHINFO_EVTCHN_MASK,
        abi.SHINFO_WC_VERSION) == (3136, 0x800, 0xA00, 0xC00)


def c_define(text, name):
    m = re.search(rf"^#define\s+{name}\s+(\S+)", text, re.M)
    assert m, f"{name} missing"
    return int(m.group(1), 0)


@pytest.mark.parametrize("name", [n for n in dir(abi) if n.startswith(("EVTCHNOP_", "EVTCHNSTAT_"))]
                         + ["DOMID_SELF", "DOMID_IO", "DOMID_INVALID", "DOMID_FIRST_RESERVED"])
def test_numbers_match_the_c_header(name):
    text = HEADER.read_text() + (HEADER.parent / "xen.h").read_text()   # domid_t's is there
    assert c_define(text, name) == getattr(abi, name)


def test_hypercall_number_and_port_count_match_the_c_header():
    text = HEADER.read_text()
    assert c_define(text, "PV_HC_EVENT_CHANNEL_OP") == abi.HC_EVENT_CHANNEL_OP == 32
    assert c_define(text, "EVTCHN_2L_NR_CHANNELS") == abi.NR_EVENT_CHANNELS == 64 * 64
    assert c_define(text, "XEN_LEGACY_MAX_VCPUS") == abi.XEN_LEGACY_MAX_VCPUS


# --- wiring ---------------------------------------------------------------------------------
def test_attach_writes_boot_info_and_only_xen_domains_get_the_hypercall(ab):
    svc, a, b, c = ab
    assert a.memory.read_u64(L.BOOT_INFO + L.BI_OFF_XEN_SHARED_INFO) == L.XEN_SHARED_INFO_GPA
    assert a.memory.read_u32(L.BOOT_INFO + L.BI_OFF_EVTCHN_VECTOR) == L.VEC_EVTCHN
    (gpa, frames, ro), = svc.regions("a")
    assert (gpa, frames.nframes, ro) == (L.XEN_SHARED_INFO_GPA, 1, False)
    assert svc.regions("a")[0][1] is frames            # the same frame every time
    # c has no Xen services: no region, no hypercall (the dispatcher says ENOSYS),
    # boot info left 0
    assert svc.regions("c") == ()
    assert c.hypercalls.handlers[abi.HC_EVENT_CHANNEL_OP] is None
    assert c.call(abi.EVTCHNOP_alloc_unbound) == -errno.ENOSYS
    assert c.memory.read_u64(L.BOOT_INFO + L.BI_OFF_XEN_SHARED_INFO) == 0


@pytest.mark.parametrize("ports", [0, -1, 4097, 65536])
def test_a_port_count_outside_the_2_level_abi_is_refused(machine, ports):
    with pytest.raises(ValueError, match="max_evtchn_ports"):
        EvtchnService(machine, [xen_spec("a", 1, ports=ports)])


def test_attach_refuses_a_domid_other_than_the_specs(machine):
    svc = EvtchnService(machine, [xen_spec("a", 1)])
    d = FakeDomain(machine, "a", 5, svc.regions("a"))
    with pytest.raises(ValueError, match="domid"):
        svc.attach(d)
    svc.close()


# --- the state machine (D4 case 15) ---------------------------------------------------------
def test_alloc_unbound_hands_out_the_lowest_free_port_from_1(ab):
    svc, a, b, _ = ab
    assert [a.alloc_unbound(2) for _ in range(3)] == [1, 2, 3]
    assert a.close(2) == 0
    assert a.alloc_unbound(2) == 2                       # reused, lowest first
    r, (status, vcpu, udom, _), _ = a.status(1)
    assert (r, status, vcpu, udom) == (0, abi.EVTCHNSTAT_unbound, 0, 2)
    # port 0 exists but is never handed out: status closed, and it cannot be closed
    assert a.status(0)[:2] == (0, (abi.EVTCHNSTAT_closed, 0, 0xABAB, 0xABABABAB))
    assert a.close(0) == -errno.EINVAL
    # DOMID_SELF as remote is rewritten to the caller (a loopback reservation)
    p = a.alloc_unbound(DOMID_SELF)
    assert a.status(p)[1][2] == 1
    # the caller's own domid as dom is the same as DOMID_SELF
    assert a.alloc_unbound(2, dom=1) == p + 1


def test_bind_interdomain_links_both_ends_and_the_new_port_starts_pending(ab):
    svc, a, b, _ = ab
    pa = a.alloc_unbound(2)
    assert b.pending(1) == 0 and b.fired() == 0
    pb = b.bind_interdomain(1, pa)
    assert pb == 1
    assert a.status(pa)[:2] == (0, (abi.EVTCHNSTAT_interdomain, 0, 2, pb))
    assert b.status(pb)[:2] == (0, (abi.EVTCHNSTAT_interdomain, 0, 1, pa))
    # Xen conservatively sets the new local port pending (an event sent to the
    # unbound port may have been dropped), with the full upcall
    assert b.pending(pb) == 1 and b.sel() == 1 and b.upcall_pending() == 1 and b.fired() == 1
    assert a.pending(pa) == 0 and a.fired() == 0
    assert svc.port_status(2, pb).remote_port == pa


def test_send_follows_the_2_level_raise_rule(ab):
    svc, a, b, _ = ab
    pa, pb = channel(a, b)
    assert b.take_events() == [pb] and b.fired() == 1  # the bind's event, handled
    assert a.send(pa) == 0
    assert (b.pending(pb), b.sel(), b.upcall_pending(), b.fired()) == (1, 1, 1, 2)
    # already pending: nothing more (coalesced)
    assert a.send(pa) == 0
    assert b.fired() == 2
    # another port in another word while upcall_pending is still set: its
    # selector bit is set, but no second vector (edge already raised)
    for _ in range(64):
        b.alloc_unbound(1)
    pa2 = a.alloc_unbound(2)
    pb2 = b.bind_interdomain(1, pa2)
    assert pb2 == 66
    assert b.sel() == 0b11 and b.fired() == 2
    assert sorted(b.take_events()) == [pb, pb2]
    # the guest took everything: the next send raises the vector again
    assert b.send(pb) == 0
    assert a.pending(pa) == 1 and a.fired() == 1
    assert a.send(pa) == 0
    assert b.fired() == 3 and b.take_events() == [pb]


def test_send_on_unbound_is_dropped_and_on_a_closed_port_is_einval(ab):
    svc, a, b, _ = ab
    p = a.alloc_unbound(2)
    assert a.send(p) == 0                                  # UNBOUND: silently dropped
    assert a.pending(p) == 0 and a.fired() == 0
    for port in (0, p + 1, NR - 1, NR, 2**32 - 1):         # reserved, free, out of range
        assert a.send(port) == -errno.EINVAL


def test_bind_to_a_port_reserved_for_another_domain_is_einval(machine):
    svc, d = world(machine, [xen_spec("a", 1), xen_spec("b", 2), xen_spec("e", 4)])
    a, b, e = d["a"], d["b"], d["e"]
    p = a.alloc_unbound(2)                                 # for b, not e
    assert e.bind_interdomain(1, p) == -errno.EINVAL
    assert e.status(1)[1][0] == abi.EVTCHNSTAT_closed      # e's port was not taken
    assert b.bind_interdomain(1, p) == 1
    # bound now: nobody can bind it again, not even b
    assert b.bind_interdomain(1, p) == -errno.EINVAL
    assert b.bind_interdomain(1, 0) == -errno.EINVAL       # the reserved port 0
    assert b.bind_interdomain(1, p + 1) == -errno.EINVAL   # a free port
    assert b.bind_interdomain(1, 2**32 - 1) == -errno.EINVAL
    svc.close()


def test_self_bind_local_equals_remote_is_rejected_but_loopback_works(ab):
    svc, a, b, _ = ab
    # The QEMU bug: guess the port the bind itself will allocate.  The
    # remote port must already be UNBOUND for us, so local == remote fails.
    assert a.bind_interdomain(DOMID_SELF, 1) == -errno.EINVAL
    assert a.bind_interdomain(1, 1) == -errno.EINVAL
    assert a.status(1)[1][0] == abi.EVTCHNSTAT_closed
    # A real loopback: reserve for myself, then bind to it.
    p = a.alloc_unbound(DOMID_SELF)
    q = a.bind_interdomain(DOMID_SELF, p)
    assert (p, q) == (1, 2)
    a.take_events()
    assert a.send(p) == 0 and a.take_events() == [q]
    assert a.send(q) == 0 and a.take_events() == [p]


def test_closing_one_end_returns_the_other_to_unbound_silently(ab):
    svc, a, b, _ = ab
    pa, pb = channel(a, b)
    b.take_events()
    assert a.send(pa) == 0                                 # pending at b, not taken yet
    fired = b.fired()
    assert b.close(pb) == 0
    assert b.pending(pb) == 0                              # the closed port's bit is cleared
    assert b.status(pb)[1][0] == abi.EVTCHNSTAT_closed
    # a's end: UNBOUND, reserved for b again, and a heard nothing
    assert a.status(pa)[1][:3] == (abi.EVTCHNSTAT_unbound, 0, 2)
    assert a.pending(pa) == 0 and a.fired() == 0 and b.fired() == fired
    assert a.send(pa) == 0                                 # dropped
    assert b.close(pb) == -errno.EINVAL                    # closed twice
    # b can bind to it again (the same port number comes back)
    assert b.bind_interdomain(1, pa) == pb


def test_masked_pending_port_is_delivered_by_unmask(ab):
    svc, a, b, _ = ab
    pa, pb = channel(a, b)
    b.take_events()
    b.set_mask(pb)
    before = b.fired()
    assert a.send(pa) == 0
    assert b.pending(pb) == 1 and b.sel() == 0 and b.upcall_pending() == 0
    assert b.fired() == before                             # masked: no upcall
    assert b.unmask(pb) == 0
    assert b.masked(pb) == 0 and b.sel() == 1 and b.upcall_pending() == 1
    assert b.fired() == before + 1
    assert b.take_events() == [pb]
    # unmasking a port that is not masked, or not pending, raises nothing
    assert b.unmask(pb) == 0
    b.set_mask(pb)
    assert b.unmask(pb) == 0
    assert b.fired() == before + 1
    assert b.unmask(NR) == -errno.EINVAL and b.unmask(2**32 - 1) == -errno.EINVAL
    assert b.unmask(0) == 0                                 # a valid port: no effect


def test_the_port_table_has_max_evtchn_ports_minus_the_reserved_port_0(machine):
    svc, d = world(machine, [xen_spec("a", 1), xen_spec("s", 2, ports=8)])
    a, s = d["a"], d["s"]
    ports = [a.alloc_unbound(0) for _ in range(NR - 1)]
    assert ports == list(range(1, NR))
    assert a.alloc_unbound(0) == -errno.ENOSPC
    assert a.bind_interdomain(DOMID_SELF, 5) == -errno.ENOSPC   # no local port: before EINVAL
    assert a.bind_ipi(0) == -errno.ENOSPC
    assert a.close(77) == 0 and a.alloc_unbound(0) == 77
    # a smaller table ([domain.xen] max_evtchn_ports = 8): ports 1..7
    assert [s.alloc_unbound(1) for _ in range(8)] == [1, 2, 3, 4, 5, 6, 7, -errno.ENOSPC]
    assert s.send(8) == -errno.EINVAL and s.status(8)[0] == -errno.EINVAL
    svc.close()
    # one port: only the reserved port 0
    svc, d = world(machine, [xen_spec("one", 1, ports=1)])
    assert d["one"].alloc_unbound(0) == -errno.ENOSPC
    assert d["one"].status(0)[1][0] == abi.EVTCHNSTAT_closed
    svc.close()


@pytest.mark.parametrize("gpa", [0, 0x1000, L.BOOT_INFO, L.RESERVED_END - 4,   # reserved 1 MiB
                                 0x200000 - 2,              # straddles the end of RAM
                                 0xE0000000, 2**64 - 1, 2**64 - 4])
def test_an_argument_outside_guest_memory_is_efault(ab, gpa):
    svc, a, b, _ = ab
    for cmd in abi.ARG_SIZE:
        assert a.call(cmd, gpa) == -errno.EFAULT
    assert a.status(1)[1][0] == abi.EVTCHNSTAT_closed       # nothing was allocated


def test_a_copy_back_that_faults_is_efault_with_the_operation_done(ab):
    """As Xen's do_event_channel_op ("cleaning up here would be a mess")."""
    svc, a, b, _ = ab
    a.ro.buffer[:8] = abi.ALLOC_UNBOUND.pack(DOMID_SELF, 2, 0)
    assert a.call(abi.EVTCHNOP_alloc_unbound, RO_GPA) == -errno.EFAULT
    assert a.status(1)[1][:3] == (abi.EVTCHNSTAT_unbound, 0, 2)
    # ops without OUT fields never write: a read-only argument is fine
    a.ro.buffer[:4] = abi.PORT_ARG.pack(1)
    assert a.call(abi.EVTCHNOP_send, RO_GPA) == 0


@pytest.mark.parametrize("cmd", [abi.EVTCHNOP_bind_virq, abi.EVTCHNOP_bind_pirq,
                                 abi.EVTCHNOP_reset, abi.EVTCHNOP_init_control,
                                 abi.EVTCHNOP_expand_array, abi.EVTCHNOP_set_priority,
                                 14, 0x7FFFFFFF, 0xFFFFFFFF, 2**64 - 1])
def test_a_cmd_not_modelled_is_enosys(ab, cmd):
    svc, a, b, _ = ab
    assert a.call(cmd, 0) == -errno.ENOSYS           # before the argument is looked at


def test_cmd_is_read_as_xens_int_cmd(ab):
    svc, a, b, _ = ab
    a.memory.write(ARG, abi.ALLOC_UNBOUND.pack(DOMID_SELF, 2, 0))
    assert a.call((7 << 32) | abi.EVTCHNOP_alloc_unbound) == 0
    assert a.memory.read_u32(ARG + 4) == 1


def test_another_domains_ports_are_eperm(ab):
    svc, a, b, c = ab
    pb = b.alloc_unbound(1)
    assert a.alloc_unbound(1, dom=2) == -errno.EPERM
    assert a.alloc_unbound(1, dom=0) == -errno.EPERM        # not even for the host
    assert a.status(pb, dom=2)[0] == -errno.EPERM
    assert a.status(NR, dom=2)[0] == -errno.EINVAL         # Xen: the port check comes first
    assert b.status(2)[1][0] == abi.EVTCHNSTAT_closed       # nothing was allocated in b


def test_unknown_domains_are_esrch(ab):
    svc, a, b, c = ab
    for dom in (3, 99, abi.DOMID_IO, abi.DOMID_INVALID):     # c has no event channels
        assert a.alloc_unbound(1, dom=dom) == -errno.ESRCH
        assert a.bind_interdomain(dom, 1) == -errno.ESRCH
        assert a.status(1, dom=dom)[0] == -errno.ESRCH
    # the remote of an unbound port is not looked up (as Xen: it may not exist yet)
    assert a.alloc_unbound(99) == 1
    assert svc.send(99, 1) == -errno.ESRCH


def test_status_writes_only_its_out_fields(ab):
    svc, a, b, _ = ab
    p = a.bind_ipi(0)
    r, fields, raw = a.status(p, fill=0x5A)
    assert (r, fields[:2]) == (0, (abi.EVTCHNSTAT_ipi, 0))
    assert raw[16:] == bytes([0x5A]) * 8                     # the union is not written
    assert raw[:2] == abi.DOMID_SELF.to_bytes(2, "little")


def test_bind_ipi_and_bind_vcpu_choose_the_vcpu_notified(machine):
    svc, d = world(machine, [xen_spec("a", 1, vcpus=2), xen_spec("b", 2)])
    a, b = d["a"], d["b"]
    ipi = a.bind_ipi(1)
    assert a.status(ipi)[1][:2] == (abi.EVTCHNSTAT_ipi, 1)
    assert a.send(ipi) == 0
    assert (a.sel(1), a.upcall_pending(1), a.fired(1), a.sel(0), a.fired(0)) == (1, 1, 1, 0, 0)
    assert a.take_events(1) == [ipi]
    assert a.bind_ipi(2) == -errno.ENOENT and a.bind_ipi(2**32 - 1) == -errno.ENOENT
    # an interdomain port moves to vCPU 1; its events go there
    pb = b.alloc_unbound(1)
    pa = a.bind_interdomain(2, pb)
    a.take_events(0)
    assert a.bind_vcpu(pa, 1) == 0
    assert a.status(pa)[1][1] == 1
    assert b.send(pb) == 0
    assert a.fired(1) == 2 and a.take_events(1) == [pa]
    assert a.bind_vcpu(pa, 2) == -errno.ENOENT               # Xen: a vCPU we lack
    assert a.bind_vcpu(ipi, 0) == -errno.EINVAL              # IPI ports keep their vCPU
    assert a.bind_vcpu(0, 0) == -errno.EINVAL and a.bind_vcpu(NR, 0) == -errno.EINVAL
    # closing resets the vCPU: the port comes back on vCPU 0
    assert a.close(pa) == 0
    q = a.alloc_unbound(2)
    assert q == pa and a.status(q)[1][1] == 0
    svc.close()


def test_a_stopped_domain_has_its_ports_closed_and_its_peers_unbound(ab):
    svc, a, b, _ = ab
    pa, pb = channel(a, b)
    lone = a.alloc_unbound(2)
    with svc.open() as h:
        hp = h.bind_unbound_port(1)
        ap = a.bind_interdomain(0, hp)
        assert h.pending() is None                           # binding raised a's new port only
        b_fired = b.fired()
        a.result = SimpleNamespace(how="crashed")
        svc.domain_stopped(a)
        # peers: UNBOUND, reserved for the dead domain, no event
        assert b.status(pb)[1][:3] == (abi.EVTCHNSTAT_unbound, 0, 1)
        assert svc.port_status(0, hp).status == abi.EVTCHNSTAT_unbound
        assert b.fired() == b_fired and h.pending() is None and not readable(h.fileno())
        assert all(svc.port_status(1, p).status == abi.EVTCHNSTAT_closed
                   for p in (pa, lone, ap))
        # sends into the dead domain are dropped
        assert b.send(pb) == 0
        h.notify(hp)
        svc.domain_stopped(a)                                # a second call does nothing
        # a restarted domain starts afresh: zeroed shared_info, ports from 1
        a.shinfo[:] = b"\xff" * 4096
        a2 = FakeDomain(svc.machine, "a", 1, svc.regions("a"))
        svc.attach(a2)
        assert bytes(a2.shinfo) == bytes(4096)
        assert a2.alloc_unbound(2) == 1
        assert a2.bind_interdomain(2, pb) == 2 and b.status(pb)[1][2:] == (1, 2)


# --- the host handle (/dev/xen/evtchn) ------------------------------------------------------
def test_host_binds_a_guests_unbound_port_and_sees_its_sends(ab):
    svc, a, b, _ = ab
    p = a.alloc_unbound(0)
    with svc.open() as h:
        hp = h.bind_interdomain(1, p)
        assert hp == 1 and h.ports == {1}
        # the new port is pending at once (Xen sets it), so the fd is readable
        assert readable(h.fileno())
        assert h.pending() == hp and h.pending() is None and not readable(h.fileno())
        # a delivered port stays masked: a guest send is remembered, not queued
        assert a.send(p) == 0
        assert not readable(h.fileno())
        h.unmask(hp)
        assert readable(h.fileno()) and h.pending() == hp
        # unmasked with nothing remembered: nothing queued; the next send is
        h.unmask(hp)
        assert h.pending() is None
        # two sends before the host looks: one queued, the second remembered
        # while the port is masked and queued at the unmask
        assert a.send(p) == 0 and a.send(p) == 0
        assert h.wait(1.0) == hp and h.pending() is None
        h.unmask(hp)
        assert h.pending() == hp
        h.unmask(hp)
        assert h.pending() is None and h.wait(0.01) is None
        # host -> guest
        a.take_events()
        h.notify(hp)
        assert a.pending(p) == 1 and a.take_events() == [p]


def test_host_unbound_port_bound_by_a_guest(ab):
    svc, a, b, _ = ab
    with svc.open() as h:
        hp = h.bind_unbound_port(2)
        assert svc.port_status(0, hp).status == abi.EVTCHNSTAT_unbound
        assert a.bind_interdomain(0, hp) == -errno.EINVAL    # reserved for b, not a
        pb = b.bind_interdomain(0, hp)
        assert b.pending(pb) == 1                            # the binder's port starts pending
        assert h.pending() is None                           # the host's end does not
        assert b.send(pb) == 0
        assert h.wait(1.0) == hp
        h.notify(hp)
        assert b.pending(pb) == 1
        # the guest closes: the host port is UNBOUND for b again, silently
        h.unmask(hp)
        assert b.close(pb) == 0
        assert svc.port_status(0, hp).status == abi.EVTCHNSTAT_unbound
        assert svc.port_status(0, hp).remote_dom == 2 and h.pending() is None
        h.notify(hp)                                         # dropped, no error
        assert hp in h.ports and svc.host_port_bound(hp)


def test_host_fileno_works_with_selectors(ab):
    svc, a, b, _ = ab
    p = a.alloc_unbound(0)
    with svc.open() as h, selectors.DefaultSelector() as sel:
        sel.register(h, selectors.EVENT_READ)
        hp = h.bind_interdomain(1, p)
        h.pending()
        h.unmask(hp)
        assert sel.select(0) == []
        t = threading.Timer(0.05, a.send, (p,))
        t.start()
        (key, events), = sel.select(5)
        assert key.fileobj is h and events == selectors.EVENT_READ
        assert h.pending() == hp
        t.join()


def test_host_unbind_and_close(ab):
    svc, a, b, _ = ab
    pa = a.alloc_unbound(0)
    pb = b.alloc_unbound(0)
    h = svc.open()
    ha = h.bind_interdomain(1, pa)
    hb = h.bind_interdomain(2, pb)
    assert (ha, hb) == (1, 2) and svc.host_port_bound(ha)
    # a queued event of an unbound port is dropped with it
    h.unbind(ha)
    assert a.status(pa)[1][:3] == (abi.EVTCHNSTAT_unbound, 0, 0)   # reserved for the host again
    assert h.pending() == hb and h.pending() is None and not readable(h.fileno())
    assert not svc.host_port_bound(ha) and h.ports == {hb}
    with pytest.raises(OSError) as e:
        h.unbind(ha)
    assert e.value.errno == errno.ENOTCONN
    with pytest.raises(OSError) as e:
        h.unbind(NR)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        h.notify(ha)
    assert e.value.errno == errno.ENOTCONN
    h.unmask(ha)                                              # ignored, as the driver's write()
    # another handle cannot touch this one's ports
    with svc.open() as other:
        with pytest.raises(OSError) as e:
            other.unbind(hb)
        assert e.value.errno == errno.ENOTCONN
        with pytest.raises(OSError) as e:
            other.notify(hb)
        assert e.value.errno == errno.ENOTCONN
    h.close()
    assert b.status(pb)[1][:3] == (abi.EVTCHNSTAT_unbound, 0, 0)
    assert not svc.host_port_bound(hb)
    h.close()                                                 # idempotent
    for call in (lambda: h.bind_unbound_port(1), lambda: h.pending(), lambda: h.notify(hb),
                 lambda: h.bind_interdomain(1, pa), lambda: h.unbind(hb)):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EBADF


@pytest.mark.parametrize("call, err", [
    (lambda h: h.bind_interdomain(99, 1), errno.ESRCH),
    (lambda h: h.bind_interdomain(3, 1), errno.ESRCH),        # c: no event channels
    (lambda h: h.bind_interdomain(1, 1), errno.EINVAL),       # nothing there
    (lambda h: h.bind_interdomain(1, 2**32), errno.EINVAL),
    (lambda h: h.bind_interdomain(0x10000, 1), errno.EINVAL),
    (lambda h: h.bind_unbound_port(-1), errno.EINVAL),
    (lambda h: h.bind_unbound_port(0x10000), errno.EINVAL),
])
def test_host_errors_are_the_drivers_errnos(ab, call, err):
    svc, a, b, _ = ab
    with svc.open() as h:
        with pytest.raises(OSError) as e:
            call(h)
        assert e.value.errno == err
        assert h.ports == frozenset()


def test_host_port_table_is_4096_ports(ab):
    svc, a, b, _ = ab
    with svc.open() as h:
        ports = [h.bind_unbound_port(1) for _ in range(NR - 1)]
        assert ports == list(range(1, NR))
        with pytest.raises(OSError) as e:
            h.bind_unbound_port(1)
        assert e.value.errno == errno.ENOSPC


def test_host_loopback_between_two_handles(ab):
    svc, a, b, _ = ab
    with svc.open() as h1, svc.open() as h2:
        p1 = h1.bind_unbound_port(0)
        p2 = h2.bind_interdomain(DOMID_SELF, p1)
        assert h2.pending() == p2 and h1.pending() is None
        h1.notify(p1)
        assert h2.pending() is None                          # p2 is still masked
        h2.unmask(p2)
        assert h2.pending() == p2
        h2.notify(p2)
        assert h1.pending() == p1
    assert svc.port_status(0, p1).status == abi.EVTCHNSTAT_closed


def test_internal_send_and_host_port_bound(ab):
    svc, a, b, _ = ab
    pa, pb = channel(a, b)
    b.take_events()
    assert svc.send(1, pa) == 0                               # as if a sent
    assert b.take_events() == [pb]
    assert svc.send(1, 0) == -errno.EINVAL and svc.send(1, NR) == -errno.EINVAL
    with svc.open() as h:
        hp = h.bind_unbound_port(1)
        assert svc.host_port_bound(hp) and not svc.host_port_bound(hp + 1)
        assert not svc.host_port_bound(0) and not svc.host_port_bound(10**9)
        assert svc.send(0, hp) == 0                           # UNBOUND: dropped
        ap = a.bind_interdomain(0, hp)
        a.take_events()
        assert svc.send(0, hp) == 0 and a.take_events() == [ap]
    assert not svc.host_port_bound(hp)
    assert svc.send(0, hp) == -errno.EINVAL


def test_host_calls_from_many_threads(ab):
    """vCPU-side sends and host calls from many threads at once: every port
    ends up delivered, no call fails, and the tables stay consistent."""
    svc, a, b, _ = ab
    ports = [a.alloc_unbound(0) for _ in range(8)]
    errors = []
    with svc.open() as h:
        hps = [h.bind_interdomain(1, p) for p in ports]
        while h.pending() is not None:          # the binds' own events; ports stay masked
            pass

        def worker(i):
            try:
                for _ in range(200):
                    h.notify(hps[i])
                    assert svc.send(1, ports[i]) == 0      # as if a sent
                    h.unmask(hps[i])
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        got = []
        while (p := h.pending()) is not None:
            got.append(p)
        # each worker's last send came before its last unmask: its port is queued
        assert sorted(set(got)) == hps
        assert all(a.pending(p) for p in ports)
        assert all(svc.port_status(0, hp).remote_port == p for hp, p in zip(hps, ports))


# --- hostile guests ---------------------------------------------------------------------
def test_a_guest_scribbling_over_shared_info_only_confuses_itself(ab):
    svc, a, b, _ = ab
    pa, pb = channel(a, b)
    with svc.open() as h:
        hp = h.bind_unbound_port(1)
        ap = a.bind_interdomain(0, hp)
        h.pending()
        h.unmask(hp)
        a.shinfo[:] = b"\xff" * 4096                         # every bit set
        fired = a.fired()
        assert b.send(pb) == 0 and a.fired() == fired         # masked, pending: no upcall
        assert a.send(pa) == 0 and a.send(ap) == 0
        assert h.wait(1.0) == hp                              # the host still hears a
        assert a.unmask(pa) == 0 and a.fired() == fired       # upcall_pending already set
        assert a.close(ap) == 0 and a.pending(ap) == 0        # the VMM clears its bit
        assert svc.port_status(0, hp).status == abi.EVTCHNSTAT_unbound
        a.shinfo[:] = bytes(4096)                             # sane again: events flow
        assert b.send(pb) == 0 and a.fired() == fired + 1 and a.take_events() == [pa]
        a.shinfo[:] = bytes(range(256)) * 16                  # any pattern
        for port in range(NR):
            assert a.send(port) in (0, -errno.EINVAL)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cmd=st.one_of(st.integers(0, 15), st.integers(0, 2**64 - 1)),
       gpa=st.one_of(st.just(ARG), st.integers(0, 2**64 - 1)),
       data=st.binary(min_size=24, max_size=24))
def test_any_hypercall_returns_a_number_and_never_raises(ab, cmd, gpa, data):
    svc, a, b, _ = ab
    a.memory.write(ARG, data)
    r = a.call(cmd, gpa)
    assert isinstance(r, int) and (r >= 0 or -r in (errno.EINVAL, errno.EPERM, errno.ESRCH,
                                                    errno.ENOSPC, errno.EFAULT, errno.ENOSYS,
                                                    errno.ENOENT))


# --- the state machine against a reference model --------------------------------------------
class Model:
    """Xen's rules in a few lines: {domid: {port: state}}; state is
    ("U", remote) or ("I", rdom, rport); absent = FREE; port 0 reserved."""

    SIZES = {0: NR, 1: 6, 2: 6}

    def __init__(self):
        self.ports = {d: {} for d in self.SIZES}
        self.pending = set()          # guest (domid, port) with the pending bit set

    def free(self, d):
        for p in range(1, self.SIZES[d]):
            if p not in self.ports[d]:
                return p
        return None

    def alloc(self, d, remote):
        p = self.free(d)
        if p is None:
            return -errno.ENOSPC
        self.ports[d][p] = ("U", d if remote == DOMID_SELF else remote)
        return p

    def bind(self, d, rdom, rport):
        rdom = d if rdom == DOMID_SELF else rdom
        if rdom not in self.SIZES:
            return -errno.ESRCH
        lp = self.free(d)
        if lp is None:
            return -errno.ENOSPC
        if self.ports[rdom].get(rport) != ("U", d):
            return -errno.EINVAL
        self.ports[d][lp] = ("I", rdom, rport)
        self.ports[rdom][rport] = ("I", d, lp)
        self.raise_(d, lp)
        return lp

    def raise_(self, d, p):
        if d != 0:
            self.pending.add((d, p))

    def send(self, d, p):
        s = self.ports[d].get(p)
        if s is None:
            return -errno.EINVAL
        if s[0] == "I":
            self.raise_(s[1], s[2])
        return 0

    def close(self, d, p):
        s = self.ports[d].pop(p, None)
        if s is None:
            return -errno.EINVAL
        if s[0] == "I":
            self.ports[s[1]][s[2]] = ("U", d)
        self.pending.discard((d, p))
        return 0


DOMS = st.sampled_from([1, 2])
PORTS = st.integers(0, 7)
REMOTES = st.sampled_from([0, 1, 2, 9, DOMID_SELF])


class PortMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        from paravm.memory import MachineMemory
        self.machine = MachineMemory()
        self.svc, doms = world(self.machine, [xen_spec("a", 1, ports=6), xen_spec("b", 2, ports=6)])
        self.doms = {1: doms["a"], 2: doms["b"]}
        self.h = self.svc.open()
        self.model = Model()

    def teardown(self):
        self.svc.close()
        self.machine.close()

    @rule(d=DOMS, remote=REMOTES)
    def alloc_unbound(self, d, remote):
        assert self.doms[d].alloc_unbound(remote) == self.model.alloc(d, remote)

    @rule(d=DOMS, rdom=REMOTES, rport=PORTS)
    def bind_interdomain(self, d, rdom, rport):
        assert self.doms[d].bind_interdomain(rdom, rport) == self.model.bind(d, rdom, rport)

    @rule(d=DOMS, p=PORTS)
    def send(self, d, p):
        assert self.doms[d].send(p) == self.model.send(d, p)

    @rule(d=DOMS, p=PORTS)
    def close(self, d, p):
        assert self.doms[d].close(p) == self.model.close(d, p)

    @rule(d=DOMS)
    def take(self, d):
        taken = self.doms[d].take_events()
        assert {(d, p) for p in taken} == {x for x in self.model.pending if x[0] == d}
        self.model.pending -= {(d, p) for p in taken}

    @rule(remote=REMOTES)
    def host_bind_unbound(self, remote):
        want = self.model.alloc(0, remote)
        assert self.h.bind_unbound_port(remote) == want

    @rule(rdom=REMOTES, rport=PORTS)
    def host_bind_interdomain(self, rdom, rport):
        want = self.model.bind(0, rdom, rport)
        try:
            got = self.h.bind_interdomain(rdom, rport)
        except OSError as e:
            got = -e.errno
        assert got == want

    @precondition(lambda self: self.model.ports[0])
    @rule(data=st.data())
    def host_unbind(self, data):
        p = data.draw(st.sampled_from(sorted(self.model.ports[0])))
        self.model.close(0, p)
        self.h.unbind(p)

    @precondition(lambda self: self.model.ports[0])
    @rule(data=st.data())
    def host_notify(self, data):
        p = data.draw(st.sampled_from(sorted(self.model.ports[0])))
        self.model.send(0, p)
        self.h.notify(p)

    @rule(d=DOMS)
    def stop(self, d):
        for p in list(self.model.ports[d]):
            self.model.close(d, p)
        old = self.doms[d]
        self.svc.domain_stopped(old)
        new = FakeDomain(self.machine, old.name, d, self.svc.regions(old.name))
        self.svc.attach(new)
        self.doms[d] = new

    @invariant()
    def tables_match_the_model(self):
        for d, size in Model.SIZES.items():
            for p in range(1, min(size, 8)):
                st_ = self.svc.port_status(d, p)
                m = self.model.ports[d].get(p)
                if m is None:
                    assert st_.status == abi.EVTCHNSTAT_closed, (d, p)
                elif m[0] == "U":
                    assert (st_.status, st_.remote_dom) == (abi.EVTCHNSTAT_unbound, m[1]), (d, p)
                else:
                    assert (st_.status, st_.remote_dom, st_.remote_port) == (
                        abi.EVTCHNSTAT_interdomain, m[1], m[2]), (d, p)
        for d, dom in self.doms.items():
            for p in range(1, 6):
                assert dom.pending(p) == ((d, p) in self.model.pending), (d, p)
        assert self.h.ports == frozenset(self.model.ports[0])


TestPortMachine = PortMachine.TestCase
TestPortMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
