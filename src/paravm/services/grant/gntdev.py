"""gntdev: the host (domain 0) maps other domains' grants, as Linux ``/dev/xen/gntdev``.

Linux facts this follows (specs/grant-mpt.md §D1.3, §D2.7, §D2.10; modern
kernels, ``drivers/xen/gntdev.c`` and ``gntdev-dmabuf.c``; Appendix B for
older ones):

* An open file keeps a sorted list of *maps*: ``count`` (domid, ref) pairs
  at a page index.  ``MAP_GRANT_REF`` only records them and returns the
  index as a byte offset (no hypercall); a new map goes into the first gap
  ``start + count < next.start`` (strictly: a hole of exactly ``count``
  pages is skipped).  ``mmap`` at that offset with exactly that length maps
  the grants, all or nothing as far as the caller is told (any bad element:
  ``EINVAL``), but the elements that did map stay mapped until the map goes;
  a map can be mmapped once in its life (the latch is set before mapping).
* A map lives while the list or a mapping holds it.  ``UNMAP_GRANT_REF``
  drops the list's reference (before munmap too); when the last reference
  goes the grants are unmapped: the unmap notification's byte is cleared
  just before the page holding it is unmapped, its event is sent after all
  pages are unmapped (only then may the granter revoke).  In HVM/PVH mode
  (the kernel's own pages hold the grants) munmap does not unmap anything:
  the grants stay until UNMAP or close.
* The granter learns nothing from gntdev directly: what it sees is the
  GTF_reading/GTF_writing bits the hypervisor sets while a grant is pinned
  (:mod:`.table`).

How paravm builds it.  A map's pages are shown in a :class:`HostView`: a
private anonymous reservation of VMM address space (a Python
:class:`mmap.mmap`) whose pages are replaced, one per grant, by
``mmap(MAP_FIXED|MAP_SHARED)`` of the granter's memfd page
(:mod:`paravm.memory.remap`): zero copy, the same physical page the granter
and its guest see.  The grant is mapped through the hypervisor core
(``Grants.map(..., hvm=False)``: domain 0 is privileged, so it may also
device-map, as dma-buf export does); unmapping a grant first puts private
zero pages over the view's page (``remap.map_anonymous``), then drops the
pin, so a memoryview still held afterwards reads zeros and never reaches
the granter again.  Python cannot fault on access, so a view is the
"kernel page" of HVM gntdev too: after :meth:`Gntdev.munmap` the memoryview
that mmap returned is released (``ValueError`` on use), slices of it keep
showing the granted page until the grants are unmapped (UNMAP or close),
then zeros.

Errors are ``OSError(errno)`` with the errno Linux's driver returns; an
argument that could not be in the C struct (a negative count, an index
above u64) is ``EINVAL``, a refs or segment list that cannot be read as the
C array (not a sequence, an element of the wrong shape or range) is
``EFAULT`` (the kernel's failed copy_from_user).  Divergences (SET_MAX_GRANTS,
munmap, dma-buf without udmabuf, no paging): docs/gntdev.md.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import stat
import struct
import threading
import time
import weakref
from dataclasses import dataclass

from ...memory import PAGE_SHIFT, PAGE_SIZE, atomic, remap
from . import abi as A
from .table import Frame, GrantError

_U16, _U32, _U64 = (1 << 16) - 1, (1 << 32) - 1, (1 << 64) - 1
COPY_BATCH = 16                        # gntdev's GNTDEV_COPY_BATCH: ops per hypercall

# linux/dma-buf.h: struct dma_buf_sync flags (dmabuf_sync, the copy fallback's coherency)
DMA_BUF_SYNC_READ = 1 << 0
DMA_BUF_SYNC_WRITE = 2 << 0
DMA_BUF_SYNC_RW = DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE
DMA_BUF_SYNC_START = 0 << 2
DMA_BUF_SYNC_END = 1 << 2

# linux/udmabuf.h
UDMABUF_CREATE_LIST = 0x40087543       # _IOW('u', 0x43, struct udmabuf_create_list) (8 bytes)
UDMABUF_FLAGS_CLOEXEC = 0x01
UDMABUF_LIST_LIMIT = 1024              # the module's default list_limit
_UDMABUF_LIST = struct.Struct("<II")   # flags, count
_UDMABUF_ITEM = struct.Struct("<IIQQ")  # memfd, pad, offset, size
_SEALS_NEEDED = fcntl.F_SEAL_SHRINK
_SEALS_REFUSED = fcntl.F_SEAL_WRITE | getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x10)


def _err(code: int, why: str) -> OSError:
    return OSError(code, f"{os.strerror(code)}: {why}")


def _uint(value, mask: int, what: str, code: int = errno.EINVAL) -> int:
    """*value* as an unsigned C field of *mask*; ``OSError(code)`` otherwise."""
    if not isinstance(value, int) or not 0 <= value <= mask:
        raise _err(code, f"{what} {value!r} is not a u{mask.bit_length()}")
    return int(value)


# --- buffers: the address of any Python buffer --------------------------------------------
class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (stable ABI since 3.11)."""
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p),
                ("len", ctypes.c_ssize_t), ("itemsize", ctypes.c_ssize_t),
                ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p),
                ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
                ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None
_PyBUF_WRITABLE = 0x0001


class _Export:
    """A held export of a Python buffer (C-contiguous bytes): ``addr``,
    ``len``; the object cannot be resized or freed until :meth:`release`.
    ``OSError(EFAULT)`` if *obj* has no such buffer (or is read-only and
    *writable* is asked), as the kernel's get_user_pages would fail."""

    def __init__(self, obj, writable: bool) -> None:
        self._view = _PyBuffer()
        try:
            _get_buffer(obj, ctypes.byref(self._view), _PyBUF_WRITABLE if writable else 0)
        except (BufferError, TypeError, ValueError) as e:
            raise _err(errno.EFAULT, f"not a {'writable ' if writable else ''}buffer: {e}") \
                from None
        self.addr, self.len = self._view.buf or 0, self._view.len
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            _release_buffer(ctypes.byref(self._view))


