"""Machine frames: MFN allocation, lookup, sharing one frame between two views."""

import mmap

import pytest
from hypothesis import given, settings, strategies as st

from paravm.memory import PAGE_SIZE, MachineMemory


def test_mfn_zero_is_never_handed_out_and_ranges_do_not_overlap(machine):
    a = machine.alloc(3, "a")
    b = machine.alloc(1, "b")
    assert a.mfn >= 1 and b.mfn >= 1
    assert a.mfn + a.nframes <= b.mfn or b.mfn + b.nframes <= a.mfn
    assert machine.lookup(0) is None


def test_lookup_maps_every_mfn_to_its_range_and_page(machine):
    a = machine.alloc(4, "a")
    for i in range(4):
        assert machine.lookup(a.mfn + i) == (a, i)
    assert machine.lookup(a.mfn + 4) is None or machine.lookup(a.mfn + 4)[0] is not a


def test_freed_mfns_are_reused_and_merged(machine):
    a = machine.alloc(2, "a")
    b = machine.alloc(2, "b")
    c = machine.alloc(2, "c")
    machine.free(a)
    machine.free(b)            # a and b merge into one free run of 4
    d = machine.alloc(4, "d")
    assert d.mfn == a.mfn
    assert machine.lookup(a.mfn) == (d, 0)
    machine.free(c)
    machine.free(c)            # twice: a no-op
    assert machine.live_ranges == 1


def test_frames_are_zeroed_and_shared_through_the_memfd(machine):
    fr = machine.alloc(2, "shared")
    assert bytes(fr.buffer[:PAGE_SIZE * 2]) == bytes(PAGE_SIZE * 2)
    fr.buffer[PAGE_SIZE + 5] = 0xA5
    # A second mapping of the same memfd (as a second domain's memslot would
    # be) sees the same page: no copy.
    other = mmap.mmap(fr.fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ, offset=PAGE_SIZE)
    try:
        assert other[5] == 0xA5
    finally:
        other.close()


def test_bad_counts_are_refused(machine):
    with pytest.raises(ValueError):
        machine.alloc(0, "none")
    with pytest.raises(MemoryError):
        machine.alloc(MachineMemory.MFN_LIMIT, "too many")


def test_close_releases_every_range():
    m = MachineMemory()
    frs = [m.alloc(1, f"r{i}") for i in range(5)]
    m.close()
    assert m.live_ranges == 0
    assert all(fr.fd == -1 for fr in frs)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 8)), min_size=1, max_size=30))
def test_random_alloc_free_keeps_ranges_disjoint(ops):
    m = MachineMemory()
    live = []
    try:
        for alloc, n in ops:
            if alloc or not live:
                live.append(m.alloc(n, "x"))
            else:
                m.free(live.pop(n % len(live)))
            spans = sorted((fr.mfn, fr.mfn + fr.nframes) for fr in live)
            assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
            for fr in live:
                assert m.lookup(fr.mfn + fr.nframes - 1) == (fr, fr.nframes - 1)
    finally:
        m.close()
