"""RamSlots: a domain's RAM as memslots out of which single pages are made
read-only (specs/grant-mpt.md §E5 option (a)), checked against the memslot
table a recording fake VmBackend keeps as KVM would: GPAs, sizes, host
addresses, read-only flags, splits, merges, and roll-back on failure."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from paravm.memory import PAGE_SIZE
from paravm.vm.ramslots import RamSlots

from mpt_fakes import SlotVm

HVA = 0x7F1200000000           # where the fake RAM is "mapped" in the VMM
NPAGES = 1024                  # 4 MiB
FIRST = 256                    # the reserved first MiB, in pages
P = PAGE_SIZE


def slot(gfn, n, ro=False):
    """The memslot KVM must hold for pages gfn..gfn+n-1: (gpa, size, hva, ro)."""
    return (gfn * P, n * P, HVA + gfn * P, ro)


def make(npages=NPAGES, first=FIRST):
    vm = SlotVm()
    ram = SimpleNamespace(hva=HVA, size=npages * P)
    return vm, RamSlots(vm, ram, first * P)


def test_ram_starts_as_the_reserved_mib_and_the_rest():
    vm, rs = make()
    assert vm.table() == [slot(0, FIRST), slot(FIRST, NPAGES - FIRST)]
    assert rs.count == 2
    assert not rs.readonly(0) and not rs.readonly(NPAGES - 1)


def test_ram_within_the_reserved_area_is_one_slot():
    vm, rs = make(npages=FIRST)
    assert vm.table() == [slot(0, FIRST)] and rs.count == 1


def test_a_page_in_the_middle_splits_its_slot_in_three():
    vm, rs = make()
    rs.set_readonly(0x200, True)
    assert vm.table() == [slot(0, FIRST), slot(FIRST, 0x200 - FIRST), slot(0x200, 1, True),
                          slot(0x201, NPAGES - 0x201)]
    assert rs.count == 4
    assert rs.readonly(0x200) and not rs.readonly(0x1FF) and not rs.readonly(0x201)
    # The slot replaced was deleted before the new ones were added.
    assert vm.calls[2:] == [("unmap", FIRST * P, (NPAGES - FIRST) * P, False),
                            ("map", FIRST * P, (0x200 - FIRST) * P, False),
                            ("map", 0x200 * P, P, True),
                            ("map", 0x201 * P, (NPAGES - 0x201) * P, False)]


@pytest.mark.parametrize("gfn, want", [
    (FIRST, [slot(0, FIRST), slot(FIRST, 1, True), slot(FIRST + 1, NPAGES - FIRST - 1)]),
    (NPAGES - 1, [slot(0, FIRST), slot(FIRST, NPAGES - 1 - FIRST), slot(NPAGES - 1, 1, True)]),
])
def test_a_page_at_an_edge_splits_its_slot_in_two(gfn, want):
    vm, rs = make()
    rs.set_readonly(gfn, True)
    assert vm.table() == want and rs.count == 3


def test_a_page_with_read_only_neighbours_takes_its_one_page_slot_as_it_is():
    vm, rs = make()
    rs.set_readonly(0x200, True)
    rs.set_readonly(0x202, True)
    assert slot(0x201, 1) in vm.table()
    n = len(vm.calls)
    rs.set_readonly(0x201, True)              # already isolated: replaced one for one
    assert vm.calls[n:] == [("unmap", 0x201 * P, P, False), ("map", 0x201 * P, P, True)]
    assert vm.table() == [slot(0, FIRST), slot(FIRST, 0x200 - FIRST), slot(0x200, 1, True),
                          slot(0x201, 1, True), slot(0x202, 1, True),
                          slot(0x203, NPAGES - 0x203)]


def test_setting_the_state_a_page_has_touches_no_memslot():
    vm, rs = make()
    n = len(vm.calls)
    rs.set_readonly(0x200, False)
    rs.set_readonly(0x300, True)
    m = len(vm.calls)
    rs.set_readonly(0x300, True)
    assert len(vm.calls) == m and m == n + 4


def test_adjacent_tracked_pages_get_a_slot_each():
    vm, rs = make()
    for gfn in (0x200, 0x201, 0x202):
        rs.set_readonly(gfn, True)
    assert vm.table() == [slot(0, FIRST), slot(FIRST, 0x200 - FIRST), slot(0x200, 1, True),
                          slot(0x201, 1, True), slot(0x202, 1, True),
                          slot(0x203, NPAGES - 0x203)]
    rs.set_readonly(0x201, False)             # between two read-only pages: stays alone
    assert slot(0x201, 1) in vm.table() and rs.count == 6
    rs.set_readonly(0x200, False)             # merges left and right
    assert vm.table() == [slot(0, FIRST), slot(FIRST, 0x202 - FIRST), slot(0x202, 1, True),
                          slot(0x203, NPAGES - 0x203)]
    rs.set_readonly(0x202, False)
    assert vm.table() == [slot(0, FIRST), slot(FIRST, NPAGES - FIRST)]


def test_release_merges_with_both_neighbours_back_to_two_slots():
    vm, rs = make()
    rs.set_readonly(0x200, True)
    rs.set_readonly(0x200, False)
    assert vm.table() == [slot(0, FIRST), slot(FIRST, NPAGES - FIRST)] and rs.count == 2


def test_release_of_the_first_trackable_page_never_merges_into_the_reserved_slot():
    vm, rs = make()
    rs.set_readonly(FIRST, True)
    rs.set_readonly(FIRST, False)
    assert vm.table() == [slot(0, FIRST), slot(FIRST, NPAGES - FIRST)]
    # The reserved slot was never deleted.
    assert ("unmap", 0, FIRST * P, False) not in vm.calls


@pytest.mark.parametrize("gfn", [-1, 0, 1, FIRST - 1, NPAGES, NPAGES + 5, 1 << 40])
def test_pages_outside_the_trackable_range_are_refused(gfn):
    vm, rs = make()
    assert not rs.trackable(gfn)
    for ro in (True, False):
        with pytest.raises(ValueError, match="not a trackable RAM page"):
            rs.set_readonly(gfn, ro)
    assert vm.table() == [slot(0, FIRST), slot(FIRST, NPAGES - FIRST)]


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_failing_add_while_splitting_restores_the_slots_before(fail_at):
    vm, rs = make()
    rs.set_readonly(0x300, True)
    before = vm.table()
    vm.fail_map = fail_at                     # the first, second or third new slot
    with pytest.raises(OSError):
        rs.set_readonly(0x200, True)
    assert vm.table() == before and rs.count == len(before)
    assert not rs.readonly(0x200) and rs.readonly(0x300)
    # And it works next time.
    rs.set_readonly(0x200, True)
    assert rs.readonly(0x200) and rs.count == 6


def test_a_failing_add_while_merging_restores_the_slots_before():
    vm, rs = make()
    rs.set_readonly(0x200, True)
    before = vm.table()
    vm.fail_map = 1
    with pytest.raises(OSError):
        rs.set_readonly(0x200, False)
    assert vm.table() == before and rs.readonly(0x200)


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_failing_delete_while_merging_restores_the_slots_before(fail_at):
    vm, rs = make()
    rs.set_readonly(0x200, True)
    before = vm.table()
    vm.fail_unmap = fail_at                   # left neighbour, the page, right neighbour
    with pytest.raises(OSError):
        rs.set_readonly(0x200, False)
    assert vm.table() == before and rs.readonly(0x200) and rs.count == 4
    rs.set_readonly(0x200, False)
    assert vm.table() == [slot(0, FIRST), slot(FIRST, NPAGES - FIRST)]


def test_close_deletes_every_slot():
    vm, rs = make()
    rs.set_readonly(0x200, True)
    rs.close()
    assert vm.slots == {} and rs.count == 0


# --- random protect / unprotect sequences -----------------------------------------------

# Pages near both edges of the trackable area and a cluster in the middle, so
# neighbours and edges come up often.
GFNS = st.sampled_from([FIRST, FIRST + 1, FIRST + 2, 0x200, 0x201, 0x202, 0x203, 0x2FF,
                        NPAGES - 3, NPAGES - 2, NPAGES - 1])


class SlotMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.vm, self.rs = make()
        self.protected: set[int] = set()

    @rule(gfn=GFNS)
    def protect(self, gfn):
        self.rs.set_readonly(gfn, True)
        self.protected.add(gfn)

    @rule(gfn=GFNS)
    def unprotect(self, gfn):
        self.rs.set_readonly(gfn, False)
        self.protected.discard(gfn)

    @rule(gfn=GFNS, ro=st.booleans(), fail_at=st.integers(1, 3), unmap=st.booleans())
    def failing_change(self, gfn, ro, fail_at, unmap):
        before = self.vm.table()
        if unmap:
            self.vm.fail_unmap = fail_at
        else:
            self.vm.fail_map = fail_at
        try:
            self.rs.set_readonly(gfn, ro)
        except OSError:
            assert self.vm.table() == before
        else:
            (self.protected.add if ro else self.protected.discard)(gfn)
        self.vm.fail_map = self.vm.fail_unmap = 0

    @invariant()
    def slots_cover_ram_exactly_once(self):
        table = self.vm.table()
        assert len(table) == self.rs.count
        at = 0
        for gpa, size, hva, _ in table:
            assert gpa == at and size > 0 and size % P == 0 and hva == HVA + gpa
            at = gpa + size
        assert at == NPAGES * P
        assert table[0] == slot(0, FIRST)         # the reserved slot is never touched

    @invariant()
    def read_only_exactly_on_the_protected_pages(self):
        table = self.vm.table()
        assert all(size == P for _, size, _, r in table if r)
        assert {gpa // P for gpa, _, _, r in table if r} == self.protected
        for gfn in self.protected:
            assert self.rs.readonly(gfn)

    @invariant()
    def read_write_slots_above_the_reserved_mib_are_merged(self):
        table = self.vm.table()[1:]
        for (_, _, _, a), (_, _, _, b) in zip(table, table[1:]):
            assert a or b, "two adjacent read-write slots"
        assert self.rs.count <= 2 + 2 * len(self.protected)


SlotMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30,
                                         deadline=None)
TestSlotMachine = SlotMachine.TestCase
