"""The hypervisor's grant core (paravm.services.grant.table), no KVM.

Granters and mappers are GrantTables over plain machine frames; a mapping's
"place" is a no-op or records the frame.  Cases: specs/grant-mpt.md §D2.2-D2.5,
§D3, §D4 12, and XTF's grant-table PoCs (xsa-224, xsa-234, xsa-316), plus a
hypothesis state machine of grant entry transitions.
"""

from __future__ import annotations

import ctypes

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from paravm.memory import PAGE_SIZE, MachineMemory
from paravm.services.grant import abi as A
from paravm.services.grant.table import Frame, GrantError, Grants

from grant_fakes import GrantingDomain

HOST = A.GNTMAP_host_map
RO = A.GNTMAP_host_map | A.GNTMAP_readonly
DEV = A.GNTMAP_device_map
OK = A.GNTST_okay


class Dom(GrantingDomain):
    """A domain for the core: 16 pages of RAM and a one-frame grant table."""

    def __init__(self, machine, grants, domid, *, max_maptrack_frames=1024, ram_pages=16):
        super().__init__(machine, grants, domid, ram_pages=ram_pages,
                         max_maptrack_frames=max_maptrack_frames)

    def grant(self, ref, domid, gfn, flags=A.GTF_permit_access):
        self.write_entry(ref, flags, domid, gfn)


def nothing(frame, readonly):
    return None


@pytest.fixture
def world(machine):
    grants = Grants()
    a = Dom(machine, grants, 1)
    b = Dom(machine, grants, 2)
    host = Dom(machine, grants, 0)
    return grants, a, b, host


def status_of(fn):
    """Run *fn*; the GNTST status it raised (OK if none)."""
    try:
        fn()
    except GrantError as e:
        return e.status
    return OK


# --- map / pin ---------------------------------------------------------------------------
def test_a_map_pins_the_entry_and_sets_reading_writing_until_unmap(world):
    grants, a, b, _ = world
    a.grant(8, 2, 3)
    a.grant(9, 2, 4, A.GTF_permit_access | A.GTF_readonly)
    h_rw, m = grants.map(b.table, 1, 8, HOST, 0, nothing)
    h_ro, _ = grants.map(b.table, 1, 9, RO, 0, nothing)
    assert a.flags(8) == A.GTF_permit_access | A.GTF_reading | A.GTF_writing
    assert a.flags(9) == A.GTF_permit_access | A.GTF_readonly | A.GTF_reading
    assert m.frame.hva == a.ram.hva + 3 * PAGE_SIZE
    assert a.table.active[8].pin == 1 << A.PIN_HOST_WRITE
    assert a.table.active[9].pin == 1 << A.PIN_HOST_READ
    grants.unmap(b.table, h_rw)
    grants.unmap(b.table, h_ro)
    assert a.flags(8) == A.GTF_permit_access
    assert a.flags(9) == A.GTF_permit_access | A.GTF_readonly
    assert not a.table.active and not b.table.maptrack


def test_place_gets_the_granters_frame_and_its_undo_runs_before_the_unpin(world):
    grants, a, b, _ = world
    a.grant(8, 2, 5)
    seen = []

    def place(frame, readonly):
        seen.append((frame.hva, readonly))
        return lambda: seen.append(a.flags(8))     # the pin is still there while undoing

    h, _ = grants.map(b.table, 1, 8, RO, 0, place)
    assert seen == [(a.ram.hva + 5 * PAGE_SIZE, True)]
    grants.unmap(b.table, h)
    assert seen[1] == A.GTF_permit_access | A.GTF_reading and a.flags(8) == A.GTF_permit_access


def test_a_failing_place_undoes_the_pin_and_the_handle(world):
    grants, a, b, _ = world
    a.grant(8, 2, 5)

    def place(frame, readonly):
        raise GrantError(A.GNTST_bad_virt_addr)

    assert status_of(lambda: grants.map(b.table, 1, 8, HOST, 0, place)) == A.GNTST_bad_virt_addr
    assert a.flags(8) == A.GTF_permit_access and not b.table.maptrack and not a.table.active


