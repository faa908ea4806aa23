"""The grant service at the hypercall level, on plain memory (no KVM).

Fake domains have what the service uses of a Domain (RAM, GuestMemory with
the service's regions, a hypercall table, an MMIO bus); calls go through the
VMM's own dispatch, so a HypercallError or a GuestMemoryError becomes the
-errno a guest would see.  The window pages are really remapped
(MAP_FIXED), so reading a mapper's window reads the granter's page.
Cases: specs/grant-mpt.md §D2.2-D2.5, §D3 and §D4 (3-6, 11, 12).
"""

from __future__ import annotations

import ctypes
import struct
from types import SimpleNamespace

import pytest

from paravm.arch.x86 import layout as L
from paravm.config import XenSpec
from paravm.hypercall.abi import HC_MAX
from paravm.hypercall.table import HypercallTable
from paravm.memory.guest import GuestMemory, Region
from paravm.services.grant import abi as A
from paravm.services.grant.service import HC_GRANT_TABLE_OP, GrantService
from paravm.vm.bus import Bus
from paravm.vm.vcpu import _dispatch

EFAULT, EINVAL, ENOSYS = 14, 22, 38
MiB = 1 << 20
OPS = 0x200000            # op arrays, in guest RAM
PAGE = 0x300000           # pages the granters share: PAGE + i * 4096
GFN = PAGE >> 12
RW, RO = L.GRANT_WINDOW_GPA, L.GRANT_WINDOW_RO_GPA
HOST = A.GNTMAP_host_map
OK = A.GNTST_okay
KEPT = 0xDEAD             # the handle a map op carries in: a failed op leaves it (Xen)


