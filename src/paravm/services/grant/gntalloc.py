"""gntalloc and the host as granter: domain 0 shares its own pages.

Linux facts this follows (specs/grant-mpt.md §D1.4, §D2.1, §D2.8, §D2.10;
``drivers/xen/gntalloc.c``, ``drivers/xen/grant-table.c``):

* **Granting** takes a free reference of the granter's table (never the
  reserved 0..7), writes the entry's domid and frame, then -- after a write
  barrier -- its flags (``GTF_permit_access``, ``| GTF_readonly``): the
  hypervisor honours an entry only once its flags say so.  No free reference
  (the table cannot grow past its maximum): ``ENOSPC``.
* **Ending foreign access** (v1): read the flags; if GTF_reading or
  GTF_writing is set a peer still maps (or copies) the page: "busy";
  otherwise compare-exchange the flags to 0, retrying if they changed under
  us.  Only the hypervisor sets and clears those two bits (:mod:`.table`),
  so a busy entry can only become free when the peer unmaps.
* A page whose reference is busy is **never freed**: Linux queues
  ``{ref, page}`` on a deferred list retried from a 1 Hz timer and frees
  the page only once the entry is really revoked (freeing a page a peer can
  still reach is the XSA-396 class of bug).  Here the deferred list is
  retried, wholly, at every call into :class:`HostGranter` or
  :class:`Gntalloc` and by :meth:`HostGranter.retry_deferred` (no timer
  thread: the owner of the VMM's event loop may call it periodically).
* **gntalloc** (``/dev/xen/gntalloc``): ``ALLOC_GREF`` gives ``count``
  zeroed pages, each granted to one domain, and an index (a per-file byte
  counter, never reused); ``mmap`` maps consecutive grefs of the file;
  ``DEALLOC_GREF`` drops only the file's reference: a page goes when the
  file and every mapping of it let go *and* its grant is revoked.  A global
  limit (module parameter ``limit``, 1024 pages) counts every page not yet
  freed, including those whose local users are gone but that a peer still
  maps (the accounting before the XSA-396 fixes, which the spec asks for;
  since Linux 5.17 such pages sit on grant-table.c's deferred list and no
  longer count) --
  so a peer that never unmaps cannot make the host allocate without bound.
  The unmap notification fires on the final local release: the byte is
  zeroed in the host's own page, the event sent, then access is ended.

Pages come from the grant service (``host_alloc``: one machine-frame range
per ALLOC, freed when its last page is), so their MFNs are the host's GFNs.
Views are :class:`~.gntdev.HostView` s over the pages' memfd: zero copy,
the page the peer maps.
"""

from __future__ import annotations

import errno
import heapq
import struct
import threading
import weakref

from ...memory import PAGE_SIZE, atomic
from . import abi as A
from .gntdev import (HostView, _DeviceFile, _err, _uint, check_notify, find_vma,
                     fire_notify_event)

_U16, _U32, _U64 = (1 << 16) - 1, (1 << 32) - 1, (1 << 64) - 1
_BUSY = A.GTF_reading | A.GTF_writing


