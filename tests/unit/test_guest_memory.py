"""GuestMemory over real machine frames (memfds): every access is checked,
overflow-safe, before a byte moves.  No KVM."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paravm.memory import GuestMemory, GuestMemoryError, MachineMemory, PAGE_SIZE, Region

U64 = 1 << 64
RAM_PAGES = 16                      # 64 KiB of RAM at GPA 0
RAM = RAM_PAGES * PAGE_SIZE
HIGH = 0x1_0000_0000                # a second, read-only region: 2 pages at 4 GiB
HIGH_SIZE = 2 * PAGE_SIZE
WINDOW = 0x20000                    # a third region of one page, right after a gap
WINDOW_SIZE = PAGE_SIZE
REGIONS = [(0, RAM), (WINDOW, WINDOW_SIZE), (HIGH, HIGH_SIZE)]


@pytest.fixture(scope="module")
def machine():
    m = MachineMemory()
    yield m
    m.close()


@pytest.fixture
def mem(machine):
    ram = machine.alloc(RAM_PAGES, "ram")
    win = machine.alloc(1, "window")
    high = machine.alloc(2, "high")
    high.buffer[:4] = b"ROM!"
    gm = GuestMemory()
    gm.add_region(Region(0, ram))
    gm.add_region(Region(HIGH, high, readonly=True))
    gm.add_region(Region(WINDOW, win))
    yield gm
    gm.close()
    for fr in (ram, win, high):
        machine.free(fr)


def test_regions_are_sorted(mem):
    assert [(r.gpa, r.size, r.readonly) for r in mem.regions] == \
        [(0, RAM, False), (WINDOW, WINDOW_SIZE, False), (HIGH, HIGH_SIZE, True)]


def test_overlapping_region_refused(mem, machine):
    fr = machine.alloc(1, "x")
    try:
        for gpa in (RAM - PAGE_SIZE, WINDOW, WINDOW - PAGE_SIZE + 1, HIGH + PAGE_SIZE):
            with pytest.raises(ValueError, match="overlaps"):
                mem.add_region(Region(gpa, fr))
        mem.add_region(Region(RAM, fr))          # adjacent to RAM: fine
        assert mem.contains(RAM - 4, 4) and mem.contains(RAM, 4)
        assert not mem.contains(RAM - 4, 8)      # never spans two regions
        mem.remove_region(RAM)
    finally:
        machine.free(fr)


def test_read_write_round_trip_at_the_edges(mem):
    mem.write(0, b"first")
    mem.write(RAM - 4, b"last")
    assert mem.read(0, 5) == b"first"
    assert mem.read(RAM - 4, 4) == b"last"
    mem.write_u64(RAM - 8, 0x1122334455667788)
    assert mem.read_u64(RAM - 8) == 0x1122334455667788
    assert mem.read_u32(RAM - 4) == 0x11223344
    mem.write_u32(WINDOW + WINDOW_SIZE - 4, 0xCAFEF00D)
    assert mem.read(WINDOW + WINDOW_SIZE - 4, 4) == bytes.fromhex("0df0feca")
    assert mem.read(0, RAM)[:5] == b"first"        # the whole region at once


def test_read_is_a_copy(mem):
    mem.write(0x100, b"abcd")
    data = mem.read(0x100, 4)
    mem.write(0x100, b"wxyz")
    assert data == b"abcd"


def test_view_is_zero_copy(mem):
    v = mem.view(0x200, 4)
    try:
        v[:] = b"VIEW"
        assert mem.read(0x200, 4) == b"VIEW"
    finally:
        v.release()


BAD = [
    (RAM, 1, "outside guest memory"),                 # one past the end
    (RAM - 1, 2, "outside guest memory"),             # straddles the end
    (RAM - 8, 16, "outside guest memory"),
    (0, RAM + 1, "outside guest memory"),
    (WINDOW - 1, 2, "outside guest memory"),          # straddles the window's start
    (WINDOW + WINDOW_SIZE, 1, "outside guest memory"),
    (0xD0000000, 4, "outside guest memory"),          # the MMIO hole
    (HIGH + HIGH_SIZE - 1, 2, "outside guest memory"),
    (-1, 1, "overflows the 64-bit address space"),    # negative GPA
    (-0x1000, 0x2000, "overflows the 64-bit address space"),
    (0, -1, "overflows the 64-bit address space"),    # negative length
    (U64 - 1, 2, "overflows the 64-bit address space"),
    (U64 - 0x10, 0x20, "overflows the 64-bit address space"),
    (0x1000, U64 - 0x1000 + 1, "overflows the 64-bit address space"),
    (0x1000, U64, "overflows the 64-bit address space"),
    (U64, 0, "overflows the 64-bit address space"),
    (U64, 1, "overflows the 64-bit address space"),
    (1 << 100, 1, "overflows the 64-bit address space"),
    (2, U64 - 1, "overflows the 64-bit address space"),
    (1, U64 - 1, "outside guest memory"),             # ends exactly at 2^64: no overflow
]


@pytest.mark.parametrize("gpa, length, why", BAD)
def test_bad_ranges_refused_and_touch_nothing(mem, gpa, length, why):
    snapshot = mem.read(0, RAM)
    with pytest.raises(GuestMemoryError) as e:
        mem.check_range(gpa, length)
    assert e.value.gpa == gpa and e.value.length == length
    assert why in str(e.value) and f"{gpa:#x}" in str(e.value)
    assert not mem.contains(gpa, length)
    if length >= 0:
        with pytest.raises(GuestMemoryError):
            mem.read(gpa, length)
        with pytest.raises(GuestMemoryError):
            mem.view(gpa, length)
        with pytest.raises(GuestMemoryError):
            mem.fill(gpa, length, 0xAA)
        if length <= 0x10000:
            with pytest.raises(GuestMemoryError):
                mem.write(gpa, b"\xAA" * length)
            with pytest.raises(GuestMemoryError):
                mem.read_into(gpa, bytearray(length))
    assert mem.read(0, RAM) == snapshot


@pytest.mark.parametrize("gpa", [RAM - 3, RAM, -8, U64 - 4, 0xD0000000])
def test_scalar_accessors_check_the_range(mem, gpa):
    for fn in (mem.read_u32, mem.read_u64):
        with pytest.raises(GuestMemoryError):
            fn(gpa)
    for fn in (mem.write_u32, mem.write_u64):
        with pytest.raises(GuestMemoryError):
            fn(gpa, 0)


def test_read_only_region(mem):
    assert mem.read(HIGH, 4) == b"ROM!"
    assert mem.read_u32(HIGH) == int.from_bytes(b"ROM!", "little")
    with pytest.raises(GuestMemoryError, match="is read-only"):
        mem.write(HIGH, b"evil")
    with pytest.raises(GuestMemoryError, match="is read-only"):
        mem.write(HIGH + HIGH_SIZE - 1, b"x")
    assert mem.read(HIGH, 4) == b"ROM!"


@pytest.mark.parametrize("op", ["write_u32", "write_u64", "fill"])
def test_read_only_region_refuses_every_writer(mem, op):
    with pytest.raises(GuestMemoryError, match="is read-only"):
        if op == "fill":
            mem.fill(HIGH, 4, 0)
        else:
            getattr(mem, op)(HIGH, 0)
    assert mem.read(HIGH, 4) == b"ROM!"


def test_read_cstr(mem):
    mem.write(0x300, b"hello\0world")
    assert mem.read_cstr(0x300, 64) == b"hello"
    assert mem.read_cstr(0x300, 3) == b"hel"
    mem.write(RAM - 3, b"abc")
    assert mem.read_cstr(RAM - 3, 100) == b"abc"       # ends at the region's end
    with pytest.raises(GuestMemoryError):
        mem.read_cstr(RAM, 4)


def test_fill(mem):
    mem.fill(0x400, 16, 0x5A)
    assert mem.read(0x400, 16) == b"\x5a" * 16
    mem.fill(0, RAM)                                   # the large path
    assert mem.read(0, RAM) == bytes(RAM)


def test_remove_region(mem):
    r = mem.remove_region(WINDOW)
    assert r.gpa == WINDOW
    assert not mem.contains(WINDOW, 1)
    with pytest.raises(KeyError):
        mem.remove_region(WINDOW)
    with pytest.raises(KeyError):
        mem.remove_region(WINDOW + 1)


# --- the property -------------------------------------------------------------------

def _inside(gpa: int, length: int) -> bool:
    return length >= 0 and any(base <= gpa < base + size and gpa + length <= base + size
                               for base, size in REGIONS)


def _outside(gpa: int, length: int) -> bool:
    return not any(base <= gpa and gpa + length <= base + size and length >= 0
                   for base, size in REGIONS)


def _near_edges():
    edges = [e for base, size in REGIONS for e in (base, base + size)] + [0, U64]
    return st.builds(lambda e, d: e + d, st.sampled_from(edges), st.integers(-64, 64))


ADDRS = st.one_of(_near_edges(), st.integers(-(1 << 66), 1 << 66), st.integers(0, U64 - 1))
LENGTHS = st.one_of(st.integers(-4, 64), st.integers(0, 3 * RAM), st.integers(-(1 << 66), 1 << 66),
                    st.builds(lambda d: U64 - d, st.integers(-64, 1 << 20)))


@settings(max_examples=2000, deadline=None)
@given(gpa=ADDRS, length=LENGTHS)
def test_check_range_accepts_exactly_the_ranges_inside(machine, gpa, length):
    """Never accepts a range outside one region, never rejects one inside.
    (A zero-length range exactly at a region's end is neither: not asserted.)"""
    mem = _memory(machine)
    try:
        accepted = mem.contains(gpa, length)
        if _inside(gpa, length):
            assert accepted, (hex(gpa), hex(length))
            r, off = mem.check_range(gpa, length)
            assert r.gpa + off == gpa and off + length <= r.size
        if _outside(gpa, length):
            assert not accepted, (hex(gpa), hex(length))
    finally:
        mem.close()


_frames = {}


def _memory(machine) -> GuestMemory:
    """A GuestMemory with REGIONS over frames allocated once per module."""
    if not _frames:
        for base, size in REGIONS:
            _frames[base] = machine.alloc(size // PAGE_SIZE, f"p{base:#x}")
    gm = GuestMemory()
    for base, _ in REGIONS:
        gm.add_region(Region(base, _frames[base], readonly=base == HIGH))
    return gm


def test_a_readonly_region_gives_only_readonly_views(machine):
    from paravm.memory import GuestMemory, GuestMemoryError, Region
    fr = machine.alloc(1, "ro")
    mem = GuestMemory()
    mem.add_region(Region(0x10000, fr, readonly=True))
    v = mem.view(0x10000, 16)
    assert v.readonly
    with pytest.raises(TypeError):
        v[0] = 1                               # an exception, never a write (or SIGSEGV)
    with pytest.raises(GuestMemoryError):
        mem.writable_view(0x10000, 16)
    assert fr.buffer[0] == 0
