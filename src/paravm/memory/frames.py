"""Machine frames: memfd-backed pages that can be mapped into several domains.

Every page paravm gives a guest is a *machine frame* (MFN) owned by the
:class:`MachineMemory` of one hypervisor.  Frames are handed out in
:class:`FrameRange` s; each range is its own ``memfd`` (so a domain's RAM is one
memfd, and an area shared by two domains is another), mapped once into the VMM
with ``MAP_SHARED``.  Sharing a frame with a second domain is a memslot (or an
``mmap(MAP_FIXED)``) over the same memfd offset: no copy, and the VMM's view,
each guest's view and any host user's view are the same physical pages.

MFN numbers are allocated from a free list so that ``mfn -> (range, index)``
is a bisect; MFN 0 is never handed out (it stays an invalid marker).
"""

from __future__ import annotations

import bisect
import ctypes
import fcntl
import mmap
import os
import threading

PAGE_SIZE = 4096
PAGE_SHIFT = 12


class FrameRange:
    """*nframes* contiguous machine frames starting at *mfn*, backed by one memfd.

    ``hva`` is the VMM's mapping address (for memslots); ``buffer`` a writable
    memoryview over all of it.  Close it through :meth:`MachineMemory.free`.
    """

    __slots__ = ("mfn", "nframes", "name", "fd", "mmap", "hva", "buffer")

    def __init__(self, mfn: int, nframes: int, name: str) -> None:
        size = nframes * PAGE_SIZE
        fd = os.memfd_create(f"paravm:{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            # udmabuf (a gntdev dma-buf export, where the kernel has it)
            # takes only memfds that cannot shrink; nothing here shrinks one.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(fd)
            raise
        self.mfn, self.nframes, self.name, self.fd, self.mmap = mfn, nframes, name, fd, mm
        # Take the address through a temporary export, released at once, so the
        # mmap can be closed later.
        probe = ctypes.c_char.from_buffer(mm)
        self.hva = ctypes.addressof(probe)
        del probe
        self.buffer = memoryview(mm)

    @property
    def size(self) -> int:
        """Bytes."""
        return self.nframes * PAGE_SIZE

    def close(self) -> None:
        if self.fd < 0:
            return
        self.buffer.release()
        try:
            self.mmap.close()
        except BufferError:
            # A caller still holds a view; the mapping goes when the view does.
            pass
        os.close(self.fd)
        self.fd = -1

    def __repr__(self) -> str:
        return f"FrameRange({self.name!r}, mfn={self.mfn:#x}, nframes={self.nframes})"

    def part(self, index: int, nframes: int) -> "FramePart":
        """Frames ``index .. index + nframes - 1`` of this range, usable
        wherever a range is mapped (a memslot, a guest memory region);
        ``ValueError`` if they are not all in it.  It lives as long as the
        range does."""
        if index < 0 or nframes < 1 or index + nframes > self.nframes:
            raise ValueError(f"{self.name}: no frames {index}..{index + nframes - 1}")
        return FramePart(self, index, nframes)


class FramePart:
    """Part of a :class:`FrameRange` (see :meth:`FrameRange.part`): the
    same attributes, for the frames it covers."""

    __slots__ = ("range", "index", "mfn", "nframes", "name", "hva")

    def __init__(self, fr: FrameRange, index: int, nframes: int) -> None:
        self.range, self.index = fr, index
        self.mfn, self.nframes = fr.mfn + index, nframes
        self.name = f"{fr.name}[{index}:{index + nframes}]"
        self.hva = fr.hva + index * PAGE_SIZE

    @property
    def buffer(self) -> memoryview:
        """A new view of these frames (its taker releases it, so the
        range's mapping can close)."""
        return self.range.buffer[self.index * PAGE_SIZE:(self.index + self.nframes) * PAGE_SIZE]

    @property
    def size(self) -> int:
        """Bytes."""
        return self.nframes * PAGE_SIZE


class MachineMemory:
    """Allocator of machine frames.  Thread-safe."""

    MFN_LIMIT = 1 << 40  # 4 PiB of MFN space; only numbers, never backed all at once

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[tuple[int, int]] = [(1, self.MFN_LIMIT - 1)]  # (start, count)
        self._starts: list[int] = []          # sorted MFN starts of live ranges
        self._ranges: dict[int, FrameRange] = {}

    def alloc(self, nframes: int, name: str) -> FrameRange:
        """Allocate *nframes* (>= 1) zeroed frames; ``MemoryError`` if none left,
        ``OSError`` if the memfd cannot be made."""
        if nframes < 1:
            raise ValueError(f"nframes must be >= 1, got {nframes}")
        with self._lock:
            for i, (start, count) in enumerate(self._free):
                if count >= nframes:
                    if count == nframes:
                        del self._free[i]
                    else:
                        self._free[i] = (start + nframes, count - nframes)
                    break
            else:
                raise MemoryError(f"no {nframes} free machine frames")
        try:
            fr = FrameRange(start, nframes, name)
        except BaseException:
            self._give_back(start, nframes)
            raise
        with self._lock:
            bisect.insort(self._starts, start)
            self._ranges[start] = fr
        return fr

    def free(self, fr: FrameRange) -> None:
        """Close *fr* and return its MFNs.  Freeing twice is a no-op."""
        with self._lock:
            if self._ranges.get(fr.mfn) is not fr:
                return
            del self._ranges[fr.mfn]
            self._starts.remove(fr.mfn)
        fr.close()
        self._give_back(fr.mfn, fr.nframes)

    def _give_back(self, start: int, count: int) -> None:
        with self._lock:
            i = bisect.bisect(self._free, (start, 0))
            self._free.insert(i, (start, count))
            # Merge with the neighbours.
            if i + 1 < len(self._free) and start + count == self._free[i + 1][0]:
                self._free[i] = (start, count + self._free[i + 1][1])
                del self._free[i + 1]
            if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == start:
                ps, pc = self._free[i - 1]
                self._free[i - 1] = (ps, pc + self._free[i][1])
                del self._free[i]

    def lookup(self, mfn: int) -> tuple[FrameRange, int] | None:
        """``(range, page index in it)`` for a live MFN, else ``None``."""
        with self._lock:
            i = bisect.bisect_right(self._starts, mfn) - 1
            if i < 0:
                return None
            fr = self._ranges[self._starts[i]]
        if mfn - fr.mfn < fr.nframes:
            return fr, mfn - fr.mfn
        return None

    def range_at_hva(self, hva: int) -> FrameRange | None:
        """The live range whose VMM mapping holds address *hva*, or ``None``."""
        with self._lock:
            ranges = list(self._ranges.values())
        for fr in ranges:
            if fr.hva <= hva < fr.hva + fr.size:
                return fr
        return None

    @property
    def live_ranges(self) -> int:
        return len(self._ranges)

    def close(self) -> None:
        for fr in list(self._ranges.values()):
            self.free(fr)
