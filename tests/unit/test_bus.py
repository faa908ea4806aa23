"""The PIO/MMIO bus: refusals with reasons, lookups at the edges, and a model check."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paravm.vm.bus import Bus, BusError


class Dev:
    def __init__(self, name: str = "dev") -> None:
        self.name = name

    def read(self, offset, data):  # pragma: no cover - never called here
        pass

    def write(self, offset, data):  # pragma: no cover
        pass


@pytest.fixture
def bus() -> Bus:
    b = Bus("PIO", 1 << 16)
    b.insert(0x3F8, 8, Dev("uart"), "uart")
    b.insert(0x400, 0x10, Dev("blk"), "blk")
    return b


@pytest.mark.parametrize("size", [0, -1, -0x100])
def test_zero_or_negative_size_refused(bus, size):
    with pytest.raises(BusError) as e:
        bus.insert(0x100, size, Dev(), "empty")
    assert str(e.value) == "PIO empty: zero size"
    assert len(bus) == 2


def test_label_defaults_to_the_device_class(bus):
    with pytest.raises(BusError, match=r"^PIO Dev: zero size$"):
        bus.insert(0x100, 0, Dev())


@pytest.mark.parametrize("base, size", [
    (0x3F8, 8),        # the same range
    (0x3F8, 1),        # its first byte
    (0x3FF, 1),        # its last byte
    (0x3F0, 9),        # ends one byte into it
    (0x3FF, 2),        # starts on its last byte
    (0x3F0, 0x20),     # covers it
    (0x3FA, 2),        # inside it
])
def test_overlap_refused_with_the_other_range(bus, base, size):
    with pytest.raises(BusError) as e:
        bus.insert(base, size, Dev(), "new")
    assert str(e.value) == (f"PIO new: [{base:#x}, {base + size:#x}) overlaps uart at "
                            "[0x3f8, 0x400)")
    assert len(bus) == 2


def test_overlap_with_the_next_range_refused(bus):
    bus.insert(0x500, 0x10, Dev("net"), "net")
    # starts in the free gap after blk, runs into net
    with pytest.raises(BusError, match=r"^PIO big: \[0x480, 0x501\) overlaps net at "
                                       r"\[0x500, 0x510\)$"):
        bus.insert(0x480, 0x81, Dev(), "big")
    # starts before uart and covers uart and blk: refused (names the first one)
    with pytest.raises(BusError, match=r"overlaps uart at \[0x3f8, 0x400\)"):
        bus.insert(0x3F0, 0x100, Dev(), "big")
    assert len(bus) == 3


def test_adjacent_ranges_accepted(bus):
    bus.insert(0x3F0, 8, Dev("below"), "below")      # ends where uart starts
    bus.insert(0x410, 1, Dev("above"), "above")      # starts where blk ends
    assert len(bus) == 4
    assert bus.lookup(0x3F7)[0].name == "below"
    assert bus.lookup(0x3F8)[0].name == "uart"
    assert bus.lookup(0x410)[0].name == "above"


@pytest.mark.parametrize("base, size", [(-1, 2), (0xFFFF, 2), (0x10000, 1), (0, 0x10001)])
def test_outside_the_bus_refused(bus, base, size):
    with pytest.raises(BusError, match="outside"):
        bus.insert(base, size, Dev(), "far")


def test_last_port_accepted():
    b = Bus("PIO", 1 << 16)
    b.insert(0xFFFF, 1, Dev("last"))
    b.insert(0, 1, Dev("first"))
    assert b.lookup(0xFFFF)[0].name == "last" and b.lookup(0xFFFF)[1] == 0
    assert b.lookup(0)[0].name == "first"


def test_lookup_at_the_edges(bus):
    uart = bus.lookup(0x3F8)[0]
    assert uart.name == "uart"
    assert bus.lookup(0x3F8) == (uart, 0)
    assert bus.lookup(0x3FF) == (uart, 7)
    assert bus.lookup(0x3F7) is None
    blk = bus.lookup(0x400)[0]
    assert blk.name == "blk" and bus.lookup(0x40F) == (blk, 0xF)
    assert bus.lookup(0x410) is None
    assert bus.lookup(0) is None and bus.lookup(0xFFFF) is None
    assert bus.lookup(-1) is None and bus.lookup(1 << 70) is None


def test_empty_bus_lookup():
    assert Bus("MMIO", 1 << 64).lookup(0) is None


def test_mmio_bus_top_of_the_address_space():
    b = Bus("MMIO", 1 << 64)
    top = (1 << 64) - 0x1000
    b.insert(top, 0x1000, Dev("top"))
    assert b.lookup((1 << 64) - 1)[1] == 0xFFF
    assert b.lookup(1 << 64) is None
    with pytest.raises(BusError, match=r"^MMIO Dev: \[0xfffffffffffff000, 0x10000000000000001\) "
                                       r"outside \[0, 0x10000000000000000\)$"):
        b.insert(top, 0x1001, Dev())


def test_remove(bus):
    dev = bus.remove(0x3F8)
    assert dev.name == "uart" and len(bus) == 1
    assert bus.lookup(0x3F8) is None and bus.lookup(0x400)[0].name == "blk"
    with pytest.raises(BusError, match=r"^PIO: nothing at 0x3f8$"):
        bus.remove(0x3F8)
    with pytest.raises(BusError, match="nothing at 0x401"):
        bus.remove(0x401)      # inside blk, but not its base
    bus.insert(0x3F8, 8, Dev("again"))
    assert bus.lookup(0x3FF)[0].name == "again"


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 300), st.integers(-2, 40)), max_size=40),
       probes=st.lists(st.integers(-5, 350), max_size=40))
def test_bus_matches_a_naive_model(ops, probes):
    """Inserts succeed exactly when the range is non-empty, inside the bus and
    free; lookups agree with a byte map."""
    limit = 320
    b = Bus("PIO", limit)
    owner: dict[int, tuple[int, int]] = {}   # address -> (base, size)
    for base, size in ops:
        free = size > 0 and base + size <= limit and \
            all(a not in owner for a in range(base, base + size))
        try:
            b.insert(base, size, Dev(f"{base}"), f"r{base}")
        except BusError:
            assert not free, (base, size)
        else:
            assert free, (base, size)
            for a in range(base, base + size):
                owner[a] = (base, size)
    for addr in probes + list(range(-1, limit + 1)):
        hit = b.lookup(addr)
        if addr in owner:
            base, _ = owner[addr]
            assert hit is not None and hit[0].name == f"{base}" and hit[1] == addr - base
        else:
            assert hit is None, addr