def test_xsa316_a_wrong_domid_is_general_error_and_no_status_is_positive(world):
    grants, a, b, _ = world
    a.grant(8, 3, 3)                                         # names domain 3, not 2
    a.grant(9, 2, 3, A.GTF_invalid)
    a.grant(10, 2, 3, A.GTF_accept_transfer)
    a.grant(11, 2, 3, A.GTF_transitive)
    a.grant(12, 2, 3, A.GTF_permit_access | A.GTF_sub_page)
    a.grant(13, 2, 3, A.GTF_permit_access | A.GTF_readonly)
    got = [status_of(lambda r=r, f=f: grants.map(b.table, 1, r, f, 0, nothing))
           for r, f in ((8, HOST), (9, HOST), (10, HOST), (11, HOST), (12, HOST), (13, HOST))]
    assert got == [A.GNTST_general_error] * 6
    assert all(a.flags(r) & (A.GTF_reading | A.GTF_writing) == 0 for r in range(8, 14))
    more = [status_of(lambda: grants.map(b.table, 1, 4096, HOST, 0, nothing)),
            status_of(lambda: grants.map(b.table, 77, 8, HOST, 0, nothing)),
            status_of(lambda: grants.map(b.table, 1, 8, 0, 0, nothing)),
            status_of(lambda: grants.map(b.table, 1, 8, HOST | DEV, 0, nothing))]
    assert more == [A.GNTST_bad_gntref, A.GNTST_bad_domain, A.GNTST_bad_gntref,
                    A.GNTST_general_error]
    assert all(s <= 0 for s in got + more) and not b.table.maptrack


def test_a_frame_the_granter_does_not_own_is_bad_page(world):
    grants, a, b, _ = world
    a.grant(8, 2, 0)                          # gfn 0 resolves to nothing
    a.grant(9, 2, 1 << 31)
    for ref in (8, 9):
        assert status_of(lambda r=ref: grants.map(b.table, 1, r, HOST, 0, nothing)) == \
            A.GNTST_bad_page
        assert a.flags(ref) == A.GTF_permit_access     # bits set for the check are cleared


def test_xsa234_unmapping_the_readonly_handle_keeps_the_writable_pin(world):
    grants, a, b, _ = world
    a.grant(8, 2, 3)
    h_rw, _ = grants.map(b.table, 1, 8, HOST, 0, nothing)
    h_ro, _ = grants.map(b.table, 1, 8, RO, 0, nothing)
    grants.unmap(b.table, h_ro)
    assert a.flags(8) == A.GTF_permit_access | A.GTF_reading | A.GTF_writing
    assert not a.end_access(8)
    grants.unmap(b.table, h_rw)
    assert a.flags(8) == A.GTF_permit_access and a.end_access(8)


def test_xsa234_reverse_order_drops_writing_first(world):
    grants, a, b, _ = world
    a.grant(8, 2, 3)
    h_rw, _ = grants.map(b.table, 1, 8, HOST, 0, nothing)
    h_ro, _ = grants.map(b.table, 1, 8, RO, 0, nothing)
    grants.unmap(b.table, h_rw)
    assert a.flags(8) == A.GTF_permit_access | A.GTF_reading
    grants.unmap(b.table, h_ro)
    assert a.flags(8) == A.GTF_permit_access


def test_xsa224_domain0_host_and_device_halves_are_unmapped_separately(world):
    grants, a, _, host = world
    a.grant(8, 0, 3)
    h, m = grants.map(host.table, 1, 8, HOST | DEV, 0, nothing, hvm=False)
    bus = m.frame.mfn * PAGE_SIZE
    act = a.table.active[8]
    assert act.pin == (1 << A.PIN_HOST_WRITE) | (1 << A.PIN_DEV_WRITE)
    grants.unmap(host.table, h, host=True, device=False)
    assert act.pin == 1 << A.PIN_DEV_WRITE                  # no extra writable ref left over
    assert a.flags(8) == A.GTF_permit_access | A.GTF_reading | A.GTF_writing
    assert status_of(lambda: grants.unmap(host.table, h, dev_bus_addr=bus + PAGE_SIZE,
                                          host=False)) == A.GNTST_bad_dev_addr
    grants.unmap(host.table, h, dev_bus_addr=bus, host=False, device=True)
    assert a.flags(8) == A.GTF_permit_access and not host.table.maptrack
    assert status_of(lambda: grants.unmap(host.table, h)) == A.GNTST_bad_handle