class HostGranter:
    """Domain 0 as granter: references of the host's grant table
    (``service.host``), Linux ``grant-table.c``'s semantics.  One per grant
    service (:func:`host_granter`); every host user that grants (gntalloc,
    gntdev's dma-buf import, vchan through gntalloc) goes through it so that
    references are never handed out twice.  Thread-safe."""

    def __init__(self, service) -> None:
        self.service = service
        self.table = service.host
        self.lock = threading.RLock()
        self._free: list[int] = []                 # heap of released refs
        self._next = A.NR_RESERVED_ENTRIES         # refs below are never handed out
        self._deferred: list[tuple[int, object]] = []
        # gntalloc's module-wide accounting (gref_size and the `limit` parameter)
        self.gntalloc_pages = 0
        self.gntalloc_limit = A.GNTALLOC_LIMIT

    # --- references --------------------------------------------------------------------------
    def grant(self, domid: int, gfn: int, readonly: bool = False) -> int:
        """Grant page *gfn* of the host (an MFN from ``service.host_alloc``)
        to domain *domid* (u16); the reference (>= 8).  ``ENOSPC`` when no
        reference is free, ``EINVAL`` for a domid or frame that does not
        fit the entry (u16 / u32)."""
        domid = _uint(domid, _U16, "domid")
        gfn = _uint(gfn, _U32, "frame")
        with self.lock:
            if not self.table.mapped:
                raise _err(errno.ENXIO, "the grant service is closed")
            self.retry_deferred()
            if self._free:
                ref = heapq.heappop(self._free)
            elif self._next < self.table.nr_entries:
                ref = self._next
                self._next += 1
            else:
                raise _err(errno.ENOSPC, "the host's grant table is full")
            buf, off = self.table.frames.buffer, ref * A.GRANT_ENTRY_V1.size
            struct.pack_into("<HI", buf, off + 2, domid, gfn)
            flags = A.GTF_permit_access | (A.GTF_readonly if readonly else 0)
            # The locked cmpxchg is the write barrier: domid and frame are
            # visible before the flags that make the entry valid.
            old = atomic.cmpxchg(self.table.entry_addr(ref), 2, 0, flags)
            if old != 0:            # only a revoked entry (flags 0) is ever free
                raise _err(errno.EBUSY, f"ref {ref} still has flags {old:#x}")
            return ref

    def _addr(self, ref: int) -> int:
        if not isinstance(ref, int) or not A.NR_RESERVED_ENTRIES <= ref < self.table.nr_entries:
            raise _err(errno.EINVAL, f"ref {ref!r} is not a host grant reference")
        return self.table.entry_addr(ref)

    def query_foreign_access(self, ref: int) -> bool:
        """Does a peer hold *ref* (GTF_reading or GTF_writing set)?
        ``EINVAL`` for a reference outside 8..table size."""
        addr = self._addr(ref)
        if not self.table.mapped:       # the service closed: no peer can hold anything
            return False
        flags = atomic.load_u32(addr) & 0xFFFF
        return bool(flags & _BUSY)

    def end_foreign_access_ref(self, ref: int) -> bool:
        """Revoke *ref* if no peer holds it (Linux
        ``gnttab_end_foreign_access_ref``, v1): True when the flags are now 0;
        False ("busy") while GTF_reading or GTF_writing is set.  The
        reference stays allocated either way.
        ``EINVAL`` for a reference outside 8..table size."""
        addr = self._addr(ref)
        if not self.table.mapped:       # the service closed (a finalizer at exit)
            return True
        flags = atomic.load_u32(addr) & 0xFFFF
        while True:
            if flags & _BUSY:
                return False
            old = atomic.cmpxchg(addr, 2, flags, 0)
            if old == flags:
                return True
            flags = old

    def end_foreign_access(self, ref: int, release=None) -> bool:
        """Revoke *ref* and free it, then call *release* (which frees the
        page); while busy, queue both on the deferred list instead and do
        it when a later retry succeeds.  True if done now."""
        with self.lock:
            self.retry_deferred()
            if self.end_foreign_access_ref(ref):
                heapq.heappush(self._free, ref)
                if release is not None:
                    release()
                return True
            self._deferred.append((ref, release))
            return False

    def retry_deferred(self) -> int:
        """Retry every deferred revoke (Linux's timer does up to
        ``free_per_iteration`` a tick); the number still busy."""
        with self.lock:
            if not self._deferred or not self.table.mapped:
                return len(self._deferred)
            keep, done = [], []
            for ref, release in self._deferred:
                if self.end_foreign_access_ref(ref):
                    heapq.heappush(self._free, ref)
                    done.append(release)
                else:
                    keep.append((ref, release))
            self._deferred = keep
            for release in done:
                if release is not None:
                    release()
            return len(keep)

    @property
    def deferred(self) -> int:
        """References waiting for their peer to unmap."""
        with self.lock:
            return len(self._deferred)


_granters_lock = threading.Lock()
_granters: "weakref.WeakKeyDictionary[object, HostGranter]" = weakref.WeakKeyDictionary()


def host_granter(service) -> HostGranter:
    """The :class:`HostGranter` of grant service *service* (made on first use)."""
    with _granters_lock:
        g = _granters.get(service)
        if g is None:
            g = _granters[service] = HostGranter(service)
        return g


# --- gntalloc --------------------------------------------------------------------------------
class _Pages:
    """The machine frames of one ALLOC_GREF; freed when every page is."""
    __slots__ = ("fr", "live")

    def __init__(self, fr, live: int) -> None:
        self.fr, self.live = fr, live


class _Gref:
    """Linux ``struct gntalloc_gref``."""
    __slots__ = ("ref", "pages", "page", "users", "file_index",
                 "notify_flags", "notify_pgoff", "notify_port")

    def __init__(self, ref: int, pages: _Pages, page: int, file_index: int) -> None:
        self.ref, self.pages, self.page, self.file_index = ref, pages, page, file_index
        self.users = 1                  # the file
        self.notify_flags = self.notify_pgoff = self.notify_port = 0


