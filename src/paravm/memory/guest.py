"""GuestMemory: a domain's guest-physical address space as bounds-checked bytes.

A GPA is never a host pointer.  Every access names a GPA and a length, both
possibly chosen by a hostile guest (any u64), and passes one overflow-safe
check before any byte moves (as Solo5's ``HVT_CHECKED_GPA_P`` and rust-vmm's
``check_range`` do); a failed check raises :class:`GuestMemoryError` and
touches nothing.  Accesses never span two regions.

Regions may come and go while the guest runs (a mediated device maps host
frames at a GFN): the region table is copied on write and replaced in one
assignment, so a check on another thread sees the old table or the new
one, without a lock.
"""

from __future__ import annotations

import bisect
import struct
import threading
from typing import NewType

from .frames import PAGE_SIZE, FrameRange

GPA = NewType("GPA", int)
GFN = NewType("GFN", int)

U64_LIMIT = 1 << 64
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class GuestMemoryError(ValueError):
    """An access outside the guest's memory (or with a negative/overflowing length)."""

    def __init__(self, gpa: int, length: int, why: str = "outside guest memory") -> None:
        super().__init__(f"GPA range {gpa:#x}+{length:#x} {why}")
        self.gpa, self.length = gpa, length


class Region:
    """``size`` bytes of guest memory at ``gpa`` backed by a frame range (or part of one)."""

    __slots__ = ("gpa", "size", "frames", "offset", "view", "readonly")

    def __init__(self, gpa: int, frames: FrameRange, offset: int = 0,
                 size: int | None = None, readonly: bool = False) -> None:
        self.gpa, self.frames, self.offset = gpa, frames, offset
        self.size = frames.size - offset if size is None else size
        self.view = frames.buffer[offset:offset + self.size]
        if readonly:
            # The VMM's own pages behind a read-only region may be mapped
            # PROT_READ (a read-only grant): a write through this view must
            # be an exception, never a SIGSEGV of the VMM.
            self.view = self.view.toreadonly()
        self.readonly = readonly

    @property
    def end(self) -> int:
        return self.gpa + self.size

    @property
    def hva(self) -> int:
        return self.frames.hva + self.offset