def test_a_translated_mapper_may_not_device_map(world):
    grants, a, b, _ = world
    a.grant(8, 2, 3)
    for flags in (HOST | DEV, DEV, HOST | A.GNTMAP_application_map, HOST | A.GNTMAP_contains_pte):
        assert status_of(lambda f=flags: grants.map(b.table, 1, 8, f, 0, nothing)) == \
            A.GNTST_general_error
    assert a.flags(8) == A.GTF_permit_access and not b.table.maptrack


def test_dev_bus_addr_is_checked_only_against_a_device_half(world):
    grants, a, b, host = world
    a.grant(8, 2, 3)
    h, _ = grants.map(b.table, 1, 8, HOST, 0, nothing)
    # Xen >= 4.15: a host-only mapping ignores dev_bus_addr; the host half goes
    grants.unmap(b.table, h, dev_bus_addr=0x1234000)
    assert not b.table.maptrack and a.flags(8) == A.GTF_permit_access
    a.grant(9, 0, 3)
    h, m = grants.map(host.table, 1, 9, DEV, 0, nothing, hvm=False)
    assert status_of(lambda: grants.unmap(host.table, h, dev_bus_addr=PAGE_SIZE)) == \
        A.GNTST_bad_dev_addr
    assert a.table.active[9].pin == 1 << A.PIN_DEV_WRITE      # nothing changed
    grants.unmap(host.table, h, dev_bus_addr=m.frame.mfn * PAGE_SIZE)
    assert a.flags(9) == A.GTF_permit_access


def test_unmap_at_the_wrong_host_addr_is_general_error_and_keeps_the_mapping(world):
    grants, a, b, _ = world
    a.grant(8, 2, 3)
    h, _ = grants.map(b.table, 1, 8, HOST, 0x1000, nothing)
    assert status_of(lambda: grants.unmap(b.table, h, host_addr=0x2000)) == \
        A.GNTST_general_error
    assert a.flags(8) & A.GTF_writing
    grants.unmap(b.table, h, host_addr=0x1000)
    assert a.flags(8) == A.GTF_permit_access


def test_double_unmap_and_forged_handles_are_bad_handle(world):
    grants, a, b, _ = world
    a.grant(8, 2, 3)
    h, _ = grants.map(b.table, 1, 8, HOST, 0, nothing)
    grants.unmap(b.table, h)
    for handle in (h, h + 1, -1, 1 << 31, b.table.max_maptrack):
        assert status_of(lambda x=handle: grants.unmap(b.table, x)) == A.GNTST_bad_handle


def test_maptrack_exhaustion_with_one_frame_is_no_space_at_257(machine):
    grants = Grants()
    a = Dom(machine, grants, 1)
    b = Dom(machine, grants, 2, max_maptrack_frames=1)
    for ref in range(8, 8 + 257):
        a.grant(ref, 2, 3)
    handles = [grants.map(b.table, 1, ref, RO, 0, nothing)[0] for ref in range(8, 8 + 256)]
    assert len(set(handles)) == 256 == A.MAPTRACK_PER_FRAME
    assert status_of(lambda: grants.map(b.table, 1, 8 + 256, RO, 0, nothing)) == \
        A.GNTST_no_space
    assert a.flags(8 + 256) == A.GTF_permit_access           # nothing pinned for it
    grants.unmap(b.table, handles[7])
    assert grants.map(b.table, 1, 8 + 256, RO, 0, nothing)[0] == handles[7]


def test_the_129th_concurrent_host_rw_pin_of_one_ref_is_general_error(world):
    grants, a, _, host = world
    a.grant(8, 0, 3)
    handles = [grants.map(host.table, 1, 8, HOST, 0, nothing, hvm=False)[0]
               for _ in range(128)]
    assert a.table.active[8].pin == 128 << A.PIN_HOST_WRITE
    assert status_of(lambda: grants.map(host.table, 1, 8, HOST, 0, nothing, hvm=False)) == \
        A.GNTST_general_error
    ro, _ = grants.map(host.table, 1, 8, RO, 0, nothing, hvm=False)    # another counter
    grants.unmap(host.table, handles.pop())
    handles.append(grants.map(host.table, 1, 8, HOST, 0, nothing, hvm=False)[0])
    for h in handles + [ro]:
        grants.unmap(host.table, h)
    assert a.flags(8) == A.GTF_permit_access and not a.table.active