def _address(obj) -> int:
    """The address of *obj*'s buffer (not held: the caller keeps *obj* alive)."""
    ex = _Export(obj, False)
    try:
        return ex.addr
    finally:
        ex.release()


# --- host views --------------------------------------------------------------------------------
class HostView:
    """*pages* pages of VMM address space where granted pages are shown:
    one private anonymous Python :class:`mmap.mmap` (``PROT_READ`` only,
    and so read-only for Python as well, unless *writable*), whose pages
    :meth:`place` replaces with a memfd page and :meth:`blank` puts back to
    private zero pages.  :meth:`view` hands out a memoryview of all of it;
    :meth:`close` blanks every page, releases those memoryviews and unmaps
    the range (or, while a slice is still held, leaves the zero pages to be
    unmapped when the slice goes).  Not thread-safe: its owner serialises."""

    def __init__(self, pages: int, writable: bool) -> None:
        self.pages, self.writable = pages, writable
        self.size = pages * PAGE_SIZE
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self.mm = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE, prot=prot)
        self.addr = _address(self.mm)
        self.views: list[memoryview] = []
        self.closed = False

    def place(self, i: int, fd: int, offset: int) -> None:
        """Show page *offset* of memfd *fd* at page *i* (``OSError``)."""
        if self.closed or not 0 <= i < self.pages:
            raise _err(errno.EINVAL, f"page {i} of a closed or smaller view")
        remap.map_fixed(self.addr + i * PAGE_SIZE, PAGE_SIZE, fd, offset,
                        writable=self.writable)

    def blank(self, i: int | None = None, n: int = 1) -> None:
        """Private zero pages over pages ``i .. i+n`` (all if *i* is None)."""
        if self.closed:
            return
        if i is None:
            i, n = 0, self.pages
        remap.map_anonymous(self.addr + i * PAGE_SIZE, n * PAGE_SIZE)

    def view(self) -> memoryview:
        v = memoryview(self.mm)
        self.views.append(v)
        return v

    def release_views(self) -> None:
        for v in self.views:
            try:
                v.release()
            except BufferError:      # something holds an export of it: it goes with that
                pass
        self.views.clear()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.blank()
        except OSError:
            pass
        self.closed = True
        self.release_views()
        try:
            self.mm.close()
        except BufferError:
            pass                     # a slice is still held: zero pages until it goes


# --- the process's gntdev mappings (GET_OFFSET_FOR_VADDR looks at all of them) --------------
class _Vma:
    __slots__ = ("start", "end", "map", "view")

    def __init__(self, map_: "_Map", view: HostView) -> None:
        self.start, self.end, self.map, self.view = view.addr, view.addr + view.size, map_, view

    @property
    def index(self) -> int:
        """Byte offset of its map in the file."""
        return self.map.index * PAGE_SIZE


_vmas_lock = threading.Lock()
_vmas: dict[int, _Vma] = {}        # start -> VMA, every Gntdev of the process


def _proc_maps_first_end_above(addr: int, below: int) -> bool:
    """Is there a mapping of this process with ``end > addr`` starting
    below *below*?  (find_vma would return it instead of the gntdev VMA.)"""
    try:
        with open("/proc/self/maps", "rb") as f:
            for line in f:
                lo, _, hi = line.split(b" ", 1)[0].partition(b"-")
                start, end = int(lo, 16), int(hi, 16)
                if end > addr and start < below:
                    return True
    except OSError:
        return True
    return False


# --- maps ----------------------------------------------------------------------------------------
class _Map:
    """One gntdev map (Linux ``struct gntdev_grant_map``)."""

    __slots__ = ("index", "count", "grants", "flags", "users", "in_use", "handles",
                 "frames", "view", "notify_flags", "notify_addr", "notify_port", "dmabuf")

    def __init__(self, grants: list[tuple[int, int]], dmabuf: bool = False) -> None:
        self.index = 0                  # pages
        self.count = len(grants)
        self.grants = grants
        self.flags = 0                  # GNTMAP_* once mmapped
        self.users = 1                  # the file's list
        self.in_use = False             # mmapped once already
        self.handles: list[int | None] = [None] * self.count
        self.frames: list[Frame | None] = [None] * self.count
        self.view: HostView | None = None
        self.notify_flags = 0
        self.notify_addr = 0            # byte offset in the map
        self.notify_port = 0
        self.dmabuf = dmabuf            # an export's backing map: not for MAP/UNMAP/mmap


# --- grant copy segments ---------------------------------------------------------------------
@dataclass
class Local:
    """A side of a copy segment in host memory: *buffer* (any C-contiguous
    Python buffer; writable for a destination) from byte *offset*."""
    buffer: object
    offset: int = 0


@dataclass
class Foreign:
    """A side of a copy segment that is a grant: *ref* of domain *domid*,
    from byte *offset* of the granted page."""
    domid: int
    ref: int
    offset: int = 0


@dataclass
class CopySegment:
    """``struct gntdev_grant_copy_segment``: *source* and *dest* each a
    :class:`Local` or a :class:`Foreign`; *len* bytes (u16); *flags*
    (GNTCOPY_source_gref / GNTCOPY_dest_gref) default to the sides' kinds
    and, if given, must match them.  *status* (OUT) is a GNTST_* code."""
    source: Local | Foreign
    dest: Local | Foreign
    len: int
    flags: int | None = None
    status: int = A.GNTST_okay


