"""Grant tables, active entries and maptracks: the hypervisor's grant logic.

Kernel and Xen facts this relies on (specs/grant-mpt.md §D2.2-D2.5):

* A domain's **grant table** is v1 entries (``flags, domid, frame``, 8
  bytes) in pages the domain itself writes.  The granter publishes an entry
  by writing domid and frame, then flags; it revokes by cmpxchg-ing flags to
  0 while neither ``GTF_reading`` nor ``GTF_writing`` is set.  Those two bits
  belong to the hypervisor: they are set while the entry is *pinned* (mapped
  or being copied) and are the granter's only way to know that a peer still
  uses the page.  A vCPU may write the entry at any moment, so the
  hypervisor validates and sets the bits with one atomic compare-exchange of
  the ``{flags, domid}`` word, retried at most 5 times (a guest that keeps
  changing it gets ``GNTST_general_error``).
* Once pinned, an entry's facts come from the **active entry** (pin counter,
  pinning domid, frame) kept here, never from guest memory again: a granter
  that rewrites the entry while it is mapped changes nothing for the mapper.
* The pin counter is four 8-bit counters in one u32 (host/device ×
  read/write); a counter with its top bit set takes no more pins.
* Each *mapping* domain has a **maptrack**: handle -> (granter, ref, flags,
  where it is mapped).  Its size is the domain's ``max_maptrack_frames`` ×
  256; a full maptrack is ``GNTST_no_space``.
* Unmap removes the mapping first (for a guest: its grant window page is
  remapped, which zaps KVM's translation and flushes the vCPUs' TLBs before
  ``mmap`` returns, the analogue of Xen's batched TLB flush), and only then
  drops the pin, so a granter can never revoke a page a peer can still reach.

What a *frame* is depends on the granter: a guest's GFN names a page of its
RAM (never the reserved low 1 MiB, its grant windows, shared areas or MMIO:
those are not frames it owns); the host's (domain 0's) "GFN" is the MFN of a
page it allocated for sharing (gntalloc), or of a page it *adopted*: a
buffer it imported (gntdev's dma-buf import: ``GrantTable.adopted``, looked
up before the table's resolver).  A :class:`Frame` says where the page is:
its memfd and offset (to map it elsewhere) and the VMM's address of it (to
copy).

A table whose own pages were freed (the service closed while a host user
still held a pin) counts as gone: maps of it are ``bad_domain`` and the last
unpins write nothing (``GrantTable.mapped``), so late finalizers are safe.

This module has no KVM in it: the grant service (:mod:`.service`) adds the
hypercalls, the guests' grant windows and the host API on top.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

from ...memory import PAGE_SIZE, atomic
from . import abi as A


@dataclass(frozen=True, slots=True)
class Frame:
    """A page a granter owns: ``fd`` (memfd) at ``offset`` bytes; ``hva``
    the VMM's mapping of it; ``mfn`` its machine frame number."""
    fd: int
    offset: int
    hva: int
    mfn: int


class ActiveEntry:
    """The hypervisor's record of a pinned grant entry (Xen's ``active_grant_entry``)."""

    __slots__ = ("pin", "domid", "frame", "readonly")

    def __init__(self, domid: int, frame: Frame, readonly: bool) -> None:
        self.pin = 0            # four 8-bit counters (abi.PIN_*)
        self.domid = domid      # the one domain allowed to pin it
        self.frame = frame
        self.readonly = readonly


