"""The grant service: guest grant tables and windows, GNTTABOP hypercalls, the host's table.

Per guest with ``[domain.xen]`` (layout in :mod:`paravm.arch.x86.layout`):

* **Grant table**: ``max_grant_frames`` pages at :data:`GRANT_TABLE_GPA`,
  read-write for the guest, of which ``nr_frames`` (1 at start, grown by
  ``GNTTABOP_setup_table``) hold entries the hypervisor honours.  HVM guests
  of Xen place their table with ``XENMEM_add_to_physmap``; here it has a
  fixed place, and ``setup_table`` returns its GFNs as Xen's does.
* **Grant windows**: where a guest maps others' grants.  One read-write
  window and one read-only window (``KVM_MEM_READONLY``: guest writes exit
  and are discarded, as Xen's ``p2m_grant_map_ro``), ``grant_window_pages``
  each, every one a single memslot made with the domain.  ``host_addr`` of a
  map op is a page-aligned GPA in the window that matches its
  ``GNTMAP_readonly`` (elsewhere: ``GNTST_bad_virt_addr``); mapping remaps
  that page of the window's VMM mapping onto the granter's page
  (:mod:`paravm.memory.remap`), unmapping puts the window's own page back.
* **Hypercall** ``grant_table_op(cmd, uop, count)`` = 20, Xen's
  ``__HYPERVISOR_grant_table_op`` number.  The VMM copies the ``count``
  ops once, runs them in order and writes the array back (OUT fields
  filled in); the call returns 0 with a status per op, ``-EFAULT`` if the
  array is not writable guest memory (checked before any op runs),
  ``-EINVAL`` for bits of *cmd* above Xen's 12-bit command field (Xen keeps
  its continuation argument there) or a negative count (bit 31; more than
  2^20 ops, too: Xen would preempt and continue, paravm refuses), and
  ``-ENOSYS`` for the ops not modelled (v2, transfer, dump, swap,
  cache_flush: docs/grant.md).  setup_table and query_size need count 1
  (``-EINVAL``); set_version and get_version read one struct whatever the
  count, as Xen's ``do_grant_table_op``.

The host is domain 0.  Its grant table lives in VMM memory (no guest maps
it); its "frames" are MFNs of pages it allocated to share
(:meth:`GrantService.host_alloc`, used by gntalloc), and it maps guests'
grants through gntdev (:mod:`.gntdev`).
"""

from __future__ import annotations

import threading
from errno import EINVAL, ENOSYS, EPERM, ESRCH

from ...arch.x86 import layout as L
from ...hypercall.table import HypercallError, guest_buffer
from ...memory import PAGE_SIZE, GuestMemoryError, remap
from . import abi as A
from .table import Frame, GrantError, Grants, GrantTable

HC_GRANT_TABLE_OP = 20
MAX_OPS_PER_CALL = 1 << 20       # bounds the VMM's copy of the op array


class GrantWindow:
    """``pages`` pages of a guest's physical address space at ``gpa`` where
    grants are mapped: one VMM mapping (a :class:`~paravm.memory.FrameRange`
    whose own pages fill the unused slots) and one memslot."""

    def __init__(self, machine, name: str, gpa: int, pages: int, readonly: bool) -> None:
        self.frames = machine.alloc(pages, name)
        self.gpa, self.pages, self.readonly = gpa, pages, readonly
        self.used: set[int] = set()

    def index(self, gpa: int) -> int | None:
        off = gpa - self.gpa
        if gpa % PAGE_SIZE or not 0 <= off < self.pages * PAGE_SIZE:
            return None
        return off // PAGE_SIZE

    def place(self, index: int, frame: Frame) -> None:
        """Show *frame* at page *index*; ``GrantError(general_error)`` if the
        kernel refuses the remap (the window page is then unchanged)."""
        try:
            remap.map_fixed(self.frames.hva + index * PAGE_SIZE, PAGE_SIZE, frame.fd,
                            frame.offset, writable=not self.readonly)
        except OSError as e:
            raise GrantError(A.GNTST_general_error, f"remap failed: {e}") from None
        self.used.add(index)

    def clear(self, index: int) -> None:
        remap.map_fixed(self.frames.hva + index * PAGE_SIZE, PAGE_SIZE, self.frames.fd,
                        index * PAGE_SIZE, writable=True)
        self.used.discard(index)


class _GuestGrants:
    """What the service keeps per guest instance."""

    def __init__(self, name: str, table: GrantTable, rw: GrantWindow, ro: GrantWindow) -> None:
        self.name, self.table, self.rw, self.ro = name, table, rw, ro
        self.domain = None