class FakeDomain:
    def __init__(self, machine, name, domid, regions):
        self.name, self.domid = name, domid
        self.ram = machine.alloc(4 * MiB // 4096, name)
        self.memory = GuestMemory()
        self.memory.add_region(Region(0, self.ram))
        for gpa, frames, ro in regions:
            self.memory.add_region(Region(gpa, frames, readonly=ro))
        self.hypercalls = HypercallTable()
        self.mmio_bus = Bus("MMIO", 1 << 64)
        self._runner = SimpleNamespace(domain=self, hypercall_counts=[0] * HC_MAX)

    def op(self, cmd, uop, count):
        """grant_table_op as the guest sees it: 0 or -errno."""
        return _dispatch(self._runner, HC_GRANT_TABLE_OP, cmd, uop, count, 0, 0, 0)

    # --- the guest's view of its grant table ---------------------------------------
    def grant(self, ref, domid, gfn, flags=A.GTF_permit_access):
        self.memory.write(L.GRANT_TABLE_GPA + 8 * ref, A.GRANT_ENTRY_V1.pack(flags, domid, gfn))

    def flags(self, ref):
        return A.GRANT_ENTRY_V1.unpack(self.memory.read(L.GRANT_TABLE_GPA + 8 * ref, 8))[0]

    # --- op arrays -----------------------------------------------------------------------
    def map(self, *ops):
        """GNTTABOP_map_grant_ref of ``(host_addr, flags, ref, dom)`` ops:
        [(status, handle)]."""
        raw = b"".join(A.MAP_GRANT_REF.pack(h, f, r, d, 99, KEPT, 0) for h, f, r, d in ops)
        self.memory.write(OPS, raw)
        assert self.op(A.GNTTABOP_map_grant_ref, OPS, len(ops)) == 0
        out = [A.MAP_GRANT_REF.unpack_from(self.memory.read(OPS, len(raw)), 32 * i)
               for i in range(len(ops))]
        return [(o[4], o[5]) for o in out]

    def unmap(self, *ops, cmd=A.GNTTABOP_unmap_grant_ref):
        """GNTTABOP_unmap_grant_ref of ``(host_addr, dev_bus_addr, handle)``: [status]."""
        raw = b"".join(A.UNMAP_GRANT_REF.pack(h, d, hd, 99) for h, d, hd in ops)
        self.memory.write(OPS, raw)
        assert self.op(cmd, OPS, len(ops)) == 0
        return [A.UNMAP_GRANT_REF.unpack_from(self.memory.read(OPS, len(raw)), 24 * i)[3]
                for i in range(len(ops))]

    def copy(self, *ops):
        """GNTTABOP_copy of ``(src, dst, len, flags)`` with sides ``(u, domid, offset)``:
        [status]."""
        raw = b"".join(A.COPY.pack(*s, *d, n, f, 99) for s, d, n, f in ops)
        self.memory.write(OPS, raw)
        assert self.op(A.GNTTABOP_copy, OPS, len(ops)) == 0
        return [A.COPY.unpack_from(self.memory.read(OPS, len(raw)), 40 * i)[8]
                for i in range(len(ops))]


def world(machine, *names, **xen):
    """A GrantService and fake domains *names* (domids 1, 2, ...)."""
    x = XenSpec(**{"max_grant_frames": 4, "grant_window_pages": 300, **xen})
    specs = [SimpleNamespace(name=n, domid=i + 1, xen=x) for i, n in enumerate(names)]
    svc = GrantService(machine, specs)
    doms = []
    for s in specs:
        d = FakeDomain(machine, s.name, s.domid, svc.regions(s.name))
        svc.attach(d)
        doms.append(d)
    return svc, doms


@pytest.fixture
def two(machine):
    """A (domid 1) grants; B (domid 2) maps.  Page i of A holds bytes (i+1)*k."""
    svc, (a, b) = world(machine, "a", "b")
    for i in range(4):
        a.memory.write(PAGE + i * 4096, bytes([(i + 1) * k % 256 for k in range(4096)]))
    yield svc, a, b
    svc.close()


def page(i):
    return bytes([(i + 1) * k % 256 for k in range(4096)])


# --- table management ------------------------------------------------------------------
def test_query_size_then_setup_table_grows_and_lists_the_frames(two):
    svc, a, _ = two
    a.memory.write(OPS, A.QUERY_SIZE.pack(A.DOMID_SELF, 0, 0, 99))
    assert a.op(A.GNTTABOP_query_size, OPS, 1) == 0
    assert A.QUERY_SIZE.unpack(a.memory.read(OPS, 16))[1:] == (1, 4, OK)
    a.memory.write(OPS, A.SETUP_TABLE.pack(A.DOMID_SELF, 3, 99, OPS + 0x1000))
    assert a.op(A.GNTTABOP_setup_table, OPS, 1) == 0
    assert A.SETUP_TABLE.unpack(a.memory.read(OPS, 24))[2] == OK
    first = L.GRANT_TABLE_GPA >> 12
    assert struct.unpack("<3Q", a.memory.read(OPS + 0x1000, 24)) == (first, first + 1, first + 2)
    assert svc.table_of("a").nr_frames == 3
    # never shrinks; its own domid works as DOMID_SELF does
    a.memory.write(OPS, A.SETUP_TABLE.pack(1, 1, 99, OPS + 0x1000))
    assert a.op(A.GNTTABOP_setup_table, OPS, 1) == 0
    assert A.SETUP_TABLE.unpack(a.memory.read(OPS, 24))[2] == OK
    assert svc.table_of("a").nr_frames == 3


def test_setup_table_refusals(two):
    svc, a, _ = two
    a.memory.write(OPS, A.SETUP_TABLE.pack(A.DOMID_SELF, 5, 99, OPS + 0x1000))   # max is 4
    assert a.op(A.GNTTABOP_setup_table, OPS, 1) == 0
    assert A.SETUP_TABLE.unpack(a.memory.read(OPS, 24))[2] == A.GNTST_general_error
    assert a.op(A.GNTTABOP_setup_table, OPS, 2) == -EINVAL
    assert a.op(A.GNTTABOP_setup_table, OPS, 0) == -EINVAL
    assert a.op(A.GNTTABOP_query_size, OPS, 2) == -EINVAL
    a.memory.write(OPS, A.SETUP_TABLE.pack(2, 2, 99, OPS + 0x1000))               # B's table
    assert a.op(A.GNTTABOP_setup_table, OPS, 1) == 0
    assert A.SETUP_TABLE.unpack(a.memory.read(OPS, 24))[2] == A.GNTST_permission_denied
    # a frame list outside guest memory: bad_virt_addr, and the table did not grow
    a.memory.write(OPS, A.SETUP_TABLE.pack(A.DOMID_SELF, 4, 99, 1 << 50))
    assert a.op(A.GNTTABOP_setup_table, OPS, 1) == 0
    assert A.SETUP_TABLE.unpack(a.memory.read(OPS, 24))[2] == A.GNTST_bad_virt_addr
    assert svc.table_of("a").nr_frames == 1
    # a frame list over the PML4 (the reserved area): bad_virt_addr, nothing written
    pml4 = a.memory.read(0x1000, 32)
    a.memory.write(OPS, A.SETUP_TABLE.pack(A.DOMID_SELF, 4, 99, 0x1000))
    assert a.op(A.GNTTABOP_setup_table, OPS, 1) == 0
    assert A.SETUP_TABLE.unpack(a.memory.read(OPS, 24))[2] == A.GNTST_bad_virt_addr
    assert a.memory.read(0x1000, 32) == pml4 and svc.table_of("a").nr_frames == 1


def test_command_checks(two):
    _, a, _ = two
    assert a.op(A.GNTTABOP_map_grant_ref | 1 << 12, OPS, 1) == -EINVAL    # continuation bits
    assert a.op(A.GNTTABOP_query_size | 1 << 40, OPS, 1) == -EINVAL
    assert a.op(A.GNTTABOP_map_grant_ref, OPS, 1 << 31) == -EINVAL        # negative count
    assert a.op(A.GNTTABOP_map_grant_ref, OPS, (1 << 20) + 1) == -EINVAL  # beyond paravm's bound
    for cmd in (A.GNTTABOP_dump_table, A.GNTTABOP_transfer, A.GNTTABOP_get_status_frames,
                A.GNTTABOP_swap_grant_ref, A.GNTTABOP_cache_flush, 13, 0x7F, 0xFFF):
        assert a.op(cmd, OPS, 1) == -ENOSYS, cmd
    assert a.op(A.GNTTABOP_map_grant_ref, OPS, 0) == 0                     # nothing to do


def test_versions(two):
    _, a, _ = two
    for version, want in ((1, 0), (2, -ENOSYS), (0, -EINVAL), (3, -EINVAL)):
        a.memory.write(OPS, A.SET_VERSION.pack(version))
        assert a.op(A.GNTTABOP_set_version, OPS, 1) == want, version
    a.memory.write(OPS, A.SET_VERSION.pack(1))
    assert a.op(A.GNTTABOP_set_version, OPS, 0) == 0       # Xen ignores the count here
    a.memory.write(OPS, A.GET_VERSION.pack(A.DOMID_SELF, 0, 0))
    assert a.op(A.GNTTABOP_get_version, OPS, 1) == 0
    assert A.GET_VERSION.unpack(a.memory.read(OPS, 8))[2] == 1
    a.memory.write(OPS, A.GET_VERSION.pack(2, 0, 0))
    assert a.op(A.GNTTABOP_get_version, OPS, 1) == -1       # EPERM


def test_op_arrays_outside_writable_memory_are_efault_and_run_nothing(two):
    _, a, b = two
    a.grant(8, 2, GFN)
    assert b.op(A.GNTTABOP_map_grant_ref, 1 << 50, 1) == -EFAULT
    assert b.op(A.GNTTABOP_map_grant_ref, 2**64 - 16, 1) == -EFAULT       # wraps around
    assert b.op(A.GNTTABOP_map_grant_ref, b.ram.size - 16, 1) == -EFAULT  # runs off RAM
    assert b.op(A.GNTTABOP_map_grant_ref, 0x9000, 1) == -EFAULT           # the IDT page
    # a well-formed op in B's read-only window (mapped there from A's page) would
    # map, but its status could not be written back: nothing happens at all
    a.grant(9, 2, GFN + 1, A.GTF_permit_access | A.GTF_readonly)
    assert b.map((RO, HOST | A.GNTMAP_readonly, 9, 1)) == [(OK, 0)]
    a.memory.write(PAGE + 4096, A.MAP_GRANT_REF.pack(RW, HOST, 8, 1, 99, 0, 0))
    assert b.op(A.GNTTABOP_map_grant_ref, RO, 1) == -EFAULT
    assert a.flags(8) == A.GTF_permit_access                       # never pinned


# --- map / unmap -------------------------------------------------------------------------
def test_map_shows_the_granters_page_and_pins_until_unmap(two):
    svc, a, b = two
    a.grant(8, 2, GFN)
    a.grant(9, 2, GFN + 1, A.GTF_permit_access | A.GTF_readonly)
    (s0, h0), (s1, h1) = b.map((RW + 4096, HOST, 8, 1), (RO, HOST | A.GNTMAP_readonly, 9, 1))
    assert (s0, s1) == (OK, OK) and h0 != h1
    assert b.memory.read(RW + 4096, 4096) == page(0)
    assert b.memory.read(RO, 4096) == page(1)
    assert a.flags(8) == A.GTF_permit_access | A.GTF_reading | A.GTF_writing
    assert a.flags(9) == A.GTF_permit_access | A.GTF_readonly | A.GTF_reading
    b.memory.write(RW + 4096 + 10, b"from B")                 # writes land in A's page
    assert a.memory.read(PAGE + 10, 6) == b"from B"
    a.memory.write(PAGE + 4096, b"new")                       # A's writes show in B's view
    assert b.memory.read(RO, 3) == b"new"
    assert b.unmap((RW + 4096, 0, h0), (RO, 0, h1)) == [OK, OK]
    assert a.flags(8) == A.GTF_permit_access and a.flags(9) == A.GTF_permit_access | A.GTF_readonly
    assert b.memory.read(RW + 4096, 4096) == bytes(4096)      # the window's own page again
    assert b.memory.read(RO, 4096) == bytes(4096)
    assert not svc.table_of("a").active and not svc.table_of("b").maptrack


@pytest.mark.parametrize("host_addr, flags", [
    (RW - 4096, HOST),                                  # below the window
    (RW + 300 * 4096, HOST),                            # just past its last page
    (RW + 8, HOST),                                     # not page aligned
    (RW, HOST | A.GNTMAP_readonly),                     # a read-only map into the RW window
    (RO, HOST),                                         # a writable map into the RO window
    (PAGE, HOST),                                       # ordinary RAM
    (2**64 - 4096, HOST),
])
def test_host_addr_outside_the_matching_window_is_bad_virt_addr(two, host_addr, flags):
    svc, a, b = two
    a.grant(8, 2, GFN)
    assert b.map((host_addr, flags, 8, 1)) == [(A.GNTST_bad_virt_addr, KEPT)]
    assert a.flags(8) == A.GTF_permit_access                  # the pin was undone
    assert not svc.table_of("b").maptrack


def test_an_occupied_window_page_is_bad_virt_addr(two):
    _, a, b = two
    a.grant(8, 2, GFN)
    a.grant(9, 2, GFN + 1)
    assert b.map((RW, HOST, 8, 1))[0][0] == OK
    assert b.map((RW, HOST, 9, 1)) == [(A.GNTST_bad_virt_addr, KEPT)]
    assert a.flags(9) == A.GTF_permit_access
    assert b.memory.read(RW, 4096) == page(0)                 # the first mapping stays


def test_map_checks_in_xens_order(two):
    _, a, b = two
    a.grant(8, 2, GFN)
    a.grant(9, 3, GFN)                                        # names domain 3 (XSA-316)
    a.grant(10, 2, GFN, A.GTF_permit_access | A.GTF_readonly)
    a.grant(11, 2, GFN, A.GTF_accept_transfer)
    a.grant(12, 2, GFN, A.GTF_permit_access | A.GTF_PCD)
    a.grant(13, 2, GFN, A.GTF_permit_access | A.GTF_sub_page)
    got = b.map((RW, 0, 8, 1),                                     # neither host nor device
                (RW, A.GNTMAP_device_map, 8, 1),                   # device map from a guest
                (RW, HOST | A.GNTMAP_application_map, 8, 1),
                (RW, HOST | A.GNTMAP_contains_pte, 8, 1),
                (RW, HOST, 8, 77),                                 # no such domain
                (RW, HOST, 4 * 512, 1),                            # past the table (1 frame)
                (RW, HOST, 512, 1),
                (RW, HOST, 9, 1),
                (RW, HOST, 10, 1),                                 # RW map of an RO grant
                (RW, HOST, 11, 1),
                (RW, HOST, 12, 1),                                 # cache attributes
                (RW, HOST, 13, 1),
                (RW, HOST, 0xFFFFFFFF, 1))
    assert [s for s, _ in got] == [
        A.GNTST_bad_gntref, A.GNTST_general_error, A.GNTST_general_error,
        A.GNTST_general_error, A.GNTST_bad_domain, A.GNTST_bad_gntref, A.GNTST_bad_gntref,
        A.GNTST_general_error, A.GNTST_general_error, A.GNTST_general_error,
        A.GNTST_general_error, A.GNTST_general_error, A.GNTST_bad_gntref]
    assert all(a.flags(r) & (A.GTF_reading | A.GTF_writing) == 0 for r in range(8, 14))
    assert b.map((RW, HOST, 8, 1))[0][0] == OK                      # the window page is free


def test_a_frame_the_granter_does_not_own_is_bad_page(two):
    _, a, b = two
    nframes = a.ram.nframes
    for ref, gfn in ((8, 0), (9, 0xFF), (10, nframes), (11, L.GRANT_TABLE_GPA >> 12),
                     (12, RW >> 12), (13, 0xFFFFFFFF)):
        a.grant(ref, 2, gfn)
        assert b.map((RW, HOST, ref, 1)) == [(A.GNTST_bad_page, KEPT)], hex(gfn)
        assert a.flags(ref) == A.GTF_permit_access
    a.grant(14, 2, 0x100)                                     # the first page above 1 MiB
    assert b.map((RW, HOST, 14, 1))[0][0] == OK


def test_unmap_errors_double_unmap_and_split_halves(two):
    svc, a, b = two
    a.grant(8, 2, GFN)
    ((_, h),) = b.map((RW, HOST, 8, 1))
    assert b.unmap((RW, 0, h + 1), (RW, 0, 1 << 31)) == [A.GNTST_bad_handle] * 2
    assert b.unmap((RW + 4096, 0, h)) == [A.GNTST_general_error]   # not mapped there
    # Xen's unmap_common: the host half goes only with its host_addr; a
    # dev_bus_addr is ignored without a device half (Xen >= 4.15), so these
    # succeed and remove nothing
    assert b.unmap((0, 0, h), (0, 4096, h)) == [OK, OK]
    assert a.flags(8) & A.GTF_reading and b.memory.read(RW, 4096) == page(0)
    assert b.unmap((RW, 0, h)) == [OK]
    assert b.unmap((RW, 0, h)) == [A.GNTST_bad_handle]              # double unmap
    assert a.flags(8) == A.GTF_permit_access
    assert b.unmap((RW, 0, 0xFFFFFFFF)) == [A.GNTST_bad_handle]
    assert not svc.table_of("b").maptrack


def test_unmap_and_replace_needs_new_addr_zero(two):
    _, a, b = two
    a.grant(8, 2, GFN)
    ((_, h),) = b.map((RW, HOST, 8, 1))
    # struct gnttab_unmap_and_replace: host_addr, new_addr, handle, status
    assert b.unmap((RW, RW + 4096, h), cmd=A.GNTTABOP_unmap_and_replace) == \
        [A.GNTST_general_error]
    assert a.flags(8) & A.GTF_reading
    assert b.unmap((RW, 0, h), cmd=A.GNTTABOP_unmap_and_replace) == [OK]
    assert a.flags(8) == A.GTF_permit_access


def test_xtf_self_grant_maps_ones_own_page(two):
    _, a, _ = two
    a.memory.write(PAGE, b"mine")
    a.grant(8, 1, GFN)
    ((s, h),) = a.map((RW, HOST, 8, 1))
    assert s == OK and a.memory.read(RW, 4) == b"mine"
    a.memory.write(RW + 4, b"!")
    assert a.memory.read(PAGE, 5) == b"mine!"
    assert a.unmap((RW, 0, h)) == [OK] and a.flags(8) == A.GTF_permit_access


def test_granter_rewriting_a_pinned_entry_changes_nothing_for_the_mapper(two):
    _, a, b = two
    a.grant(8, 2, GFN, A.GTF_permit_access | A.GTF_readonly)
    ((s, h),) = b.map((RO, HOST | A.GNTMAP_readonly, 8, 1))
    assert s == OK
    a.grant(8, 2, GFN + 3, 0)                                 # a hostile granter: invalid, other frame
    assert b.memory.read(RO, 4096) == page(0)                 # the active entry's frame
    assert b.map((RW, HOST, 8, 1)) == [(A.GNTST_general_error, KEPT)]   # first write pin validates
    assert b.unmap((RO, 0, h)) == [OK]
    assert b.map((RO, HOST | A.GNTMAP_readonly, 8, 1)) == [(A.GNTST_general_error, KEPT)]


def test_another_domain_cannot_share_a_pinned_ref(machine):
    svc, (a, b, c) = world(machine, "a", "b", "c")
    a.grant(8, 2, GFN)
    assert b.map((RW, HOST, 8, 1))[0][0] == OK
    assert c.map((RW, HOST, 8, 1)) == [(A.GNTST_general_error, KEPT)]
    svc.close()


def test_pin_counter_overflow_at_128_maps_of_one_kind(machine):
    svc, (a, b) = world(machine, "a", "b", grant_window_pages=130)
    a.grant(8, 2, GFN)
    got = b.map(*[(RW + i * 4096, HOST, 8, 1) for i in range(129)])
    assert [s for s, _ in got[:128]] == [OK] * 128
    assert got[128][0] == A.GNTST_general_error
    # the read-only counter is a different one
    assert b.map((RO, HOST | A.GNTMAP_readonly, 8, 1))[0][0] == OK
    svc.close()


def test_maptrack_exhaustion_is_no_space(machine):
    svc, (a, b) = world(machine, "a", "b", max_maptrack_frames=1, grant_window_pages=257)
    for ref in range(8, 8 + 257):
        a.grant(ref, 2, GFN)
    got = b.map(*[(RW + i * 4096, HOST, 8 + i, 1) for i in range(257)])
    assert [s for s, _ in got[:256]] == [OK] * 256
    assert got[256] == (A.GNTST_no_space, KEPT)
    assert b.unmap((RW, 0, got[0][1])) == [OK]                  # a freed handle is reused
    assert b.map((RW, HOST, 8, 1))[0] == (OK, got[0][1])
    svc.close()


def test_the_host_maps_a_guests_grant_through_the_core(two):
    svc, a, _ = two
    a.grant(8, 0, GFN + 2)
    placed = []

    def place(frame, readonly):
        placed.append((frame, readonly))
        return lambda: placed.append("undone")

    handle, _ = svc.grants.map(svc.host, 1, 8, HOST, 0, place, hvm=False)
    frame, readonly = placed[0]
    assert not readonly and a.flags(8) == A.GTF_permit_access | A.GTF_reading | A.GTF_writing
    assert ctypes.string_at(frame.hva, 4096) == page(2)
    svc.grants.unmap(svc.host, handle)
    assert placed[-1] == "undone" and a.flags(8) == A.GTF_permit_access


# --- copy ---------------------------------------------------------------------------------
def test_copy_between_grants_and_own_frames(two):
    _, a, b = two
    a.grant(8, 2, GFN)                                        # A's page 0, writable
    a.grant(9, 2, GFN + 1, A.GTF_permit_access | A.GTF_readonly)
    b.memory.write(PAGE + 100, b"B's bytes")
    got = b.copy(((PAGE >> 12, A.DOMID_SELF, 100), (8, 1, 2000), 9, A.GNTCOPY_dest_gref),
                 ((9, 1, 4000), (GFN + 1, A.DOMID_SELF, 0), 96, A.GNTCOPY_source_gref),
                 ((8, 1, 2000), (9, 1, 0), 9, A.GNTCOPY_source_gref | A.GNTCOPY_dest_gref))
    assert got == [OK, OK, A.GNTST_general_error]             # the last writes into an RO grant
    assert a.memory.read(PAGE + 2000, 9) == b"B's bytes"
    assert b.memory.read(PAGE + 4096, 96) == page(1)[4000:]
    assert a.memory.read(PAGE + 4096, 9) == page(1)[:9]       # unchanged
    assert a.flags(8) == A.GTF_permit_access                  # pins held only during the op
    assert a.flags(9) == A.GTF_permit_access | A.GTF_readonly


def test_copy_refusals(two):
    _, a, b = two
    a.grant(8, 2, GFN)
    a.grant(10, 3, GFN)
    self_frame = (GFN, A.DOMID_SELF, 0)
    got = b.copy(((GFN, 1, 0), self_frame, 8, 0),                     # A's frame by number
                 (self_frame, (GFN, 2, 0), 8, 0),                     # own domid, not SELF
                 ((GFN, 1, 0), self_frame, 0, 0),                     # len 0: okay at once
                 ((0xFFFF_FFFF, 77, 0xFFFF), (0, 0, 0xFFFF), 0, 3),   # len 0 with garbage
                 ((8, 1, 4000), self_frame, 200, A.GNTCOPY_source_gref),   # crosses a page
                 (self_frame, (8, 1, 0), 4097, A.GNTCOPY_dest_gref),
                 ((8, 77, 0), self_frame, 8, A.GNTCOPY_source_gref),  # no such domain
                 ((10, 1, 0), self_frame, 8, A.GNTCOPY_source_gref),  # names domain 3
                 ((4096, 1, 0), self_frame, 8, A.GNTCOPY_source_gref),   # past the table
                 ((8, 1, 0), (0x10, A.DOMID_SELF, 0), 8, A.GNTCOPY_source_gref),  # low 1 MiB
                 ((8, 1, 0), (1 << 40, A.DOMID_SELF, 0), 8, A.GNTCOPY_source_gref))
    assert got == [A.GNTST_permission_denied, A.GNTST_permission_denied, OK, OK,
                   A.GNTST_bad_copy_arg, A.GNTST_bad_copy_arg, A.GNTST_bad_domain,
                   A.GNTST_general_error, A.GNTST_bad_gntref, A.GNTST_bad_page,
                   A.GNTST_bad_page]
    assert a.flags(8) == A.GTF_permit_access
    assert all(s <= 0 for s in got)


# --- domains that stop ----------------------------------------------------------------------
def test_a_stopped_mapper_loses_its_mappings_and_the_granter_can_revoke(two):
    svc, a, b = two
    a.grant(8, 2, GFN)
    a.grant(9, 2, GFN + 1, A.GTF_permit_access | A.GTF_readonly)
    b.map((RW, HOST, 8, 1), (RO, HOST | A.GNTMAP_readonly, 9, 1))
    assert a.flags(8) & A.GTF_writing and a.flags(9) & A.GTF_reading
    svc.domain_stopped(b)
    assert a.flags(8) == A.GTF_permit_access
    assert a.flags(9) == A.GTF_permit_access | A.GTF_readonly
    assert not svc.table_of("a").active
    assert b.op(A.GNTTABOP_map_grant_ref, OPS, 1) == -3          # ESRCH: it is gone


def test_a_stopped_granters_page_stays_with_its_mapper_until_unmap(two):
    svc, a, b = two
    a.grant(8, 2, GFN)
    a.grant(9, 2, GFN + 1)
    ((s, h),) = b.map((RW, HOST, 8, 1))
    assert s == OK
    svc.domain_stopped(a)
    assert b.memory.read(RW, 4096) == page(0)                 # Xen's zombie: still readable
    b.memory.write(RW, b"still")
    assert b.memory.read(RW, 5) == b"still"
    assert b.map((RW + 4096, HOST, 9, 1)) == [(A.GNTST_bad_domain, KEPT)]
    assert b.map((RW + 4096, HOST, 8, 1)) == [(A.GNTST_bad_domain, KEPT)]
    assert b.copy(((8, 1, 0), (GFN, A.DOMID_SELF, 0), 8, A.GNTCOPY_source_gref)) == \
        [A.GNTST_bad_domain]
    assert b.unmap((RW, 0, h)) == [OK]
    assert b.memory.read(RW, 4096) == bytes(4096)
    assert 1 not in svc.grants.tables                          # buried with its last pin


def test_a_restarted_granters_old_table_lives_until_its_last_unpin(two, machine):
    svc, a, b = two
    a.grant(8, 2, GFN)
    ((_, h),) = b.map((RW, HOST, 8, 1))
    old = svc.table_of("a")
    svc.domain_stopped(a)
    # the next instance of A (after its domain was destroyed): A's old windows
    # go, its old table stays while B pins entry 8
    live = machine.live_ranges
    a2 = FakeDomain(machine, "a", 1, svc.regions("a"))
    svc.attach(a2)
    assert machine.live_ranges == live - 2 + 3 + 1            # + a2's RAM
    assert old.frames.fd >= 0 and svc.grants.tables[1] is svc.table_of("a") is not old
    assert b.memory.read(RW, 4096) == page(0)
    assert b.map((RW + 4096, HOST, 8, 1)) == [(A.GNTST_general_error, KEPT)]   # a2's entry 8
    assert b.unmap((RW, 0, h)) == [OK]
    assert old.frames.fd >= 0                                 # buried, freed at the next instance
    svc.domain_stopped(a2)
    svc.regions("a")
    assert old.frames.fd == -1
