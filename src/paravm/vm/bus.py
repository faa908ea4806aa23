"""The PIO and MMIO buses: non-overlapping address ranges mapped to devices.

As Firecracker's ``Bus``: a device is ``read(offset, data)`` /
``write(offset, data)`` where *data* is a writable memoryview of the access
width (1, 2, 4 or 8 bytes); an insert that overlaps a range already there,
or has zero size, is refused with the reason.
"""

from __future__ import annotations

import bisect
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
        self._bases: list[int] = []
        self._entries: list[tuple[int, int, Device, str]] = []  # (base, size, dev, label)

    def insert(self, base: int, size: int, device: Device, label: str = "") -> None:
        label = label or type(device).__name__
        if size <= 0:
            raise BusError(f"{self.name} {label}: zero size")
        if base < 0 or base + size > self.limit:
            raise BusError(f"{self.name} {label}: [{base:#x}, {base + size:#x}) outside "
                           f"[0, {self.limit:#x})")
        i = bisect.bisect(self._bases, base)
        for j in (i - 1, i):
            if 0 <= j < len(self._entries):
                b, s, _, other = self._entries[j]
                if base < b + s and b < base + size:
                    raise BusError(f"{self.name} {label}: [{base:#x}, {base + size:#x}) "
                                   f"overlaps {other} at [{b:#x}, {b + s:#x})")
        self._bases.insert(i, base)
        self._entries.insert(i, (base, size, device, label))

    def remove(self, base: int) -> Device:
        i = bisect.bisect_left(self._bases, base)
        if i == len(self._bases) or self._bases[i] != base:
            raise BusError(f"{self.name}: nothing at {base:#x}")
        del self._bases[i]
        return self._entries.pop(i)[2]

    def lookup(self, addr: int, length: int = 1) -> tuple[Device, int] | None:
        """``(device, offset)`` if ``[addr, addr+length)`` lies inside one
        device's range, else ``None`` (an access that runs past a device's end
        reaches no device)."""
        i = bisect.bisect_right(self._bases, addr) - 1
        if i >= 0:
            base, size, dev, _ = self._entries[i]
            if addr - base + length <= size:
                return dev, addr - base
        return None

    def __len__(self) -> int:
        return len(self._entries)