class GuestMemory:
    """The regions of one domain's GPA space.

    ``read``/``write``/``view`` take a GPA and a byte count; all raise
    :class:`GuestMemoryError` on any byte outside a single region.
    """

    def __init__(self) -> None:
        self._table: tuple[list[int], list[Region]] = ([], [])   # (starts, regions)
        self._lock = threading.Lock()     # writers only

    # --- regions -------------------------------------------------------------
    def add_region(self, region: Region) -> None:
        """Add a region; ``ValueError`` if it overlaps one already there."""
        with self._lock:
            starts, regions = self._table
            i = bisect.bisect(starts, region.gpa)
            if i > 0 and regions[i - 1].end > region.gpa:
                raise ValueError(f"region at {region.gpa:#x} overlaps one at "
                                 f"{regions[i - 1].gpa:#x}")
            if i < len(regions) and region.end > regions[i].gpa:
                raise ValueError(f"region at {region.gpa:#x} overlaps one at "
                                 f"{regions[i].gpa:#x}")
            self._table = (starts[:i] + [region.gpa] + starts[i:],
                           regions[:i] + [region] + regions[i:])

    def remove_region(self, gpa: int) -> Region:
        """Remove the region starting at *gpa* (``KeyError`` if none).  Its
        view is not released: a reader on another thread may still hold the
        region; the frames' owner closes them."""
        with self._lock:
            starts, regions = self._table
            i = bisect.bisect_left(starts, gpa)
            if i == len(starts) or starts[i] != gpa:
                raise KeyError(f"no region at {gpa:#x}")
            self._table = (starts[:i] + starts[i + 1:], regions[:i] + regions[i + 1:])
            return regions[i]

    @property
    def regions(self) -> tuple[Region, ...]:
        return tuple(self._table[1])

    def close(self) -> None:
        with self._lock:
            regions = self._table[1]
            self._table = ([], [])
        for r in regions:
            r.view.release()

    # --- checking --------------------------------------------------------------
    def check_range(self, gpa: int, length: int) -> tuple[Region, int]:
        """``(region, offset in region)`` if ``[gpa, gpa+length)`` lies in one
        region; else :class:`GuestMemoryError`.  Safe for any Python int."""
        if gpa < 0 or length < 0 or gpa >= U64_LIMIT or length > U64_LIMIT - gpa:
            raise GuestMemoryError(gpa, length, "overflows the 64-bit address space")
        starts, regions = self._table
        if regions and 0 <= gpa - regions[0].gpa and length <= regions[0].size - (gpa - regions[0].gpa):
            return regions[0], gpa - regions[0].gpa  # fast path: RAM at the bottom
        i = bisect.bisect_right(starts, gpa) - 1
        if i >= 0:
            r = regions[i]
            off = gpa - r.gpa
            if off <= r.size and length <= r.size - off:
                return r, off
        raise GuestMemoryError(gpa, length)

    def contains(self, gpa: int, length: int) -> bool:
        try:
            self.check_range(gpa, length)
        except GuestMemoryError:
            return False
        return True

    # --- access ------------------------------------------------------------------
    def read(self, gpa: int, length: int) -> bytes:
        """A copy of *length* bytes at *gpa* (copy once, then validate: no TOCTOU)."""
        r, off = self.check_range(gpa, length)
        return r.view[off:off + length].tobytes()

    def read_into(self, gpa: int, out) -> None:
        """Fill the writable buffer *out* from *gpa*."""
        mv = memoryview(out).cast("B")
        r, off = self.check_range(gpa, mv.nbytes)
        mv[:] = r.view[off:off + mv.nbytes]

    def write(self, gpa: int, data) -> None:
        """Copy *data* (bytes-like) to *gpa*."""
        mv = memoryview(data).cast("B")
        r, off = self._writable(gpa, mv.nbytes)
        r.view[off:off + mv.nbytes] = mv

    def view(self, gpa: int, length: int) -> memoryview:
        """A zero-copy view of guest memory, read-only in a read-only region
        (writing through it raises ``TypeError``).  Release it when done; a
        held view keeps the mapping alive after the domain is destroyed."""
        r, off = self.check_range(gpa, length)
        return r.view[off:off + length]

    def writable_view(self, gpa: int, length: int) -> memoryview:
        """As :meth:`view`, but :class:`GuestMemoryError` in a read-only region."""
        r, off = self._writable(gpa, length)
        return r.view[off:off + length]

    def _writable(self, gpa: int, length: int) -> tuple[Region, int]:
        r, off = self.check_range(gpa, length)
        if r.readonly:
            raise GuestMemoryError(gpa, length, "is read-only")
        return r, off

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        """Set *length* bytes at *gpa* to *byte*."""
        r, off = self._writable(gpa, length)
        r.view[off:off + length] = bytes([byte]) * length if length < PAGE_SIZE * 16 \
            else memoryview(bytearray([byte]) * length)

    def read_u32(self, gpa: int) -> int:
        """The little-endian u32 at *gpa* (any alignment)."""
        r, off = self.check_range(gpa, 4)
        return _U32.unpack_from(r.view, off)[0]

    def read_u64(self, gpa: int) -> int:
        """The little-endian u64 at *gpa* (any alignment)."""
        r, off = self.check_range(gpa, 8)
        return _U64.unpack_from(r.view, off)[0]

    def write_u32(self, gpa: int, value: int) -> None:
        """Store *value* (0..2^32-1) little-endian at *gpa*."""
        r, off = self._writable(gpa, 4)
        _U32.pack_into(r.view, off, value)

    def write_u64(self, gpa: int, value: int) -> None:
        """Store *value* (0..2^64-1) little-endian at *gpa*."""
        r, off = self._writable(gpa, 8)
        _U64.pack_into(r.view, off, value)

    def read_cstr(self, gpa: int, max_len: int) -> bytes:
        """Bytes up to (not including) a NUL, at most *max_len*; the range
        checked is only as long as the string (ends at the region's end)."""
        r, off = self.check_range(gpa, 1)
        end = min(r.size, off + max_len)
        chunk = r.view[off:end].tobytes()
        nul = chunk.find(b"\0")
        return chunk if nul < 0 else chunk[:nul]
