"""The PIO and MMIO buses: non-overlapping address ranges mapped to devices.

As Firecracker's ``Bus``: a device is ``read(offset, data)`` /
``write(offset, data)`` where *data* is a writable memoryview of the access
width (1, 2, 4 or 8 bytes); an insert that overlaps a range already there,
or has zero size, is refused with the reason.

Lookups run on vCPU threads while a service may insert or remove a range
(a trap area, a write-tracked page) from another thread: the table is
copied on write and swapped in one assignment, so a lookup sees either
the old table or the new one, never a half-changed one, and takes no lock.
"""

from __future__ import annotations

import bisect
import threading
from typing import Protocol


class Device(Protocol):
    def read(self, offset: int, data: memoryview) -> None: ...
    def write(self, offset: int, data: memoryview) -> None: ...


class BusError(ValueError):
    pass


class Bus:
    """Ranges ``[base, base+size)`` -> device.  ``name`` is "PIO" or "MMIO"."""

    def __init__(self, name: str, limit: int) -> None:
        self.name, self.limit = name, limit
        # (bases, entries): entries are (base, size, dev, label), sorted.
        self._table: tuple[list[int], list[tuple[int, int, Device, str]]] = ([], [])
        self._lock = threading.Lock()    # writers only

    def insert(self, base: int, size: int, device: Device, label: str = "") -> None:
        label = label or type(device).__name__
        if size <= 0:
            raise BusError(f"{self.name} {label}: zero size")
        if base < 0 or base + size > self.limit:
            raise BusError(f"{self.name} {label}: [{base:#x}, {base + size:#x}) outside "
                           f"[0, {self.limit:#x})")
        with self._lock:
            bases, entries = self._table
            hit = _overlap(bases, entries, base, size)
            if hit is not None:
                b, s, _, other = hit
                raise BusError(f"{self.name} {label}: [{base:#x}, {base + size:#x}) "
                               f"overlaps {other} at [{b:#x}, {b + s:#x})")
            i = bisect.bisect(bases, base)
            self._table = (bases[:i] + [base] + bases[i:],
                           entries[:i] + [(base, size, device, label)] + entries[i:])

    def remove(self, base: int) -> Device:
        """Remove the range that starts at *base*; its device."""
        with self._lock:
            bases, entries = self._table
            i = bisect.bisect_left(bases, base)
            if i == len(bases) or bases[i] != base:
                raise BusError(f"{self.name}: nothing at {base:#x}")
            self._table = (bases[:i] + bases[i + 1:], entries[:i] + entries[i + 1:])
            return entries[i][2]

    def overlaps(self, base: int, size: int) -> str | None:
        """The label of a range that overlaps ``[base, base+size)``, or None."""
        hit = _overlap(*self._table, base, size)
        return None if hit is None else hit[3]

    def lookup(self, addr: int, length: int = 1) -> tuple[Device, int] | None:
        """``(device, offset)`` if ``[addr, addr+length)`` lies inside one
        device's range, else ``None`` (an access that runs past a device's end
        reaches no device)."""
        bases, entries = self._table
        i = bisect.bisect_right(bases, addr) - 1
        if i >= 0:
            base, size, dev, _ = entries[i]
            if addr - base + length <= size:
                return dev, addr - base
        return None

    def __len__(self) -> int:
        return len(self._table[0])


def _overlap(bases: list[int], entries: list, base: int, size: int):
    """The entry of a sorted, non-overlapping table that overlaps
    ``[base, base+size)`` (only the neighbours of *base* can), or None."""
    i = bisect.bisect(bases, base)
    for j in (i - 1, i):
        if 0 <= j < len(entries):
            b, s = entries[j][0], entries[j][1]
            if base < b + s and b < base + size:
                return entries[j]
    return None