def test_another_domain_cannot_pin_an_entry_pinned_by_the_first(machine):
    grants = Grants()
    a, b, c = (Dom(machine, grants, d) for d in (1, 2, 3))
    a.grant(8, 2, 3)
    h, _ = grants.map(b.table, 1, 8, RO, 0, nothing)
    a.grant(8, 3, 3, A.GTF_permit_access | A.GTF_reading)    # a granter re-aims the entry
    assert status_of(lambda: grants.map(c.table, 1, 8, RO, 0, nothing)) == \
        A.GNTST_general_error
    grants.unmap(b.table, h)


def test_granter_flipping_a_mapped_entry_changes_nothing_for_the_mapper(world):
    grants, a, b, _ = world
    a.grant(8, 2, 3, A.GTF_permit_access | A.GTF_readonly)
    a.page(3)[:4] = b"old!"
    h, m = grants.map(b.table, 1, 8, RO, 0, nothing)
    a.grant(8, 9, 7, A.GTF_invalid | A.GTF_reading)          # other domain, frame, type
    assert ctypes.string_at(m.frame.hva, 4) == b"old!"       # the active entry's frame
    assert m.frame.hva == a.ram.hva + 3 * PAGE_SIZE
    # a second read-only pin by the same mapper uses the active entry (Xen)
    h2, _ = grants.map(b.table, 1, 8, RO, 0, nothing)
    # the first writable pin validates the shared entry again: refused
    assert status_of(lambda: grants.map(b.table, 1, 8, HOST, 0, nothing)) == \
        A.GNTST_general_error
    grants.unmap(b.table, h)
    grants.unmap(b.table, h2)
    assert status_of(lambda: grants.map(b.table, 1, 8, RO, 0, nothing)) == \
        A.GNTST_general_error                                 # unpinned: validated, refused


def test_end_foreign_access_is_busy_while_mapped(world):
    grants, a, b, _ = world
    a.grant(8, 2, 3)
    h, _ = grants.map(b.table, 1, 8, RO, 0, nothing)
    assert not a.end_access(8) and a.flags(8) & A.GTF_reading
    grants.unmap(b.table, h)
    assert a.end_access(8) and a.flags(8) == 0
    assert status_of(lambda: grants.map(b.table, 1, 8, RO, 0, nothing)) == \
        A.GNTST_general_error


def test_a_dying_granter_keeps_mapped_pages_until_the_mapper_unmaps(world):
    grants, a, b, _ = world
    buried = []
    a.table.on_buried = buried.append
    a.grant(8, 2, 3)
    a.grant(9, 2, 4)
    h, m = grants.map(b.table, 1, 8, HOST, 0, nothing)
    grants.retire(a.table)
    assert not buried and grants.tables[1] is a.table
    ctypes.memmove(m.frame.hva, b"zombie", 6)                  # still the granter's page
    assert bytes(a.page(3)[:6]) == b"zombie"
    for ref in (8, 9):
        assert status_of(lambda r=ref: grants.map(b.table, 1, r, HOST, 0, nothing)) == \
            A.GNTST_bad_domain
    assert status_of(lambda: grants.copy(b.table, ("gref", 1, 8, 0), ("frame", A.DOMID_SELF,
                                                                        3, 0), 4, b.resolve)) \
        == A.GNTST_bad_domain
    grants.unmap(b.table, h)
    assert buried == [a.table] and 1 not in grants.tables


def test_a_retired_mapper_drops_its_mappings(world):
    grants, a, b, _ = world
    a.grant(8, 2, 3)
    a.grant(9, 2, 4)
    grants.map(b.table, 1, 8, HOST, 0, nothing)
    grants.map(b.table, 1, 9, RO, 0, nothing)
    grants.retire(b.table)
    assert a.flags(8) == a.flags(9) == A.GTF_permit_access and not a.table.active


def test_a_table_whose_memory_was_freed_is_gone_and_never_written(machine):
    grants = Grants()
    a = Dom(machine, grants, 1)
    b = Dom(machine, grants, 2)
    a.grant(8, 2, 3)
    h, _ = grants.map(b.table, 1, 8, RO, 0, nothing)
    machine.free(a.table.frames)                  # e.g. the service closed under a host user
    assert not a.table.mapped
    grants.unmap(b.table, h)                      # no write into the freed entries
    assert status_of(lambda: grants.map(b.table, 1, 8, RO, 0, nothing)) == A.GNTST_bad_domain