class GrantService:
    """Grant tables of the guests in *specs* (DomainSpecs; those with
    ``xen`` set) and of the host.  *evtchn*: the event channel service, for
    unmap notifications (may be set later)."""

    def __init__(self, machine, specs, evtchn=None) -> None:
        self.machine = machine
        self.evtchn = evtchn
        self.grants = Grants()
        self.specs = {s.name: s for s in specs if getattr(s, "xen", None) is not None}
        self.guests: dict[str, _GuestGrants] = {}
        # Ranges of stopped instances, by guest name, freed when that guest
        # gets its next instance (a restart destroys the old domain, and so
        # its memslots, before it asks for regions) or at close.
        self._old: dict[str, list] = {}
        self._host_pages: dict[int, object] = {}   # FrameRange.mfn -> FrameRange (dom0's)
        self._host_lock = threading.Lock()
        host_frames = machine.alloc(A.DEFAULT_MAX_GRANT_FRAMES, "dom0.grant-table")
        self.host = GrantTable(0, host_frames, self._resolve_host,
                               max_frames=A.DEFAULT_MAX_GRANT_FRAMES,
                               nr_frames=A.DEFAULT_MAX_GRANT_FRAMES)
        self.grants.add(self.host)

    # --- guests --------------------------------------------------------------------------
    def regions(self, name: str) -> tuple:
        """The grant table and the two windows of a new instance of guest
        *name*, to map before its vCPUs exist (empty without ``xen``)."""
        spec = self.specs.get(name)
        if spec is None:
            return ()
        self._free_old(name)
        x = spec.xen
        frames = self.machine.alloc(x.max_grant_frames, f"{name}.grant-table")
        table = GrantTable(spec.domid, frames, lambda gfn: None,
                           max_frames=x.max_grant_frames,
                           max_maptrack_frames=x.max_maptrack_frames)
        rw = GrantWindow(self.machine, f"{name}.grant-window", L.GRANT_WINDOW_GPA,
                         x.grant_window_pages, False)
        ro = GrantWindow(self.machine, f"{name}.grant-window-ro", L.GRANT_WINDOW_RO_GPA,
                         x.grant_window_pages, True)
        self.guests[name] = _GuestGrants(name, table, rw, ro)
        return ((L.GRANT_TABLE_GPA, frames, False), (L.GRANT_WINDOW_GPA, rw.frames, False),
                (L.GRANT_WINDOW_RO_GPA, ro.frames, True))

    def attach(self, domain) -> None:
        """Hypercall, boot-info fields and the read-only window's write
        sink of a guest whose :meth:`regions` were mapped."""
        g = self.guests.get(domain.name)
        if g is None:
            return
        g.domain = domain
        g.table.domid = domain.domid
        g.table.resolve = _ram_resolver(domain)
        self.grants.add(g.table)
        domain.hypercalls.register(HC_GRANT_TABLE_OP, "grant_table_op",
                                   lambda v, cmd, uop, count, *a: self._op(g, cmd, uop, count))
        domain.mmio_bus.insert(g.ro.gpa, g.ro.pages * PAGE_SIZE, _DiscardWrites(),
                               "grant-window-ro")
        mem = domain.memory
        mem.write_u64(L.BOOT_INFO + L.BI_OFF_GRANT_WINDOW, g.rw.gpa)
        mem.write_u64(L.BOOT_INFO + L.BI_OFF_GRANT_WINDOW_RO, g.ro.gpa)
        mem.write_u32(L.BOOT_INFO + L.BI_OFF_GRANT_WINDOW_PAGES, g.rw.pages)

    def domain_stopped(self, domain) -> None:
        """Drop every mapping the domain holds (its peers' GTF bits clear);
        its own table is retired: maps of it fail from now on, the pages
        peers still map stay theirs until they unmap (Xen's zombie)."""
        g = self.guests.get(domain.name)
        if g is None or g.domain is not domain:
            return
        g.domain = None
        name = g.name
        # The table's pages outlive the domain while peers pin its entries
        # (their unpins clear GTF bits there); they go after the last unpin.
        g.table.on_buried = lambda t: self._old.setdefault(name, []).append(t.frames)
        self.grants.retire(g.table)     # its own mappings go: the windows empty
        self._old.setdefault(name, []).extend((g.rw.frames, g.ro.frames))

    def _free_old(self, name: str | None = None) -> None:
        """Free the ranges of stopped instances of *name* (all: ``None``).
        Only once their domain is destroyed: its memslots still name them."""
        for key in [name] if name is not None else list(self._old):
            for fr in self._old.pop(key, []):
                self.machine.free(fr)

    def table_of(self, name: str) -> GrantTable:
        """The live grant table of guest *name* (``KeyError``)."""
        return self.guests[name].table

    # --- the hypercall ---------------------------------------------------------------------
    def _op(self, g: _GuestGrants, cmd: int, uop: int, count: int) -> int:
        """GNTTABOP *cmd* on the *count* structs at GPA *uop*: 0 (statuses in
        the structs) or raises :class:`HypercallError` (see the module doc)."""
        if cmd & ~A.GNTTABOP_CMD_MASK:
            raise HypercallError(EINVAL, "stray bits in cmd")
        if count >= 1 << 31:
            raise HypercallError(EINVAL, "negative count")
        handler = _OPS.get(cmd)
        if handler is None:
            raise HypercallError(ENOSYS, f"GNTTABOP {cmd} not modelled")
        fmt, fn = handler
        if cmd in _COUNT_IGNORED:
            count = 1
        elif cmd in _SINGLE and count != 1:
            raise HypercallError(EINVAL, "count must be 1")
        if count > MAX_OPS_PER_CALL:
            raise HypercallError(EINVAL, "count too large")
        domain = g.domain
        if domain is None:          # stopped while another vCPU was calling
            raise HypercallError(ESRCH, "domain stopped")
        mem = domain.memory
        if not count:
            return 0
        # Writable checked first: no op runs whose results could not be
        # returned.  The array is copied in once, then the ops run.
        with guest_buffer(mem, uop, count * fmt.size, writable=True) as view:
            raw = bytearray(view)
            for i in range(count):
                off = i * fmt.size
                fields = list(fmt.unpack_from(raw, off))
                fn(self, g, fields)
                fmt.pack_into(raw, off, *fields)
            view[:] = raw
        return 0

    def _map(self, g: _GuestGrants, f: list) -> None:
        """One map op.  On success: status okay, the handle, dev_bus_addr 0
        (Xen gives the machine address; paravm shows no MFNs to guests).  On
        failure only the status changes: handle and dev_bus_addr keep what
        the guest wrote, as Xen's map_grant_ref (a zeroed handle would look
        like a live handle 0)."""
        host_addr, flags, ref, dom = f[0], f[1], f[2], f[3]
        window = g.ro if flags & A.GNTMAP_readonly else g.rw

        def place(frame: Frame, readonly: bool):
            index = window.index(host_addr)
            if index is None or index in window.used:
                raise GrantError(A.GNTST_bad_virt_addr, f"host_addr {host_addr:#x}")
            window.place(index, frame)
            return lambda: window.clear(index)

        try:
            f[5], _m = self.grants.map(g.table, dom, ref, flags, host_addr, place)
            f[4], f[6] = A.GNTST_okay, 0
        except GrantError as e:
            f[4] = e.status

    def _unmap(self, g: _GuestGrants, f: list) -> None:
        # As Xen's unmap_common: the host half goes only when host_addr is
        # given, the device half only when dev_bus_addr is (an op with
        # neither succeeds and leaves the handle as it was).
        host_addr, dev_bus_addr, handle = f[0], f[1], f[2]
        try:
            self.grants.unmap(g.table, handle, host_addr=host_addr, dev_bus_addr=dev_bus_addr,
                              host=bool(host_addr), device=bool(dev_bus_addr))
            f[3] = A.GNTST_okay
        except GrantError as e:
            f[3] = e.status

    def _unmap_and_replace(self, g: _GuestGrants, f: list) -> None:
        if f[1]:
            f[3] = A.GNTST_general_error    # HVM: new_addr must be 0
            return
        f[1] = 0
        self._unmap(g, f)

    def _setup_table(self, g: _GuestGrants, f: list) -> None:
        """Grow the table to ``nr_frames`` (never shrinks) and list the GFNs
        of its first ``nr_frames`` pages at ``frame_list`` (u64 each).  Another
        domain's table: permission_denied; more than ``max_grant_frames``:
        general_error; a frame_list that is not writable guest memory:
        bad_virt_addr, and the table stays as it was."""
        dom, nr_frames, frame_list = f[0], f[1], f[3]
        t = g.table
        if dom not in (A.DOMID_SELF, t.domid):
            f[2] = A.GNTST_permission_denied
            return
        if nr_frames > t.max_frames:
            f[2] = A.GNTST_general_error
            return
        first = L.GRANT_TABLE_GPA // PAGE_SIZE
        listing = b"".join((first + i).to_bytes(8, "little") for i in range(nr_frames))
        try:
            if nr_frames:
                with guest_buffer(g.domain.memory, frame_list, len(listing),
                                  writable=True) as view:
                    view[:] = listing
        except GuestMemoryError:
            f[2] = A.GNTST_bad_virt_addr
            return
        with self.grants.lock:
            t.nr_frames = max(t.nr_frames, nr_frames)
        f[2] = A.GNTST_okay

    def _query_size(self, g: _GuestGrants, f: list) -> None:
        t = g.table
        if f[0] not in (A.DOMID_SELF, t.domid):
            f[3] = A.GNTST_permission_denied
            return
        f[1], f[2], f[3] = t.nr_frames, t.max_frames, A.GNTST_okay

    def _copy(self, g: _GuestGrants, f: list) -> None:
        s_u, s_dom, s_off, d_u, d_dom, d_off, length, flags = f[:8]
        src = ("gref", s_dom, s_u & 0xFFFFFFFF, s_off) if flags & A.GNTCOPY_source_gref \
            else ("frame", s_dom, s_u, s_off)
        dst = ("gref", d_dom, d_u & 0xFFFFFFFF, d_off) if flags & A.GNTCOPY_dest_gref \
            else ("frame", d_dom, d_u, d_off)
        try:
            self.grants.copy(g.table, src, dst, length, g.table.resolve)
            f[8] = A.GNTST_okay
        except GrantError as e:
            f[8] = e.status

    def _set_version(self, g: _GuestGrants, f: list) -> None:
        if f[0] == 1:
            return
        raise HypercallError(ENOSYS if f[0] == 2 else EINVAL, "only grant table v1")

    def _get_version(self, g: _GuestGrants, f: list) -> None:
        if f[0] not in (A.DOMID_SELF, g.table.domid):
            raise HypercallError(EPERM, "another domain's version")
        f[2] = 1

    # --- the host (domain 0) as granter -------------------------------------------------------
    def host_alloc(self, count: int, name: str = "dom0.shared"):
        """*count* zeroed pages the host owns and may grant (a FrameRange;
        its MFNs are the host's GFNs).  Free with :meth:`host_free`."""
        fr = self.machine.alloc(count, name)
        with self._host_lock:
            self._host_pages[fr.mfn] = fr
        return fr

    def host_free(self, fr) -> None:
        with self._host_lock:
            self._host_pages.pop(fr.mfn, None)
        self.machine.free(fr)

    def _resolve_host(self, mfn: int) -> Frame | None:
        hit = self.machine.lookup(mfn)
        if hit is None:
            return None
        fr, index = hit
        with self._host_lock:
            if self._host_pages.get(fr.mfn) is not fr:
                return None
        return Frame(fr.fd, index * PAGE_SIZE, fr.hva + index * PAGE_SIZE, mfn)

    def close(self) -> None:
        self._free_old()
        for g in self.guests.values():
            for fr in (g.table.frames, g.rw.frames, g.ro.frames):
                self.machine.free(fr)
        for fr in list(self._host_pages.values()):
            self.host_free(fr)
        self.machine.free(self.host.frames)