class _AllocVma:
    __slots__ = ("view", "grefs", "index")

    def __init__(self, view: HostView, grefs: list[_Gref], index: int) -> None:
        self.view, self.grefs, self.index = view, grefs, index


class _AllocFile:
    """Everything one open gntalloc holds (the finalizer's target)."""

    def __init__(self, service) -> None:
        self.service = service
        self.granter = host_granter(service)
        self.lock = self.granter.lock      # gntalloc's one global gref_mutex
        self.grefs: list[_Gref] = []       # the file's list, by file_index
        self.index = 0                     # next file index (bytes)
        self.vmas: list[_AllocVma] = []
        self.closed = False

    def find_grefs(self, index: int, count: int) -> list[_Gref] | None:
        """*count* grefs of the file at consecutive pages from byte *index*."""
        for k, g in enumerate(self.grefs):
            if g.file_index == index:
                run = self.grefs[k:k + count]
                if count and len(run) == count and all(
                        r.file_index == index + j * PAGE_SIZE for j, r in enumerate(run)):
                    return run
                return None
        return None

    def del_gref(self, g: _Gref) -> None:
        """Final local release: zero the notify byte in our own page, send
        the event, then end foreign access (deferred while a peer maps it)."""
        fr = g.pages.fr
        if g.notify_flags & A.UNMAP_NOTIFY_CLEAR_BYTE and fr.fd >= 0:
            atomic.xchg_u8(fr.hva + g.page * PAGE_SIZE + g.notify_pgoff, 0)
        fire_notify_event(self.service, g.notify_flags, g.notify_port)
        g.notify_flags = 0
        self.granter.end_foreign_access(g.ref, lambda: self.page_freed(g))

    def page_freed(self, g: _Gref) -> None:
        self.granter.gntalloc_pages -= 1
        g.pages.live -= 1
        if g.pages.live == 0:
            self.service.host_free(g.pages.fr)

    def drop_user(self, g: _Gref) -> None:
        g.users -= 1
        if g.users == 0:
            self.del_gref(g)

    def drop_vma(self, vma: _AllocVma) -> None:
        self.vmas.remove(vma)
        vma.view.close()                   # the process can no longer reach the pages
        for g in vma.grefs:
            self.drop_user(g)

    def release(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            for vma in list(self.vmas):
                self.drop_vma(vma)
            grefs, self.grefs = self.grefs, []
            for g in grefs:
                self.drop_user(g)
            self.granter.retry_deferred()


class Gntalloc(_DeviceFile):
    """One open ``/dev/xen/gntalloc`` of the host on grant service
    *service*: pages the host allocates and grants to a guest.  A context
    manager; :meth:`close` (or losing this object, or interpreter exit)
    releases the file as Linux's does.  Thread-safe."""

    _name = "gntalloc"

    def __init__(self, service) -> None:
        super().__init__(_AllocFile(service))

    @property
    def granter(self) -> HostGranter:
        return self._f.granter

    # --- IOCTL_GNTALLOC_ALLOC_GREF ------------------------------------------------------------
    def alloc_gref(self, domid: int, count: int, writable: bool) -> tuple[int, list[int]]:
        """*count* zeroed pages granted to domain *domid* (u16), read-write
        iff *writable* (GNTALLOC_FLAG_WRITABLE); ``(index, refs)`` with
        *index* the byte offset of the first page in this file.  Count 0
        succeeds with no refs (the driver's kcalloc(0) does).  ``ENOSPC``:
        more than ``limit`` pages would be live host-wide (pages a peer
        still maps count; deferred revokes are retried first), or the
        host's grant table is full; ``ENOMEM``: no machine frames."""
        f = self._open()
        domid = _uint(domid, _U16, "domid")
        count = _uint(count, _U32, "count")
        granter = f.granter
        with f.lock:
            granter.retry_deferred()
            if granter.gntalloc_pages + count > granter.gntalloc_limit:
                raise _err(errno.ENOSPC, f"{granter.gntalloc_pages} + {count} pages > "
                                         f"limit {granter.gntalloc_limit}")
            granter.gntalloc_pages += count
            index = f.index
            f.index += count * PAGE_SIZE
            if count == 0:
                return index, []
            try:
                fr = f.service.host_alloc(count, "dom0.gntalloc")
            except (MemoryError, OSError):
                granter.gntalloc_pages -= count
                raise _err(errno.ENOMEM, "no machine frames") from None
            pages = _Pages(fr, count)
            new: list[_Gref] = []
            try:
                for i in range(count):
                    ref = granter.grant(domid, fr.mfn + i, readonly=not writable)
                    new.append(_Gref(ref, pages, i, index + i * PAGE_SIZE))
            except OSError:
                # The pages that got no reference go now; the others as any gref.
                for _ in range(count - len(new)):
                    granter.gntalloc_pages -= 1
                    pages.live -= 1
                if pages.live == 0:
                    f.service.host_free(fr)
                for g in new:
                    f.del_gref(g)
                raise
            f.grefs += new
            return index, [g.ref for g in new]

    # --- mmap ---------------------------------------------------------------------------------
    def mmap(self, index: int, count: int, writable: bool = True,
             shared: bool = True) -> memoryview:
        """A zero-copy view of the *count* consecutive grefs of this file
        from byte offset *index* (any number of times).  ``EINVAL``: not
        *shared* (MAP_PRIVATE), *count* < 1 or *index* unaligned;
        ``ENOENT``: no such run of this file's grefs."""
        f = self._open()
        index = _uint(index, _U64, "index")
        if not shared:
            raise _err(errno.EINVAL, "gntalloc mappings must be MAP_SHARED")
        if not isinstance(count, int) or count < 1 or index % PAGE_SIZE:
            raise _err(errno.EINVAL, f"mmap of {count!r} pages at {index:#x}")
        with f.lock:
            grefs = f.find_grefs(index, count)
            if grefs is None:
                raise _err(errno.ENOENT, f"no {count} consecutive grefs at {index:#x}")
            view = HostView(count, bool(writable))
            try:
                for i, g in enumerate(grefs):
                    view.place(i, g.pages.fr.fd, g.page * PAGE_SIZE)
            except OSError:
                view.close()
                raise
            for g in grefs:
                g.users += 1
            f.vmas.append(_AllocVma(view, grefs, index))
            return view.view()

    def munmap(self, target) -> None:
        """munmap(2) of a view from :meth:`mmap` (the memoryview, a slice of
        it, or its index): the view's pages become private zeros and each
        page whose file reference was dropped too is released (notify,
        then revoke).  A view already munmapped is a no-op; ``EINVAL`` for
        something that is neither a memoryview nor an int."""
        f = self._open()
        with f.lock:
            vma = find_vma(f.vmas, target)
            if vma is not None:
                f.drop_vma(vma)

    # --- IOCTL_GNTALLOC_DEALLOC_GREF ------------------------------------------------------------
    def dealloc_gref(self, index: int, count: int) -> None:
        """Drop this file's reference to *count* consecutive grefs from byte
        offset *index*: pages not mapped are released at once (notify, then
        revoke, deferred while a peer maps them), mapped ones at munmap.
        ``EINVAL`` unless exactly such a run exists (count 0 included)."""
        f = self._open()
        index = _uint(index, _U64, "index")
        count = _uint(count, _U32, "count")
        with f.lock:
            grefs = f.find_grefs(index, count)
            if grefs is None:
                f.granter.retry_deferred()
                raise _err(errno.EINVAL, f"no {count} consecutive grefs at {index:#x}")
            for g in grefs:
                f.grefs.remove(g)
                f.drop_user(g)
            f.granter.retry_deferred()

    # --- IOCTL_GNTALLOC_SET_UNMAP_NOTIFY ---------------------------------------------------------
    def set_unmap_notify(self, index: int, action: int, port: int = 0) -> None:
        """On the final release of the page at byte offset *index*: with
        ``UNMAP_NOTIFY_CLEAR_BYTE`` zero the byte at ``index % 4096`` of that
        (our own) page, with ``UNMAP_NOTIFY_SEND_EVENT`` send an event on
        host port *port*; then access ends.  A second call replaces the
        first.  Checks in the driver's order: no gref of this file at that
        page, ``ENOENT``; other action bits, ``EINVAL``; SEND_EVENT on a
        port the host has not bound, ``EINVAL``."""
        f = self._open()
        index = _uint(index, _U64, "index")
        action = _uint(action, _U32, "action")
        port = _uint(port, _U32, "port")
        with f.lock:
            grefs = f.find_grefs(index & ~(PAGE_SIZE - 1), 1)
            if grefs is None:
                raise _err(errno.ENOENT, f"no gref at {index:#x}")
            check_notify(f.service, action, port)
            g = grefs[0]
            g.notify_flags, g.notify_pgoff, g.notify_port = \
                action, index & (PAGE_SIZE - 1), port