def test_adopted_pages_are_resolved_before_the_table_resolver(world):
    grants, a, b, _ = world
    other = Frame(a.ram.fd, 9 * PAGE_SIZE, a.ram.hva + 9 * PAGE_SIZE, 12345)
    a.table.adopted[0x777] = other
    a.grant(8, 2, 0x777)
    h, m = grants.map(b.table, 1, 8, RO, 0, nothing)
    assert m.frame is other
    grants.unmap(b.table, h)


# --- copy ------------------------------------------------------------------------------------
def test_copy_follows_xens_order_of_checks(world):
    grants, a, b, _ = world
    a.grant(8, 2, 3)
    a.grant(9, 2, 4, A.GTF_permit_access | A.GTF_readonly)
    own = ("frame", A.DOMID_SELF, 5, 0)

    def copy(src, dst, n):
        return status_of(lambda: grants.copy(b.table, src, dst, n, b.resolve))

    assert copy(("gref", 77, 8, 0), ("frame", 1, 3, 0), 8) == A.GNTST_bad_domain   # src first
    assert copy(own, ("frame", 1, 3, 0), 8) == A.GNTST_permission_denied
    assert copy(("frame", 1, 3, 0), own, 8) == A.GNTST_permission_denied
    assert copy(("frame", 2, 3, 0), own, 8) == A.GNTST_permission_denied  # own domid: no
    assert copy(("gref", 1, 4096, 4000), own, 200) == A.GNTST_bad_gntref  # before bad_copy_arg
    assert copy(("gref", 1, 8, 4000), own, 200) == A.GNTST_bad_copy_arg
    assert copy(own, ("gref", 1, 9, 0), 8) == A.GNTST_general_error        # into an RO grant
    assert copy(("gref", 1, 8, 0), ("frame", A.DOMID_SELF, 0, 0), 8) == A.GNTST_bad_page
    assert copy(("gref", 77, 8, 5000), ("frame", 9, 0, 5000), 0) == OK     # len 0 at once
    assert a.flags(8) == A.GTF_permit_access and a.flags(9) == \
        A.GTF_permit_access | A.GTF_readonly


def test_copy_moves_bytes_and_holds_the_pin_only_during_the_op(world):
    grants, a, b, _ = world
    a.grant(8, 2, 3)
    b.page(5)[100:105] = b"bytes"
    grants.copy(b.table, ("frame", A.DOMID_SELF, 5, 100), ("gref", 1, 8, 4091), 5, b.resolve)
    assert bytes(a.page(3)[4091:]) == b"bytes"
    grants.copy(b.table, ("gref", 1, 8, 4091), ("frame", A.DOMID_SELF, 6, 0), 5, b.resolve)
    assert bytes(b.page(6)[:5]) == b"bytes"
    assert a.flags(8) == A.GTF_permit_access and not a.table.active


# --- a state machine of grant entries ---------------------------------------------------------
REFS = (8, 9, 10, 11)