class GrantTable:
    """The grant table of one domain (*domid*): v1 entries in *frames* (a
    :class:`~paravm.memory.FrameRange` of ``max_frames`` pages, of which the
    first ``nr_frames`` are in use), resolved to pages by *resolve*
    (``gfn -> Frame | None``).  ``max_maptrack`` bounds the mappings this
    domain itself may hold of others' grants."""

    def __init__(self, domid: int, frames, resolve, *, max_frames: int = A.DEFAULT_MAX_GRANT_FRAMES,
                 max_maptrack_frames: int = A.DEFAULT_MAX_MAPTRACK_FRAMES,
                 nr_frames: int = A.INITIAL_NR_GRANT_FRAMES) -> None:
        if not 1 <= max_frames <= frames.nframes:
            raise ValueError(f"max_frames {max_frames} outside 1..{frames.nframes}")
        self.domid = domid
        self.frames = frames
        self.resolve = resolve
        self.max_frames = max_frames
        self.nr_frames = min(nr_frames, max_frames)
        self.max_maptrack = max_maptrack_frames * A.MAPTRACK_PER_FRAME
        self.active: dict[int, ActiveEntry] = {}
        self.maptrack: dict[int, "Mapping"] = {}
        self._free_handles: list[int] = []
        self._next_handle = 0
        self.dying = False      # the domain stopped; the table lives while pinned
        self.on_buried = None   # fn(table) once dying and unpinned: frees its frames
        self.buried = False
        # Pages the domain shares that are not in its own memory (the host's
        # imported dma-bufs, gntdev.py), by GFN; consulted before *resolve*.
        self.adopted: dict[int, Frame] = {}

    @property
    def nr_entries(self) -> int:
        return self.nr_frames * A.ENTRIES_PER_FRAME

    def entry_addr(self, ref: int) -> int:
        """VMM address of entry *ref* (the caller has checked ``ref < nr_entries``)."""
        return self.frames.hva + ref * A.GRANT_ENTRY_V1.size

    def entry(self, ref: int) -> tuple[int, int, int]:
        """``(flags, domid, frame)`` of entry *ref* as it is now (a snapshot)."""
        return A.GRANT_ENTRY_V1.unpack_from(self.frames.buffer, ref * A.GRANT_ENTRY_V1.size)

    @property
    def pinned(self) -> bool:
        return any(a.pin for a in self.active.values())

    @property
    def mapped(self) -> bool:
        """The entries' memory is still mapped in the VMM (False once its
        FrameRange was freed, e.g. by the service's close while a host user
        still held a pin: nothing may then read or write the entries)."""
        return getattr(self.frames, "fd", 0) >= 0

    def frame_of(self, gfn: int) -> Frame | None:
        """The page behind *gfn*: an adopted page, else :attr:`resolve`."""
        frame = self.adopted.get(gfn)
        return frame if frame is not None else self.resolve(gfn)

    # --- maptrack ------------------------------------------------------------------------
    def alloc_handle(self, mapping: "Mapping") -> int | None:
        if self._free_handles:
            h = self._free_handles.pop()
        elif self._next_handle < self.max_maptrack:
            h = self._next_handle
            self._next_handle += 1
        else:
            return None
        self.maptrack[h] = mapping
        return h

    def free_handle(self, handle: int) -> None:
        del self.maptrack[handle]
        self._free_handles.append(handle)


@dataclass(slots=True)
class Mapping:
    """One maptrack entry of a mapping domain: which grant, how, and where."""
    granter: GrantTable
    ref: int
    flags: int            # GNTMAP_* of the map op
    kind: int             # pin shift (abi.PIN_*) of the host half
    dev: bool             # also a device mapping (PIN_DEV_*)
    host_addr: int        # guest: GPA in its grant window; host: 0 (see gntdev)
    undo: object = None   # callable that removes the host mapping, or None

    @property
    def frame(self) -> Frame:
        """The granted page (the active entry's), while mapped; its
        ``mfn * 4096`` is the ``dev_bus_addr`` of a device mapping."""
        return self.granter.active[self.ref].frame


class GrantError(Exception):
    """A grant operation failed with ``status`` (a GNTST_* code, < 0)."""

    def __init__(self, status: int, why: str = "") -> None:
        super().__init__(why or A.GNTST_NAMES.get(status, str(status)))
        self.status = status


def pin_shift(flags: int) -> tuple[int, bool]:
    """``(host pin shift, writable)`` for GNTMAP_* *flags* (host half)."""
    rw = not flags & A.GNTMAP_readonly
    return (A.PIN_HOST_WRITE if rw else A.PIN_HOST_READ), rw


