"""A domain's RAM as KVM memslots out of which single pages can be made read-only.

Why it is built this way (specs/grant-mpt.md §E5):

* User space has no KVM call that write-protects one guest page.  What it
  has is ``KVM_MEM_READONLY``: reads of such a memslot are served from
  memory, and every write exits to the VMM as ``KVM_EXIT_MMIO`` with its
  address and data (1, 2, 4 or 8 bytes; measured here).  So a write-tracked
  page gets a memslot of its own, read-only; the VMM completes each write
  into the page itself and then tells the tracker -- the order KVM's own
  page-track notifier has ("the write lands, then track_write").
* A memslot cannot shrink or change its read-only flag, so taking a page
  out of a RAM slot replaces that slot by up to three (the part below, the
  page, the part above); giving it back merges it with read-write
  neighbours again, so the slot count stays about twice the tracked pages.
* While a slot is being replaced the GPAs it covered have no memslot: a
  vCPU in the guest would take an MMIO exit there, or fail to fetch an
  instruction.  The domain therefore holds its vCPUs out of the guest
  around every change (:meth:`paravm.vm.domain.Domain.quiesced`).
* RAM starts as two slots, the reserved low MiB (page tables, GDT, IDT,
  stub stacks: never tracked, since the CPU itself writes accessed bits
  into page tables) and the rest; only pages of the second can be tracked.
* Each change costs a few memslot calls (bench/mpt: untrack + track of a
  page about 1.7 ms with the vCPU hold, 6x a raw memslot add + delete; a
  domain's first change ~5 ms, KVM's one-off), so tracking is set up once
  per page, not per write; the writes themselves cost one exit each.
"""

from __future__ import annotations

import bisect
import threading

from ..memory import PAGE_SIZE
from .backend import VmBackend


class RamSlots:
    """The memslots over *ram* (a :class:`~paravm.memory.FrameRange` mapped at
    GPA 0), first split at *reserved_end* (bytes).  Not for use by guests'
    values directly: callers check the GFN is in :meth:`trackable`."""

    def __init__(self, vm: VmBackend, ram, reserved_end: int) -> None:
        self._vm, self._ram = vm, ram
        self._first = reserved_end // PAGE_SIZE   # lowest page that may be read-only
        self._npages = ram.size // PAGE_SIZE
        self._lock = threading.Lock()
        self._starts: list[int] = []
        self._segs: dict[int, tuple[int, bool, int]] = {}  # first gfn -> (pages, ro, slot)
        try:
            for gfn, n in ((0, self._first), (self._first, self._npages - self._first)):
                if n:
                    self._add(gfn, n, False)
        except BaseException:
            self.close()
            raise

    @property
    def count(self) -> int:
        """Memslots in use for RAM."""
        return len(self._starts)

    def trackable(self, gfn: int) -> bool:
        """True for a RAM page above the reserved area."""
        return self._first <= gfn < self._npages

    def readonly(self, gfn: int) -> bool:
        with self._lock:
            _, _, ro = self._find(gfn)
            return ro

    def set_readonly(self, gfn: int, readonly: bool) -> None:
        """Make page *gfn* read-only (its own slot) or read-write again
        (merged with its read-write neighbours).  The caller keeps the
        domain's vCPUs out of the guest meanwhile.  ``ValueError`` for a
        page not :meth:`trackable`; ``OSError`` if KVM refuses (the slots
        are as before)."""
        if not self.trackable(gfn):
            raise ValueError(f"GFN {gfn:#x} is not a trackable RAM page")
        with self._lock:
            start, n, ro = self._find(gfn)
            if ro == readonly:
                return
            if readonly:
                old = [start]
                new = [(s, c, s == gfn) for s, c in ((start, gfn - start), (gfn, 1),
                                                     (gfn + 1, start + n - gfn - 1)) if c]
            else:
                old, lo, hi = [gfn], gfn, gfn + 1
                i = bisect.bisect_left(self._starts, gfn)
                if i > 0:
                    left = self._starts[i - 1]
                    if not self._segs[left][1] and left >= self._first:
                        old.insert(0, left)
                        lo = left
                if hi in self._segs and not self._segs[hi][1]:
                    old.append(hi)
                    hi += self._segs[hi][0]
                new = [(lo, hi - lo, False)]
            self._replace(old, new)

    def close(self) -> None:
        """Delete every RAM memslot (each is tried)."""
        with self._lock:
            errors = []
            for gfn in list(self._starts):
                try:
                    self._remove(gfn)
                except OSError as e:
                    errors.append(e)
            if errors:
                raise errors[0]

    # --- inside the lock ------------------------------------------------------------
    def _find(self, gfn: int) -> tuple[int, int, bool]:
        i = bisect.bisect_right(self._starts, gfn) - 1
        start = self._starts[i]
        n, ro, _ = self._segs[start]
        assert start <= gfn < start + n
        return start, n, ro

    def _add(self, gfn: int, n: int, ro: bool) -> None:
        slot = self._vm.map_memory(gfn * PAGE_SIZE, n * PAGE_SIZE,
                                   self._ram.hva + gfn * PAGE_SIZE, readonly=ro)
        bisect.insort(self._starts, gfn)
        self._segs[gfn] = (n, ro, slot)

    def _remove(self, gfn: int) -> tuple[int, int, bool]:
        n, ro, slot = self._segs[gfn]
        self._vm.unmap_memory(slot)
        del self._segs[gfn]
        self._starts.remove(gfn)
        return gfn, n, ro

    def _replace(self, old: list[int], new: list[tuple[int, int, bool]]) -> None:
        """Delete the segments starting at *old*, add *new*; on a failure,
        put the old ones back."""
        removed: list[tuple[int, int, bool]] = []
        added: list[int] = []
        try:
            for gfn in old:
                removed.append(self._remove(gfn))
            for gfn, n, ro in new:
                self._add(gfn, n, ro)
                added.append(gfn)
        except OSError:
            for gfn in added:
                self._remove(gfn)
            for gfn, n, ro in removed:
                self._add(gfn, n, ro)
            raise