def _ram_resolver(domain):
    """``gfn -> Frame`` for the pages of *domain*'s RAM above the reserved
    low 1 MiB: the only frames a guest owns and may grant."""
    ram = domain.ram
    lo, hi = L.RESERVED_END // PAGE_SIZE, ram.nframes

    def resolve(gfn: int) -> Frame | None:
        if lo <= gfn < hi and ram.fd >= 0:      # not once the RAM is freed
            off = gfn * PAGE_SIZE
            return Frame(ram.fd, off, ram.hva + off, ram.mfn + gfn)
        return None
    return resolve


class _DiscardWrites:
    """The read-only grant window's MMIO side: a guest write to a read-only
    grant exits here and is dropped (Xen: ``p2m_grant_map_ro`` discards
    writes).  Reads are served by KVM from memory and never arrive."""

    def read(self, offset: int, data: memoryview) -> None:
        data[:] = bytes(len(data))

    def write(self, offset: int, data: memoryview) -> None:
        pass


_SINGLE = {A.GNTTABOP_setup_table, A.GNTTABOP_query_size}
_COUNT_IGNORED = {A.GNTTABOP_set_version, A.GNTTABOP_get_version}
_OPS = {
    A.GNTTABOP_map_grant_ref: (A.MAP_GRANT_REF, GrantService._map),
    A.GNTTABOP_unmap_grant_ref: (A.UNMAP_GRANT_REF, GrantService._unmap),
    A.GNTTABOP_setup_table: (A.SETUP_TABLE, GrantService._setup_table),
    A.GNTTABOP_copy: (A.COPY, GrantService._copy),
    A.GNTTABOP_query_size: (A.QUERY_SIZE, GrantService._query_size),
    A.GNTTABOP_unmap_and_replace: (A.UNMAP_AND_REPLACE, GrantService._unmap_and_replace),
    A.GNTTABOP_set_version: (A.SET_VERSION, GrantService._set_version),
    A.GNTTABOP_get_version: (A.GET_VERSION, GrantService._get_version),
}