class Grants:
    """All grant tables of one hypervisor, by domid, and the operations on
    them (map/pin, unmap/unpin, copy).  Thread-safe: vCPU threads and host
    callers share one lock, held while a pin count and its entry's GTF bits
    change together."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.tables: dict[int, GrantTable] = {}

    def add(self, table: GrantTable) -> None:
        with self.lock:
            old = self.tables.get(table.domid)
            if old is not None and not old.dying:
                raise ValueError(f"domain {table.domid} has a grant table")
            self.tables[table.domid] = table

    def table(self, domid: int, caller: int) -> GrantTable:
        """The live table of *domid* (``DOMID_SELF`` = *caller*); GNTST_bad_domain."""
        if domid == A.DOMID_SELF:
            domid = caller
        t = self.tables.get(domid)
        if t is None or t.dying or not t.mapped:
            raise GrantError(A.GNTST_bad_domain, f"no domain {domid}")
        return t

    # --- pins (Xen's map_grant_ref steps 5-9, and acquire_grant_for_copy) --------------------
    def pin(self, granter: GrantTable, ref: int, mapper: int, shift: int, rw: bool) -> ActiveEntry:
        """Take one pin of kind *shift* on *ref* for domain *mapper*; the
        active entry.  Raises :class:`GrantError` as Xen's statuses: a ref
        past the table, ``bad_gntref``; pinned by another domain, a counter
        overflow, a wrong type/domid, a write pin of a read-only entry, an
        unstable entry, ``general_error``; a frame the granter does not own,
        ``bad_page``.  Call with :attr:`lock` held."""
        if not 0 <= ref < granter.nr_entries:
            raise GrantError(A.GNTST_bad_gntref, f"ref {ref} >= {granter.nr_entries}")
        act = granter.active.get(ref)
        if act is not None and act.pin:
            if act.domid != mapper:
                raise GrantError(A.GNTST_general_error, "entry pinned by another domain")
            if (act.pin >> shift) & A.PIN_FAIL_BIT:
                raise GrantError(A.GNTST_general_error, "pin count overflow")
        if act is None or not act.pin or (rw and not act.pin & A.PIN_WRITE_MASK):
            readonly = self._acquire(granter, ref, mapper, rw)
            if act is None or not act.pin:
                frame_gfn = granter.entry(ref)[2]
                frame = granter.frame_of(frame_gfn)
                if frame is None:
                    self._release_bits(granter, ref, 0)
                    raise GrantError(A.GNTST_bad_page, f"frame {frame_gfn:#x} not the granter's")
                act = ActiveEntry(mapper, frame, readonly)
                granter.active[ref] = act
        act.pin += 1 << shift
        return act

    def unpin(self, granter: GrantTable, ref: int, shift: int) -> None:
        """Drop one pin of kind *shift*; clear GTF_writing when the last
        write pin goes and GTF_reading with the last pin.  Lock held."""
        act = granter.active[ref]
        act.pin -= 1 << shift
        self._release_bits(granter, ref, act.pin)
        if not act.pin:
            del granter.active[ref]
            if granter.dying and not granter.active:
                self._bury(granter)

    def _acquire(self, granter: GrantTable, ref: int, mapper: int, rw: bool) -> bool:
        """Validate entry *ref* for *mapper* and set GTF_reading (+ GTF_writing
        if *rw*) atomically on the ``{flags, domid}`` word (Xen's
        ``_set_status_v1``); the entry's GTF_readonly."""
        addr = granter.entry_addr(ref)
        for _ in range(5):
            combo = atomic.load_u32(addr)
            flags, domid = combo & 0xFFFF, combo >> 16
            if (flags & A.GTF_type_mask) != A.GTF_permit_access or flags & A.GTF_sub_page:
                raise GrantError(A.GNTST_general_error, f"bad entry type {flags:#x}")
            if domid != mapper:
                raise GrantError(A.GNTST_general_error,
                                 f"entry names domain {domid}, not {mapper}")
            if rw and flags & A.GTF_readonly:
                raise GrantError(A.GNTST_general_error, "write pin of a read-only entry")
            new = flags | A.GTF_reading | (A.GTF_writing if rw else 0)
            if atomic.cmpxchg(addr, 4, combo, (domid << 16) | new) == combo:
                return bool(flags & A.GTF_readonly)
        raise GrantError(A.GNTST_general_error, "unstable grant entry")

    def _release_bits(self, granter: GrantTable, ref: int, pin: int) -> None:
        clear = 0
        if not pin & A.PIN_WRITE_MASK:
            clear |= A.GTF_writing
        if not pin:
            clear |= A.GTF_reading
        if clear and granter.mapped:
            atomic.fetch_and_u8(granter.entry_addr(ref), ~clear & 0xFF)

    def _bury(self, granter: GrantTable) -> None:
        if granter.buried:
            return
        granter.buried = True
        if self.tables.get(granter.domid) is granter:
            del self.tables[granter.domid]
        if granter.on_buried is not None:
            granter.on_buried(granter)

    # --- map / unmap ------------------------------------------------------------------------
    def map(self, mapper: GrantTable, granter_domid: int, ref: int, flags: int,
            host_addr: int, place, *, hvm: bool = True) -> tuple[int, Mapping]:
        """Map grant *ref* of *granter_domid* for *mapper* (GNTTABOP_map_grant_ref
        semantics, in Xen's order of checks); ``(handle, mapping)``.  An
        *hvm* mapper (a guest: translated, as Xen's HVM/PVH) may only ask for
        a host mapping without cache attributes (else ``general_error``).
        *place* ``(frame, readonly) -> undo`` makes the host mapping (a grant
        window page, a host view); it raises :class:`GrantError` to fail the
        op, and everything is undone.  Raises :class:`GrantError`."""
        if not flags & (A.GNTMAP_host_map | A.GNTMAP_device_map):
            raise GrantError(A.GNTST_bad_gntref, "neither host_map nor device_map")
        if hvm and flags & (A.GNTMAP_device_map | A.GNTMAP_application_map
                            | A.GNTMAP_contains_pte):
            raise GrantError(A.GNTST_general_error, "a translated mapper asks for more "
                             "than host_map")
        shift, rw = pin_shift(flags)
        dev = bool(flags & A.GNTMAP_device_map)
        with self.lock:
            granter = self.table(granter_domid, mapper.domid)
            mapping = Mapping(granter, ref, flags, shift, dev, host_addr)
            handle = mapper.alloc_handle(mapping)
            if handle is None:
                raise GrantError(A.GNTST_no_space, "maptrack full")
            taken: list[int] = []
            try:
                if flags & A.GNTMAP_host_map:
                    act = self.pin(granter, ref, mapper.domid, shift, rw)
                    taken.append(shift)
                if dev:
                    dshift = A.PIN_DEV_WRITE if rw else A.PIN_DEV_READ
                    act = self.pin(granter, ref, mapper.domid, dshift, rw)
                    taken.append(dshift)
                if hvm and granter.entry(ref)[0] & (A.GTF_PWT | A.GTF_PCD | A.GTF_PAT):
                    raise GrantError(A.GNTST_general_error, "cache attributes")
                if flags & A.GNTMAP_host_map:
                    mapping.undo = place(act.frame, not rw)
            except BaseException:
                for s in taken:
                    self.unpin(granter, ref, s)
                mapper.free_handle(handle)
                raise
            if not flags & A.GNTMAP_host_map:
                mapping.kind = -1
            return handle, mapping

    def unmap(self, mapper: GrantTable, handle: int, *, host_addr: int = 0,
              dev_bus_addr: int = 0, host: bool = True, device: bool = True) -> None:
        """Remove *handle*'s host half (if *host*) and/or device half (if
        *device*) (GNTTABOP_unmap_grant_ref): the host mapping goes first,
        then the pin; the handle is freed when neither half is left.  Raises
        :class:`GrantError`: an unknown or already unmapped handle,
        ``bad_handle``; *host_addr* not where the host half is mapped,
        ``general_error``; *dev_bus_addr* not the frame of a mapping that
        has a device half, ``bad_dev_addr`` (Xen >= 4.15 ignores
        dev_bus_addr for a mapping without one, as here).  Nothing changes
        on an error."""
        with self.lock:
            m = mapper.maptrack.get(handle) if 0 <= handle < mapper.max_maptrack else None
            if m is None:
                raise GrantError(A.GNTST_bad_handle, f"handle {handle}")
            act = m.granter.active[m.ref]
            if dev_bus_addr and m.dev and dev_bus_addr != act.frame.mfn * PAGE_SIZE:
                raise GrantError(A.GNTST_bad_dev_addr, f"{dev_bus_addr:#x}")
            if host_addr and m.kind >= 0 and host_addr != m.host_addr:
                raise GrantError(A.GNTST_general_error, f"nothing mapped at {host_addr:#x}")
            if host and m.kind >= 0:
                if m.undo is not None:
                    try:
                        m.undo()
                    except OSError as e:
                        # e.g. ENOMEM at vm.max_map_count: the page is still
                        # mapped, so the pin stays and the handle stays valid.
                        raise GrantError(A.GNTST_general_error,
                                         f"cannot remove the mapping: {e}") from None
                    m.undo = None
                self.unpin(m.granter, m.ref, m.kind)
                m.kind = -1
            if device and m.dev:
                self.unpin(m.granter, m.ref,
                           A.PIN_DEV_READ if m.flags & A.GNTMAP_readonly else A.PIN_DEV_WRITE)
                m.dev = False
            if m.kind < 0 and not m.dev:
                mapper.free_handle(handle)

    def release_mappings(self, mapper: GrantTable) -> None:
        """Drop every mapping *mapper* holds (a dying domain: Xen's
        ``gnttab_release_mappings``)."""
        with self.lock:
            for handle in list(mapper.maptrack):
                try:
                    self.unmap(mapper, handle)
                except Exception:  # noqa: BLE001 - drop the others regardless
                    pass

    def retire(self, table: GrantTable) -> None:
        """The table's domain stopped: new maps of it fail (``bad_domain``);
        pinned entries stay valid for their mappers (Xen's zombie domain)
        until the last unpin, when ``table.on_buried`` runs."""
        with self.lock:
            table.dying = True          # first: nothing below may leave it live
            self.release_mappings(table)
            if not table.pinned:
                self._bury(table)

    # --- copy -------------------------------------------------------------------------------------
    def copy(self, caller: GrantTable, src: tuple, dst: tuple, length: int, local) -> None:
        """One GNTTABOP_copy op.  *src*/*dst*: ``("gref", domid, ref, offset)``
        or ``("frame", domid, gmfn, offset)``; *local* ``(gmfn) -> Frame | None``
        resolves the caller's own frames.  Raises :class:`GrantError` in
        Xen's order of checks (``gnttab_copy_one``): len 0 succeeds at once;
        then per side, source first, a frame side not saying ``DOMID_SELF``
        (not even the caller's own domid: ``permission_denied``) and an
        unknown domain (``bad_domain``); then
        the source is claimed, then the destination (a grant as for a map,
        pinned host-read / host-write for the op only; a frame that is not
        the caller's, ``bad_page``); only then ``offset + len > 4096`` on
        either side, ``bad_copy_arg``."""
        if length == 0:
            return
        with self.lock:
            tables = []
            for side in (src, dst):
                if side[0] == "frame" and side[1] != A.DOMID_SELF:
                    raise GrantError(A.GNTST_permission_denied, "a frame side must be DOMID_SELF")
                tables.append(self.table(side[1], caller.domid))
            held: list[tuple[GrantTable, int, int]] = []
            try:
                addrs = []
                for side, t, writing in ((src, tables[0], False), (dst, tables[1], True)):
                    if side[0] == "gref":
                        shift = A.PIN_HOST_WRITE if writing else A.PIN_HOST_READ
                        act = self.pin(t, side[2], caller.domid, shift, writing)
                        held.append((t, side[2], shift))
                        frame = act.frame
                    else:
                        frame = local(side[2])
                        if frame is None:
                            raise GrantError(A.GNTST_bad_page, f"frame {side[2]:#x}")
                    addrs.append(frame.hva + side[3])
                if src[3] + length > PAGE_SIZE or dst[3] + length > PAGE_SIZE:
                    raise GrantError(A.GNTST_bad_copy_arg, "crosses a page")
                ctypes.memmove(addrs[1], addrs[0], length)
            finally:
                for t, ref, shift in held:
                    self.unpin(t, ref, shift)