class GrantEntries(RuleBasedStateMachine):
    """Granter 1 grants refs 8..11 to mapper 2; the mapper maps (ro/rw),
    copies and unmaps; the granter revokes and finally may die.  The model:
    which entries are granted (and read-only), and the mapper's handles."""

    def __init__(self):
        super().__init__()
        self.machine = MachineMemory()
        self.grants = Grants()
        self.a = Dom(self.machine, self.grants, 1)
        self.b = Dom(self.machine, self.grants, 2)
        self.buried = []
        self.a.table.on_buried = self.buried.append
        self.granted: dict[int, bool] = {}          # ref -> readonly
        self.maps: dict[int, tuple[int, bool]] = {}   # handle -> (ref, rw)
        self.retired = False

    def teardown(self):
        self.machine.close()

    def pins(self, ref):
        return [rw for r, rw in self.maps.values() if r == ref]

    @rule(ref=st.sampled_from(REFS), readonly=st.booleans(), gfn=st.integers(1, 15))
    def grant(self, ref, readonly, gfn):
        if self.retired or ref in self.granted:
            return
        assert self.a.flags(ref) == 0
        flags = A.GTF_permit_access | (A.GTF_readonly if readonly else 0)
        self.a.grant(ref, 2, gfn, flags)
        self.granted[ref] = readonly

    @rule(ref=st.sampled_from(REFS), rw=st.booleans())
    def map(self, ref, rw):
        try:
            handle, _ = self.grants.map(self.b.table, 1, ref, HOST if rw else RO, 0, nothing)
        except GrantError as e:
            assert e.status < 0
            if self.retired:
                assert e.status == A.GNTST_bad_domain
            else:
                assert e.status == A.GNTST_general_error
                assert ref not in self.granted or (rw and self.granted[ref])
            return
        assert not self.retired and ref in self.granted
        assert not (rw and self.granted[ref])
        assert handle not in self.maps
        self.maps[handle] = (ref, rw)

    @precondition(lambda self: self.maps)
    @rule(data=st.data())
    def unmap(self, data):
        handle = data.draw(st.sampled_from(sorted(self.maps)))
        self.grants.unmap(self.b.table, handle)
        del self.maps[handle]
        with pytest.raises(GrantError) as e:
            self.grants.unmap(self.b.table, handle)
        assert e.value.status == A.GNTST_bad_handle

    @rule(ref=st.sampled_from(REFS), writing=st.booleans())
    def copy(self, ref, writing):
        own = ("frame", A.DOMID_SELF, 2, 0)
        src, dst = (own, ("gref", 1, ref, 0)) if writing else (("gref", 1, ref, 0), own)
        try:
            self.grants.copy(self.b.table, src, dst, 16, self.b.resolve)
        except GrantError as e:
            assert e.status < 0
            assert self.retired or ref not in self.granted or (writing and self.granted[ref])
            return
        assert not self.retired and ref in self.granted

    @rule(ref=st.sampled_from(REFS))
    def end_access(self, ref):
        if self.retired or ref not in self.granted:
            return
        revoked = self.a.end_access(ref)
        assert revoked == (not self.pins(ref))
        if revoked:
            del self.granted[ref]

    @precondition(lambda self: not self.retired and len(self.maps) >= 2)
    @rule()
    def retire(self):
        self.grants.retire(self.a.table)
        self.retired = True

    @invariant()
    def gtf_bits_follow_the_pins(self):
        if self.buried:
            assert self.retired and not self.maps
            return
        for ref in REFS:
            pins = self.pins(ref)
            flags = self.a.flags(ref)
            assert bool(flags & A.GTF_reading) == bool(pins)
            assert bool(flags & A.GTF_writing) == (True in pins)
            act = self.a.table.active.get(ref)
            want = (pins.count(True) << A.PIN_HOST_WRITE) | (pins.count(False) << A.PIN_HOST_READ)
            assert (act.pin if act else 0) == want

    @invariant()
    def a_dead_granter_is_buried_with_its_last_pin(self):
        assert bool(self.buried) == (self.retired and not self.maps)


GrantEntries.TestCase.settings = settings(max_examples=100, stateful_step_count=40,
                                          deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
test_grant_entry_state_machine = GrantEntries.TestCase



# --- the host mapping cannot be removed (e.g. ENOMEM at vm.max_map_count) ---------------------
def failing_place(frame, readonly):
    def undo():
        raise OSError(12, "Cannot allocate memory")
    return undo


def test_an_unmap_whose_mapping_cannot_go_is_general_error_and_keeps_the_pin(world):
    grants, a, b, _ = world
    a.grant(8, 2, 3)
    h, _ = grants.map(b.table, 1, 8, HOST, 0x1000, failing_place)
    assert status_of(lambda: grants.unmap(b.table, h)) == A.GNTST_general_error
    assert a.flags(8) & A.GTF_reading            # still mapped, so still pinned
    assert h in b.table.maptrack
    assert not a.end_access(8)


def test_retire_marks_the_table_dying_even_when_an_unmap_fails(world):
    grants, a, b, _ = world
    a.grant(8, 2, 3)
    grants.map(b.table, 1, 8, HOST, 0x1000, failing_place)
    grants.retire(b.table)                       # b's own mapping cannot go
    assert b.table.dying
    assert status_of(lambda: grants.table(2, 1)) == A.GNTST_bad_domain