def _segment_fields(seg):
    """``(source, dest, len, flags, set_status)`` of a CopySegment or a dict."""
    if isinstance(seg, dict):
        def setter(v, seg=seg):
            seg["status"] = v
        return seg.get("source"), seg.get("dest"), seg.get("len"), seg.get("flags"), setter
    if isinstance(seg, CopySegment):
        def setter(v, seg=seg):
            seg.status = v
        return seg.source, seg.dest, seg.len, seg.flags, setter
    raise _err(errno.EFAULT, f"segment {seg!r} is not a CopySegment or a dict")


# --- dma-buf exports ---------------------------------------------------------------------------
class _MemfdExport:
    """The export of a map when udmabuf cannot be used: a sealed memfd of the
    map's size holding a *copy* of the granted pages, coherent with them only
    at :meth:`sync` (docs/gntdev.md).  Released = the one open file
    description handed out is gone (all its fds, in any process, and all
    mappings of it): it holds a shared ``flock`` that a second description
    of ours can take exclusively only then."""

    kind = "memfd"

    def __init__(self, m: _Map) -> None:
        size = m.count * PAGE_SIZE
        fd = os.memfd_create("paravm:gntdev-dmabuf", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            ours = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            os.close(fd)
            raise
        try:
            self.mm = mmap.mmap(ours, size)       # through our description, not the user's
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            os.close(ours)
            os.close(fd)
            raise
        self.fd, self.ours, self.map, self.size = fd, ours, m, size
        self.addr = _address(self.mm)
        self.sync(DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ)

    def released(self) -> bool:
        try:
            fcntl.flock(self.ours, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(self.ours, fcntl.LOCK_UN)
        return True

    def sync(self, flags: int) -> None:
        view = self.map.view
        if view is None or view.closed:
            return
        if not flags & DMA_BUF_SYNC_END and flags & DMA_BUF_SYNC_READ:
            ctypes.memmove(self.addr, view.addr, self.size)     # granter -> buffer
        if flags & DMA_BUF_SYNC_END and flags & DMA_BUF_SYNC_WRITE:
            ctypes.memmove(view.addr, self.addr, self.size)     # buffer -> granter

    def close(self) -> None:
        if self.ours >= 0:
            self.mm.close()
            os.close(self.ours)
            self.ours = -1


class _UdmabufExport:
    """The export of a map as a real dma-buf over the granter's own pages
    (``UDMABUF_CREATE_LIST`` over their memfd ranges): zero copy and
    coherent.  Released = our duplicate is the dma-buf file's only
    reference left (``count`` in its fdinfo, which excludes procfs's own).
    Untested where /dev/udmabuf is missing (this machine)."""

    kind = "udmabuf"

    def __init__(self, m: _Map, fd: int) -> None:
        self.map, self.fd = m, fd
        self.ours = os.dup(fd)

    def released(self) -> bool:
        return _fdinfo_count(self.ours) == 1

    def sync(self, flags: int) -> None:
        pass

    def close(self) -> None:
        if self.ours >= 0:
            os.close(self.ours)
            self.ours = -1


def _fdinfo_count(fd: int) -> int | None:
    """The ``count:`` of a dma-buf's /proc/self/fdinfo, or None."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"count:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def udmabuf_items(frames: list[Frame]) -> list[tuple[int, int, int]] | None:
    """``(memfd, offset, size)`` items covering *frames* in order, adjacent
    pages of one memfd merged, or None if udmabuf cannot take them: a memfd
    without ``F_SEAL_SHRINK`` or with a write seal (udmabuf's rules), or
    more than :data:`UDMABUF_LIST_LIMIT` items."""
    items: list[list[int]] = []
    seals: dict[int, int] = {}
    for fr in frames:
        s = seals.get(fr.fd)
        if s is None:
            try:
                s = seals[fr.fd] = fcntl.fcntl(fr.fd, fcntl.F_GET_SEALS)
            except OSError:
                return None
        if not s & _SEALS_NEEDED or s & _SEALS_REFUSED:
            return None
        if items and items[-1][0] == fr.fd and items[-1][1] + items[-1][2] == fr.offset:
            items[-1][2] += PAGE_SIZE
        else:
            items.append([fr.fd, fr.offset, PAGE_SIZE])
    if len(items) > UDMABUF_LIST_LIMIT:
        return None
    return [tuple(i) for i in items]


def udmabuf_create_list(items: list[tuple[int, int, int]], dev: str = "/dev/udmabuf") -> int:
    """A dma-buf fd (O_CLOEXEC) over *items*; ``OSError`` as the kernel says
    (``ENOENT`` without the device)."""
    arg = bytearray(_UDMABUF_LIST.pack(UDMABUF_FLAGS_CLOEXEC, len(items)))
    for fd, offset, size in items:
        arg += _UDMABUF_ITEM.pack(fd, 0, offset, size)
    dfd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    try:
        return fcntl.ioctl(dfd, UDMABUF_CREATE_LIST, arg, True)
    finally:
        os.close(dfd)


class _Import:
    """A buffer the host imported and granted (DMABUF_IMP_TO_REFS)."""

    __slots__ = ("fd", "refs", "reserve", "dup", "mm")

    def __init__(self, fd, refs, reserve, dup, mm) -> None:
        self.fd, self.refs, self.reserve, self.dup, self.mm = fd, refs, reserve, dup, mm


# Exports still holding the granter's pages (udmabuf) when their file was
# closed: re-polled by every Gntdev call in the process.
_orphans_lock = threading.Lock()
_orphans: list[tuple["_File", object]] = []


def _reap_orphans() -> None:
    with _orphans_lock:
        if not _orphans:
            return
        keep = []
        for f, exp in _orphans:
            if exp.released():
                exp.close()
                f.destroy_map(exp.map)
            else:
                keep.append((f, exp))
        _orphans[:] = keep


# --- the open file -------------------------------------------------------------------------------
class _File:
    """Everything one open gntdev holds; the :class:`Gntdev` object is a
    handle on it, so a finalizer can release it when the handle is lost."""

    def __init__(self, service) -> None:
        self.service = service
        self.grants = service.grants
        self.lock = threading.RLock()
        self.maps: list[_Map] = []          # sorted by index (the file's list)
        self.vmas: list[_Vma] = []          # this file's live mmaps
        self.exports: list = []
        self.imports: list[_Import] = []
        self.closed = False

    # --- map list -------------------------------------------------------------------------
    def add_map(self, m: _Map) -> None:
        """gntdev_add_map: the first gap with ``start + count < next.start``."""
        index, pos = 0, len(self.maps)
        for k, other in enumerate(self.maps):
            if index + m.count < other.index:
                pos = k
                break
            index = other.index + other.count
        m.index = index
        self.maps.insert(pos, m)

    def find_map(self, index: int, count: int) -> _Map | None:
        """gntdev_find_map_index: page *index*, *count* (0 = any)."""
        for m in self.maps:
            if m.index == index and not m.dmabuf and (not count or m.count == count):
                return m
        return None

    # --- grants -------------------------------------------------------------------------------
    def map_pages(self, m: _Map, view: HostView) -> bool:
        """Map every grant of *m* into *view* (one map op each, all tried, as
        one GNTTABOP_map_grant_ref batch); True if all mapped."""
        ok = True
        host = self.service.host
        for i, (domid, ref) in enumerate(m.grants):
            def place(frame: Frame, readonly: bool, i=i):
                view.place(i, frame.fd, frame.offset)
                m.frames[i] = frame
                return lambda: view.blank(i)
            try:
                # gnttab_set_map_op takes a domid_t: the u32 of the uapi is cut to 16 bits
                m.handles[i], _ = self.grants.map(host, domid & _U16, ref, m.flags, 0, place,
                                                  hvm=False)
            except (GrantError, OSError):
                ok = False
        return ok

    def put_map(self, m: _Map) -> None:
        m.users -= 1
        if m.users == 0:
            self.destroy_map(m)

    def destroy_map(self, m: _Map) -> None:
        """The last reference went: clear the notify byte before its page is
        unmapped, unmap every grant (view page blanked, then unpinned), then
        send the notify event."""
        m.users = 0
        byte_page = m.notify_addr >> PAGE_SHIFT if m.notify_flags & A.UNMAP_NOTIFY_CLEAR_BYTE \
            else -1
        host = self.service.host
        for i, handle in enumerate(m.handles):
            if handle is None:
                continue
            if i == byte_page:
                if not m.flags & A.GNTMAP_readonly and m.view is not None and not m.view.closed:
                    atomic.xchg_u8(m.view.addr + m.notify_addr, 0)
                m.notify_flags &= ~A.UNMAP_NOTIFY_CLEAR_BYTE
            try:
                self.grants.unmap(host, handle)
            except GrantError:
                pass
            m.handles[i] = None
            m.frames[i] = None
        if m.view is not None:
            m.view.close()
        fire_notify_event(self.service, m.notify_flags, m.notify_port)
        m.notify_flags = 0

    def end_export(self, exp) -> None:
        """The buffer is released (or a copy export's file closes): its map goes."""
        if exp in self.exports:
            self.exports.remove(exp)
        exp.close()
        if exp.map in self.maps:
            self.maps.remove(exp.map)
        self.destroy_map(exp.map)

    def drop_vma(self, vma: _Vma) -> None:
        with _vmas_lock:
            _vmas.pop(vma.start, None)
        self.vmas.remove(vma)
        vma.view.release_views()
        self.put_map(vma.map)

    # --- release -------------------------------------------------------------------------------
    def release(self) -> None:
        """close(): munmap every view, drop every map (notifications fire),
        end exports and imports.  Idempotent; also the finalizer."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            for vma in list(self.vmas):
                self.drop_vma(vma)
            while self.maps:
                m = self.maps.pop(0)
                if not m.dmabuf:
                    self.put_map(m)
            for exp in list(self.exports):
                if exp.released() or exp.kind == "memfd":
                    # A memfd export is a copy: the grants can go at once.
                    self.end_export(exp)
                else:
                    with _orphans_lock:
                        _orphans.append((self, exp))
            self.exports.clear()
            for imp in self.imports:
                self.end_import(imp)
            self.imports.clear()

    def end_import(self, imp: _Import) -> None:
        """End foreign access to an import's refs; its pages (and our mapping
        and fd of the buffer) go when the last one is revoked."""
        from .gntalloc import host_granter
        granter = host_granter(self.service)
        left = [len(imp.refs)]

        def cleanup() -> None:
            host = self.service.host
            with self.grants.lock:
                for i in range(imp.reserve.nframes):
                    host.adopted.pop(imp.reserve.mfn + i, None)
            try:
                imp.mm.close()
            except BufferError:
                pass
            os.close(imp.dup)
            self.service.host_free(imp.reserve)

        def revoked() -> None:
            left[0] -= 1
            if not left[0]:
                cleanup()

        if not imp.refs:
            cleanup()
        for ref in list(imp.refs):
            granter.end_foreign_access(ref, revoked)


class _DeviceFile:
    """What an open gntdev and an open gntalloc share: the file's state
    ``_f`` (with ``closed`` and ``release()``), released once by
    :meth:`close`, by losing the last reference, or at interpreter exit."""

    _name = "device"

    def __init__(self, f) -> None:
        self._f = f
        self._finalizer = weakref.finalize(self, f.release)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._f.closed

    def close(self) -> None:
        """Release the file (idempotent)."""
        self._finalizer()

    def _open(self):
        _reap_orphans()
        if self._f.closed:
            raise _err(errno.EBADF, f"{self._name} is closed")
        return self._f


class Gntdev(_DeviceFile):
    """One open ``/dev/xen/gntdev`` of the host (domain 0) on grant service
    *service* (a :class:`~paravm.services.grant.service.GrantService`, or
    anything with its ``grants``, ``host``, ``evtchn``, ``host_alloc`` and
    ``host_free``).  A context manager; :meth:`close` (or losing the last
    reference to this object, or the interpreter exiting) drops every map
    as Linux's release of the file does, firing the unmap notifications.
    Thread-safe.  Offsets (``index``) are byte offsets into the file, page
    aligned, as the uapi's."""

    _name = "gntdev"

    def __init__(self, service) -> None:
        super().__init__(_File(service))

    # --- IOCTL_GNTDEV_MAP_GRANT_REF --------------------------------------------------------------
    def map_grant_refs(self, refs) -> int:
        """Record a map of *refs* (a sequence of ``(domid, ref)``, u32 each;
        the domid is used as a 16-bit domid_t, as gntdev's map op does) and
        return its index: a page-aligned byte offset for :meth:`mmap`.  No
        grant is looked at yet.  ``EINVAL``: no refs or more than
        ``abi.GNTDEV_LIMIT`` (65536); ``EFAULT``: *refs* unreadable."""
        f = self._open()
        try:
            count = len(refs)
        except TypeError:
            raise _err(errno.EFAULT, "refs is not a sequence") from None
        if not 1 <= count <= A.GNTDEV_LIMIT:
            raise _err(errno.EINVAL, f"count {count} outside 1..{A.GNTDEV_LIMIT}")
        grants = []
        try:
            for domid, ref in refs:
                grants.append((_uint(domid, _U32, "domid", errno.EFAULT),
                               _uint(ref, _U32, "ref", errno.EFAULT)))
        except (TypeError, ValueError):
            raise _err(errno.EFAULT, "refs must be (domid, ref) pairs") from None
        if len(grants) != count:
            raise _err(errno.EFAULT, "refs changed while read")
        m = _Map(grants)
        with f.lock:
            f.add_map(m)
        return m.index * PAGE_SIZE

    # --- mmap / munmap ---------------------------------------------------------------------------
    def mmap(self, index: int, count: int, writable: bool = False,
             shared: bool = True) -> memoryview:
        """Map the map at byte offset *index*, exactly *count* pages, and
        return a zero-copy memoryview of the granted pages (read-only unless
        *writable*; the mode is fixed for the map's life).  The grants are
        pinned now.  ``EINVAL``: *count* < 1 or *index* not page aligned (as
        mmap(2)); *writable* without *shared* (MAP_PRIVATE); no map at
        *index* with exactly *count* pages; the map was mmapped before (even
        if that failed or was munmapped); any grant refused by the
        hypervisor (bad ref, wrong domid, a read-only grant mapped
        writable, ...) -- the grants that did map stay mapped until the map
        goes.  ``ENOMEM`` if no address space is left."""
        f = self._open()
        index = _uint(index, _U64, "index")
        if not isinstance(count, int) or count < 1 or index % PAGE_SIZE:
            raise _err(errno.EINVAL, f"mmap of {count!r} pages at {index:#x}")
        if count > A.GNTDEV_LIMIT:              # no map is that long
            raise _err(errno.EINVAL, f"no map of {count} pages")
        view = HostView(count, bool(writable))
        with f.lock:
            try:
                if writable and not shared:
                    raise _err(errno.EINVAL, "a writable mapping must be MAP_SHARED")
                m = f.find_map(index >> PAGE_SHIFT, count)
                if m is None or m.count != count:
                    raise _err(errno.EINVAL, f"no map of {count} pages at {index:#x}")
                if m.in_use:
                    raise _err(errno.EINVAL, "a map is mmapped once only")
            except OSError:
                view.close()
                raise
            m.in_use = True
            m.users += 1
            m.flags = A.GNTMAP_host_map | (0 if writable else A.GNTMAP_readonly)
            m.view = view
            if not f.map_pages(m, view):
                # The mapping is refused; the elements that mapped stay until
                # the map goes (UNMAP or close); the view is nobody's to use.
                f.put_map(m)
                raise _err(errno.EINVAL, "a grant could not be mapped")
            vma = _Vma(m, view)
            f.vmas.append(vma)
            with _vmas_lock:
                _vmas[vma.start] = vma
            return view.view()

    def munmap(self, target) -> None:
        """munmap(2) of a view from :meth:`mmap` (the memoryview, a slice of
        it, or its map's index): the memoryview :meth:`mmap` returned is
        released; the grants stay mapped (HVM/PVH gntdev: the kernel's
        pages keep them) until UNMAP_GRANT_REF or close, unless UNMAP came
        first, in which case they are unmapped now.  A view already
        munmapped is a no-op (as munmap of an unmapped range);
        ``EINVAL`` for something that is neither a memoryview nor an int."""
        f = self._open()
        with f.lock:
            vma = find_vma(f.vmas, target)
            if vma is not None:
                f.drop_vma(vma)

    # --- IOCTL_GNTDEV_UNMAP_GRANT_REF ------------------------------------------------------------
    def unmap_grant_ref(self, index: int, count: int = 0) -> None:
        """Remove the map at byte offset *index* (its page; low bits are
        ignored, as the driver's ``index >> PAGE_SHIFT``) with *count* pages
        (0 = any count) from the file; its index can be reused at once.  If
        it is still mmapped its view keeps working until munmap, and the
        grants are unmapped then.  ``ENOENT`` if there is no such map."""
        f = self._open()
        index = _uint(index, _U64, "index")
        count = _uint(count, _U32, "count")
        with f.lock:
            m = f.find_map(index >> PAGE_SHIFT, count)
            if m is None:
                raise _err(errno.ENOENT, f"no map at {index:#x} of {count or 'any'} pages")
            f.maps.remove(m)
            f.put_map(m)

    # --- IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR -------------------------------------------------------
    def get_offset_for_vaddr(self, vaddr: int) -> tuple[int, int]:
        """``(index, count)`` of the gntdev map mmapped at host address
        *vaddr*.  As the driver's ``find_vma``: the first mapping of the
        process that ends above *vaddr* decides, so an address in a gap
        just below a gntdev view finds that view; any gntdev view of the
        process counts (not only this file's).  ``EINVAL`` otherwise (after
        munmap, too)."""
        self._open()
        vaddr = _uint(vaddr, _U64, "vaddr")
        with _vmas_lock:
            vmas = list(_vmas.values())
        inside = [v for v in vmas if v.start <= vaddr < v.end]
        if inside:
            v = inside[0]
        else:
            above = [v for v in vmas if v.start > vaddr]
            if not above:
                raise _err(errno.EINVAL, f"no gntdev mapping at {vaddr:#x}")
            v = min(above, key=lambda x: x.start)
            if _proc_maps_first_end_above(vaddr, v.start):
                raise _err(errno.EINVAL, f"{vaddr:#x} is not in a gntdev mapping")
        return v.map.index * PAGE_SIZE, v.map.count

    # --- IOCTL_GNTDEV_SET_MAX_GRANTS -------------------------------------------------------------
    def set_max_grants(self, count: int) -> None:
        """Modern kernels do not implement it: always ``ENOTTY`` (an unknown
        ioctl; libxengnttab takes that as success).  Appendix B of the spec
        has the 2.6.38 per-file limit this once set."""
        self._open()
        raise _err(errno.ENOTTY, "IOCTL_GNTDEV_SET_MAX_GRANTS is not implemented")

    # --- IOCTL_GNTDEV_SET_UNMAP_NOTIFY -----------------------------------------------------------
    def set_unmap_notify(self, index: int, action: int, port: int = 0) -> None:
        """When the map containing byte offset *index* goes: with
        ``UNMAP_NOTIFY_CLEAR_BYTE`` zero the byte at *index* (relative to the
        map's start) in the granter's page just before that page is
        unmapped; with ``UNMAP_NOTIFY_SEND_EVENT`` send an event on host
        port *port* after all its grants are unmapped.  A second call
        replaces the first.  Checks in the driver's order: other action
        bits, ``EINVAL``; SEND_EVENT on a port not bound by a host event
        channel handle, ``EINVAL``; no map contains *index*, ``ENOENT``;
        CLEAR_BYTE on a map mmapped read-only, ``EINVAL``."""
        f = self._open()
        index = _uint(index, _U64, "index")
        action = _uint(action, _U32, "action")
        port = _uint(port, _U32, "port")
        check_notify(f.service, action, port)
        with f.lock:
            for m in f.maps:
                start = m.index * PAGE_SIZE
                if not m.dmabuf and start <= index < start + m.count * PAGE_SIZE:
                    break
            else:
                raise _err(errno.ENOENT, f"no map contains {index:#x}")
            if action & A.UNMAP_NOTIFY_CLEAR_BYTE and m.flags & A.GNTMAP_readonly:
                raise _err(errno.EINVAL, "clear-byte on a read-only map")
            m.notify_flags, m.notify_addr, m.notify_port = action, index - start, port

    # --- IOCTL_GNTDEV_GRANT_COPY -----------------------------------------------------------------
    def grant_copy(self, segments) -> list[int]:
        """Copy between grants and host buffers (GNTTABOP_copy from domain
        0); each segment's ``status`` (GNTST_*, also returned in order) is
        the first failing op's, okay if none failed.  A local side is split
        at the 4 KiB boundaries of its address.  The call raises, and stops,
        as the driver's ioctl: a segment with no grant side (or *flags* that
        disagree with its sides), or a grant side with ``offset + len >
        4096``, ``EINVAL``; a segment whose fields do not fit the C struct,
        or a local side that is not a buffer (not writable, for a
        destination) or too short, ``EFAULT``; statuses are then undefined
        and ops not yet issued (up to 16 are batched) are dropped."""
        f = self._open()
        try:
            segs = list(segments)
        except TypeError:
            raise _err(errno.EFAULT, "segments is not iterable") from None
        statuses = [A.GNTST_okay] * len(segs)
        setters = []
        batch: list[tuple[tuple, tuple, int, int]] = []
        frames: dict[int, Frame] = {}
        held: list[_Export] = []

        def flush() -> None:
            for src, dst, n, k in batch:
                try:
                    f.grants.copy(f.service.host, src, dst, n, frames.get)
                    st = A.GNTST_okay
                except GrantError as e:
                    st = e.status
                if st != A.GNTST_okay and statuses[k] == A.GNTST_okay:
                    statuses[k] = st
                    setters[k](st)
            batch.clear()

        try:
            for k, seg in enumerate(segs):
                source, dest, length, flags, setter = _segment_fields(seg)
                setters.append(setter)
                length = _uint(length, _U16, "len", errno.EFAULT)
                kinds = (A.GNTCOPY_source_gref if isinstance(source, Foreign) else 0) \
                    | (A.GNTCOPY_dest_gref if isinstance(dest, Foreign) else 0)
                if flags is None:
                    flags = kinds
                flags = _uint(flags, _U16, "flags", errno.EFAULT)
                for side, bit in ((source, A.GNTCOPY_source_gref), (dest, A.GNTCOPY_dest_gref)):
                    want = Foreign if flags & bit else Local
                    if not isinstance(side, want):
                        raise _err(errno.EINVAL, f"{side!r} does not match flags {flags:#x}")
                if not flags & (A.GNTCOPY_source_gref | A.GNTCOPY_dest_gref):
                    raise _err(errno.EINVAL, "local to local copy")
                sides = []
                for side, writing in ((source, False), (dest, True)):
                    if isinstance(side, Foreign):
                        _uint(side.domid, _U16, "domid", errno.EFAULT)
                        _uint(side.ref, _U32, "ref", errno.EFAULT)
                        off = _uint(side.offset, _U16, "offset", errno.EFAULT)
                        if off + length > PAGE_SIZE:
                            raise _err(errno.EINVAL, f"grant offset {off} + len {length} > 4096")
                        sides.append(("gref", side))
                    else:
                        sides.append(("local", side, writing))
                setter(A.GNTST_okay)
                local_addr = []
                for s in sides:
                    if s[0] == "local" and length:      # len 0 touches no page
                        off = s[1].offset
                        ex = _Export(s[1].buffer, s[2])
                        held.append(ex)
                        if not isinstance(off, int) or off < 0 or off + length > ex.len:
                            raise _err(errno.EFAULT, f"{off!r} + {length} outside the buffer")
                        local_addr.append(ex.addr + off)
                    else:
                        local_addr.append(None)
                copied = 0
                while copied < length:
                    if len(batch) >= COPY_BATCH:
                        flush()
                    n = length - copied
                    ops = []
                    for s, addr in zip(sides, local_addr):
                        if s[0] == "gref":
                            fs = s[1]
                            ops.append(("gref", fs.domid, fs.ref, fs.offset + copied))
                        else:
                            a = addr + copied
                            off = a & (PAGE_SIZE - 1)
                            n = min(n, PAGE_SIZE - off)
                            gmfn = a >> PAGE_SHIFT
                            frames[gmfn] = Frame(-1, 0, gmfn << PAGE_SHIFT, 0)
                            ops.append(("frame", A.DOMID_SELF, gmfn, off))
                    batch.append((ops[0], ops[1], n, k))
                    copied += n
            flush()
        finally:
            for ex in held:
                ex.release()
        return statuses

    # --- dma-buf ---------------------------------------------------------------------------------
    def _reap_exports(self, f: _File) -> None:
        for exp in list(f.exports):
            if exp.released():
                f.end_export(exp)

    def dmabuf_exp_from_refs(self, domid: int, refs, flags: int = 0) -> int:
        """Export the grants *refs* (u32 each) of domain *domid* as a buffer
        fd (O_CLOEXEC): a udmabuf over the granter's own pages where the
        kernel has /dev/udmabuf and the memfds allow it (zero copy),
        otherwise a sealed memfd holding a copy, kept coherent only by
        :meth:`dmabuf_sync` (docs/gntdev.md).  The grants are mapped
        (host_map + device_map, read-write, as the x86 driver) until the
        buffer is released; its map takes an index in the file as the
        driver's does.  ``EINVAL``: no refs or more than the limit, both
        ``GNTDEV_DMA_FLAG_WC`` and ``_COHERENT``, any grant refused;
        ``EFAULT``: *refs* unreadable."""
        f = self._open()
        flags = _uint(flags, _U32, "flags")
        domid = _uint(domid, _U32, "domid")
        try:
            count = len(refs)
            refs = [_uint(r, _U32, "ref", errno.EFAULT) for r in refs]
        except TypeError:
            raise _err(errno.EFAULT, "refs is not a sequence of u32") from None
        if not 1 <= count <= A.GNTDEV_LIMIT or len(refs) != count:
            raise _err(errno.EINVAL, f"count {count} outside 1..{A.GNTDEV_LIMIT}")
        if flags & A.GNTDEV_DMA_FLAG_WC and flags & A.GNTDEV_DMA_FLAG_COHERENT:
            raise _err(errno.EINVAL, "GNTDEV_DMA_FLAG_WC and _COHERENT together")
        with f.lock:
            self._reap_exports(f)
            m = _Map([(domid, r) for r in refs], dmabuf=True)
            m.flags = A.GNTMAP_host_map | A.GNTMAP_device_map
            view = HostView(count, True)
            m.view = view
            f.add_map(m)
            try:
                if not f.map_pages(m, view):
                    raise _err(errno.EINVAL, "a grant could not be mapped")
                exp = None
                items = udmabuf_items(m.frames)
                if items is not None:
                    try:
                        exp = _UdmabufExport(m, udmabuf_create_list(items))
                    except OSError:
                        exp = None
                if exp is None:
                    exp = _MemfdExport(m)
            except OSError:
                f.maps.remove(m)
                f.destroy_map(m)
                raise
            f.exports.append(exp)       # the map stays listed (its index is taken)
            return exp.fd

    def dmabuf_exp_wait_released(self, fd: int, timeout_ms: int) -> None:
        """Wait up to *timeout_ms* ms until the buffer exported as fd number
        *fd* (looked up by number, as the driver) is released -- every fd
        and every mapping of it gone, in any process -- then unmap its
        grants.  ``ENOENT``: no export of this file has that number (never
        was, or already released); ``ETIMEDOUT``: still in use.  Polled
        (0.5 ms growing to 20 ms): the kernel tells no one."""
        f = self._open()
        fd = _uint(fd, _U32, "fd")
        timeout_ms = _uint(timeout_ms, _U32, "wait_to_ms")
        deadline = time.monotonic() + timeout_ms / 1000
        delay = 0.0005
        with f.lock:
            exp = next((e for e in f.exports if e.fd == fd), None)
            if exp is None:
                raise _err(errno.ENOENT, f"fd {fd} is not an export of this gntdev")
        while True:
            with f.lock:
                if exp not in f.exports:
                    return                       # reaped by another call meanwhile
                if exp.released():
                    f.end_export(exp)
                    return
            now = time.monotonic()
            if now >= deadline:
                raise _err(errno.ETIMEDOUT, f"fd {fd} still in use")
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, 0.02)

    def dmabuf_sync(self, fd: int, flags: int) -> None:
        """Coherency point of a copy (memfd) export, modelled on
        DMA_BUF_IOCTL_SYNC: ``START|READ`` copies the granted pages into the
        buffer, ``END|WRITE`` copies the buffer back into them (``START``
        with ``RW`` does the first, ``END`` with ``RW`` the second).  A
        udmabuf export is coherent: a no-op.  ``EINVAL``: bits outside
        ``RW|END`` or neither READ nor WRITE; ``ENOENT``: not an export of
        this file.  Not a Linux gntdev ioctl: the fallback's own."""
        f = self._open()
        flags = _uint(flags, _U32, "flags")
        if flags & ~(DMA_BUF_SYNC_RW | DMA_BUF_SYNC_END) or not flags & DMA_BUF_SYNC_RW:
            raise _err(errno.EINVAL, f"sync flags {flags:#x}")
        with f.lock:
            exp = next((e for e in f.exports if e.fd == fd), None)
            if exp is None:
                raise _err(errno.ENOENT, f"fd {fd} is not an export of this gntdev")
            exp.sync(flags)

    def dmabuf_imp_to_refs(self, fd: int, count: int, domid: int) -> list[int]:
        """Grant the *count* pages of buffer *fd* (a memfd, a dma-buf: any
        file of exactly ``count * 4096`` bytes that can be mapped shared
        read-write) to domain *domid*, writable, from the host's grant
        table; the refs.  Zero copy: a guest mapping a ref maps the buffer's
        own page.  ``EINVAL``: *count* 0 or over the limit, a size that is
        not *count* pages, a file that cannot be mapped; ``EBADF``: *fd* is
        not open; ``ENOSPC``: the host's table is full."""
        f = self._open()
        count = _uint(count, _U32, "count")
        domid = _uint(domid, _U32, "domid")
        fd = _uint(fd, 0x7FFFFFFF, "fd", errno.EBADF)
        if not 1 <= count <= A.GNTDEV_LIMIT:
            raise _err(errno.EINVAL, f"count {count} outside 1..{A.GNTDEV_LIMIT}")
        st = os.fstat(fd)                         # EBADF
        size = count * PAGE_SIZE
        if stat.S_ISDIR(st.st_mode) or st.st_size != size:
            raise _err(errno.EINVAL, f"buffer of {st.st_size} bytes, not {count} pages")
        from .gntalloc import host_granter
        granter = host_granter(f.service)
        dup = os.dup(fd)
        try:
            mm = mmap.mmap(dup, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError) as e:
            os.close(dup)
            raise _err(errno.EINVAL, f"cannot map the buffer shared: {e}") from None
        try:
            reserve = f.service.host_alloc(count, "dom0.dmabuf-import")
        except (MemoryError, OSError):
            mm.close()
            os.close(dup)
            raise _err(errno.ENOMEM, "no machine frames for the import") from None
        hva = _address(mm)
        host = f.service.host
        with f.grants.lock:
            for i in range(count):
                host.adopted[reserve.mfn + i] = Frame(dup, i * PAGE_SIZE, hva + i * PAGE_SIZE,
                                                      reserve.mfn + i)
        imp = _Import(fd, [], reserve, dup, mm)
        try:
            for i in range(count):
                imp.refs.append(granter.grant(domid & _U16, reserve.mfn + i, readonly=False))
        except OSError:
            with f.lock:
                f.end_import(imp)
            raise
        with f.lock:
            f.imports.append(imp)
        return list(imp.refs)

    def dmabuf_imp_release(self, fd: int) -> None:
        """End the import recorded under fd number *fd*: foreign access to
        every ref ends (deferred while a peer still maps it: the buffer's
        pages stay granted and referenced until then).  ``ENOENT`` if this
        file has no such import."""
        f = self._open()
        fd = _uint(fd, _U32, "fd")
        with f.lock:
            imp = next((i for i in f.imports if i.fd == fd), None)
            if imp is None:
                raise _err(errno.ENOENT, f"fd {fd} is not an import of this gntdev")
            f.imports.remove(imp)
            f.end_import(imp)


def find_vma(vmas: list, target):
    """The VMA (anything with ``view`` and ``index``) of *vmas* that munmap
    *target* names: a memoryview of its view (None once released), or its
    byte index; ``EINVAL`` for anything else."""
    if isinstance(target, memoryview):
        try:
            obj = target.obj
        except ValueError:          # released: munmapped already
            return None
        return next((v for v in vmas if v.view.mm is obj), None)
    if isinstance(target, int) and not isinstance(target, bool):
        return next((v for v in vmas if v.index == target), None)
    raise _err(errno.EINVAL, f"munmap of {type(target).__name__}")


def fire_notify_event(service, flags: int, port: int) -> None:
    """The SEND_EVENT half of an unmap notification (if *flags* has it):
    an event on host port *port*; a closed event service is ignored, as
    teardown must go on."""
    if flags & A.UNMAP_NOTIFY_SEND_EVENT and service.evtchn is not None:
        try:
            service.evtchn.send(0, port)
        except Exception:  # noqa: BLE001 - a closed event service must not stop teardown
            pass


def check_notify(service, action: int, port: int) -> None:
    """SET_UNMAP_NOTIFY's argument checks, as both drivers make them:
    action bits other than CLEAR_BYTE | SEND_EVENT, or SEND_EVENT on a port
    no host event channel handle has bound, ``EINVAL``."""
    if action & ~(A.UNMAP_NOTIFY_CLEAR_BYTE | A.UNMAP_NOTIFY_SEND_EVENT):
        raise _err(errno.EINVAL, f"action {action:#x}")
    if action & A.UNMAP_NOTIFY_SEND_EVENT:
        evtchn = service.evtchn
        if evtchn is None or not evtchn.host_port_bound(port):
            raise _err(errno.EINVAL, f"port {port} is not bound by the host")
