"""Xen event channels: port tables, 2-level delivery, the hypercall and the host API.

What Xen does for its guests (``xen/common/event_channel.c``, ``event_2l.c``;
specs/grant-mpt.md §D1.2, §D2.6, §D5.5), done here in the VMM:

* **Port tables.**  Every domain with Xen services (a ``[domain.xen]`` table)
  and the host, domain 0, has a table of ports ``0 .. max_evtchn_ports - 1``.
  Port 0 is reserved and never handed out; new ports are the lowest free one.
  A port is FREE, UNBOUND (reserved for one remote domid), INTERDOMAIN (linked
  to a peer port) or IPI.  One lock guards every table: hypercalls arrive on
  vCPU threads, host calls on any thread, and an interdomain operation
  touches two tables at once.
* **Delivery** into a guest is Xen's 2-level rule on the guest's
  ``shared_info`` page, one VMM-owned page mapped read-write at
  :data:`~paravm.arch.x86.layout.XEN_SHARED_INFO_GPA`: set the port's pending
  bit; if it was clear and the port is not masked and the selector bit
  ``port / 64`` of the notify vCPU's ``evtchn_pending_sel`` was clear, set
  that vCPU's ``evtchn_upcall_pending``, and if *that* was clear, raise the
  upcall vector on the vCPU (an irqfd per vCPU: an eventfd write, no
  ``KVM_SIGNAL_MSI`` from Python).  The guest writes the same page at the same
  time, so every read-modify-write is one locked instruction
  (:mod:`paravm.memory.atomic`); a guest that scribbles over the page can only
  confuse itself: the VMM touches fixed offsets computed from ports and vCPU
  indices it has checked.
* **The hypercall** ``event_channel_op(cmd, arg)`` (number 32, Xen's): the
  argument struct is copied in once, checked, the operation done under the
  lock, and the whole struct with its OUT fields copied back (as Xen's
  ``copy_to_guest``; a copy-back that faults returns ``-EFAULT`` with the
  operation done, as Xen).  Modelled: alloc_unbound, bind_interdomain, send,
  close, status, unmask, bind_vcpu, bind_ipi; any other cmd is ``-ENOSYS``
  (Linux then keeps the 2-level ABI: no FIFO).
* **The host** takes part as domain 0 through :class:`EvtchnHandle`, a model
  of Linux's ``/dev/xen/evtchn`` and libxenevtchn: a delivered port is queued
  on the handle and masked until :meth:`EvtchnHandle.unmask`; the handle's
  ``fileno()`` is an eventfd, readable while a port is queued.
* **A domain that stops** (crash, exit or host stop) has all its ports
  closed: each interdomain peer goes back to UNBOUND, reserved for the dead
  domain, without any event (Xen: peers learn of a death from xenstore).
"""

from __future__ import annotations

import collections
import errno as E
import os
import select
import threading
import time
from dataclasses import dataclass

from ...arch.x86 import layout as L
from ...memory import atomic
from ...hypercall.table import guest_buffer
from . import abi

# Port states (Xen's ECS_*; the numbers are ours, never shown to a guest).
FREE, RESERVED, UNBOUND, INTERDOMAIN, IPI = range(5)

_U32 = 0xFFFFFFFF
_STATUS_OF = {FREE: abi.EVTCHNSTAT_closed, RESERVED: abi.EVTCHNSTAT_closed,
              UNBOUND: abi.EVTCHNSTAT_unbound, INTERDOMAIN: abi.EVTCHNSTAT_interdomain,
              IPI: abi.EVTCHNSTAT_ipi}
_SHINFO_PAGE = 4096


class _Table:
    """The ports of one domain (Xen's ``d->evtchn``) and how to reach it."""

    __slots__ = ("domid", "name", "nports", "state", "remote_dom", "remote_port", "vcpu",
                 "nr_vcpus", "shinfo", "irqfds", "domain", "owner")

    def __init__(self, domid: int, name: str, nports: int) -> None:
        self.domid, self.name, self.nports = domid, name, nports
        self.state = bytearray(nports)          # FREE ...
        self.state[0] = RESERVED
        self.remote_dom = [0] * nports          # UNBOUND: who may bind; INTERDOMAIN: the peer
        self.remote_port = [0] * nports         # INTERDOMAIN: the peer's port
        self.vcpu = bytearray(nports)           # notify vCPU
        self.nr_vcpus = 1
        self.shinfo = None                      # FrameRange (guests)
        self.irqfds: list = []                  # Irqfd per vCPU (attached guests)
        self.domain = None                      # the attached, running Domain (guests)
        self.owner: dict[int, "EvtchnHandle"] = {}   # dom0: port -> the handle it is bound on

    def free_port(self) -> int:
        """The lowest FREE port, or -1 (``get_free_port``)."""
        return self.state.find(FREE, 1)

    def valid(self, port: int) -> bool:
        return 0 <= port < self.nports


@dataclass(frozen=True)
class PortStatus:
    """What :meth:`EvtchnService.port_status` reports (``evtchn_status`` fields)."""
    status: int           # EVTCHNSTAT_*
    vcpu: int             # notify vCPU
    remote_dom: int = 0   # unbound: who may bind; interdomain: the peer
    remote_port: int = 0  # interdomain: the peer's port


class EvtchnService:
    """The event channels of one hypervisor: a port table per Xen domain and
    one for the host (domain 0).

    Use: ``svc = EvtchnService(machine, specs)`` (the manifest's
    :class:`~paravm.config.DomainSpec` list; those whose ``xen`` is ``None``
    get nothing: no shared_info, ``event_channel_op`` stays ``-ENOSYS``); map
    :meth:`regions` of each guest; :meth:`attach` it; :meth:`domain_stopped`
    once it stops; :meth:`open` gives a host :class:`EvtchnHandle`;
    :meth:`close` at the end.  ``ValueError`` for a ``max_evtchn_ports``
    outside 1..4096 (the 2-level ABI of a 64-bit guest has 4096 ports, port 0
    among them: a table of N ports hands out 1..N-1)."""

    def __init__(self, machine, specs) -> None:
        self.machine = machine
        self.lock = threading.Lock()
        self._tables: dict[int, _Table] = {0: _Table(0, "host", abi.NR_EVENT_CHANNELS)}
        self._by_name: dict[str, _Table] = {}
        self._handles: set[EvtchnHandle] = set()
        self._closed = False
        for spec in specs:
            xen = getattr(spec, "xen", None)
            if xen is None:
                continue
            n = int(getattr(xen, "max_evtchn_ports", abi.NR_EVENT_CHANNELS))
            if not 1 <= n <= abi.NR_EVENT_CHANNELS:
                raise ValueError(f"{spec.name}: max_evtchn_ports {n} outside "
                                 f"1..{abi.NR_EVENT_CHANNELS} (2-level event channels)")
            if spec.domid in self._tables:
                raise ValueError(f"{spec.name}: domid {spec.domid} given twice")
            t = _Table(spec.domid, spec.name, n)
            self._tables[spec.domid] = t
            self._by_name[spec.name] = t

    # --- wiring ---------------------------------------------------------------------------
    def regions(self, name: str) -> tuple:
        """``((XEN_SHARED_INFO_GPA, FrameRange, False),)`` for a Xen domain
        *name*, ``()`` for any other: its shared_info page, one frame,
        read-write (the same frame for a restarted domain)."""
        t = self._by_name.get(name)
        if t is None:
            return ()
        if t.shinfo is None:
            t.shinfo = self.machine.alloc(1, f"xen-shared-info:{name}")
        return ((L.XEN_SHARED_INFO_GPA, t.shinfo, False),)

    def attach(self, domain) -> None:
        """Give a Xen domain whose :meth:`regions` were mapped its event
        channels: a fresh (zeroed) shared_info page and port table, one upcall
        irqfd per vCPU (vector :data:`~paravm.arch.x86.layout.VEC_EVTCHN`), the
        ``event_channel_op`` hypercall, and the boot-info fields
        ``xen_shared_info`` and ``evtchn_vector``.  Does nothing for a domain
        without Xen services.  ``ValueError`` if its domid is not the spec's
        or it has more than 32 vCPUs (``vcpu_info[32]``)."""
        t = self._by_name.get(domain.name)
        if t is None:
            return
        if domain.domid != t.domid:
            raise ValueError(f"{domain.name}: domid {domain.domid}, the spec says {t.domid}")
        if not 1 <= domain.nr_vcpus <= abi.XEN_LEGACY_MAX_VCPUS:
            raise ValueError(f"{domain.name}: {domain.nr_vcpus} vCPUs; shared_info has "
                             f"{abi.XEN_LEGACY_MAX_VCPUS} vcpu_info slots")
        self.regions(domain.name)
        irqfds = [domain.irqfd(v, L.VEC_EVTCHN) for v in range(domain.nr_vcpus)]
        with self.lock:
            self._close_all(t)                  # a restarted domain starts afresh
            t.shinfo.buffer[:_SHINFO_PAGE] = bytes(_SHINFO_PAGE)
            t.nr_vcpus = domain.nr_vcpus
            t.irqfds = irqfds
            t.domain = domain
        domain.hypercalls.register(abi.HC_EVENT_CHANNEL_OP, "event_channel_op",
                                   lambda v, cmd, arg, *a: self.hypercall(t, cmd, arg))
        domain.memory.write_u64(L.BOOT_INFO + L.BI_OFF_XEN_SHARED_INFO, L.XEN_SHARED_INFO_GPA)
        domain.memory.write_u32(L.BOOT_INFO + L.BI_OFF_EVTCHN_VECTOR, L.VEC_EVTCHN)

    def domain_stopped(self, domain) -> None:
        """*domain* stopped (once, after its vCPUs): close all its ports; the
        peer of each interdomain port goes back to UNBOUND (reserved for this
        domain) without an event, as Xen's ``evtchn_destroy``."""
        t = self._by_name.get(domain.name)
        if t is None:
            return
        with self.lock:
            if t.domain is not domain:
                return
            self._close_all(t)
            t.domain = None
            t.irqfds = []              # the domain closes them at destroy

    def open(self) -> "EvtchnHandle":
        """A new host handle (as ``open("/dev/xen/evtchn")``).  ``OSError``
        (EBADF) once the service is closed."""
        with self.lock:
            if self._closed:
                raise OSError(E.EBADF, "event channel service is closed")
            h = EvtchnHandle(self)
            self._handles.add(h)
            return h

    def close(self) -> None:
        """Close every host handle and free the shared_info pages.  Idempotent."""
        for h in list(self._handles):
            h.close()
        with self.lock:
            self._closed = True
            for t in self._tables.values():
                t.domain = None
                t.irqfds = []
            frames = [t.shinfo for t in self._by_name.values() if t.shinfo is not None]
            for t in self._by_name.values():
                t.shinfo = None
        for fr in frames:
            self.machine.free(fr)

    # --- VMM-internal API (other services) ------------------------------------------------
    def send(self, domid: int, port: int) -> int:
        """Send an event on *port* of domain *domid* (0 = the host) as if that
        domain called ``EVTCHNOP_send``: 0, ``-EINVAL`` for a port that is not
        bound, ``-ESRCH`` for a domain without event channels.  For the grant
        service's unmap notification and vchan."""
        with self.lock:
            t = self._tables.get(domid)
            if t is None:
                return -E.ESRCH
            return self._send(t, port)

    def host_port_bound(self, port: int) -> bool:
        """Is *port* a live host (domain 0) port bound through an open
        :class:`EvtchnHandle`?  (gntdev's unmap-notify accepts only those.)"""
        with self.lock:
            t = self._tables[0]
            return port in t.owner and t.state[port] in (UNBOUND, INTERDOMAIN)

    def port_status(self, domid: int, port: int) -> PortStatus:
        """The state of *port* of domain *domid*, as ``EVTCHNOP_status`` by a
        privileged caller.  ``KeyError`` for an unknown domain, ``ValueError``
        for a port outside its table."""
        with self.lock:
            t = self._tables[domid]
            if not t.valid(port):
                raise ValueError(f"port {port} outside 0..{t.nports - 1}")
            return self._status(t, port)

    # --- the hypercall --------------------------------------------------------------------
    def hypercall(self, t: _Table, cmd: int, arg: int) -> int:
        """``event_channel_op(cmd, arg)`` from domain *t*: 0 or ``-errno``.
        *cmd* is read as Xen's ``int cmd`` (the low 32 bits); *arg* is the GPA
        of the cmd's struct.  ``-ENOSYS`` for a cmd not modelled; ``-EFAULT``
        if the struct is not in guest memory (or lies in the reserved low
        1 MiB: page tables, IDT, stub stacks)."""
        cmd &= _U32
        size = abi.ARG_SIZE.get(cmd)
        if size is None:
            return -E.ENOSYS
        dom = t.domain
        if dom is None:
            return -E.ENOSYS
        # A GuestMemoryError (either copy) is the dispatcher's -EFAULT.
        with guest_buffer(dom.memory, arg, size) as view:
            raw = bytearray(view)                # copied once, then checked
        with self.lock:
            ret, out = self._op(t, cmd, raw)
        if out:
            dom.memory.write(arg, raw)
        return ret

    def _op(self, t: _Table, cmd: int, raw: bytearray) -> tuple[int, bool]:
        """One operation on the copied-in struct *raw* (OUT fields written into
        it); (result, copy back?).  Holds the lock."""
        if cmd == abi.EVTCHNOP_send:
            return self._send(t, abi.PORT_ARG.unpack(raw)[0]), False
        if cmd == abi.EVTCHNOP_alloc_unbound:
            dom, remote, _ = abi.ALLOC_UNBOUND.unpack(raw)
            port = self._alloc_unbound(t, dom, remote)
            if port < 0:
                return port, False
            abi.PORT_ARG.pack_into(raw, abi.ALLOC_UNBOUND_PORT, port)
            return 0, True
        if cmd == abi.EVTCHNOP_bind_interdomain:
            rdom, rport, _ = abi.BIND_INTERDOMAIN.unpack(raw)
            port = self._bind_interdomain(t, rdom, rport)
            if port < 0:
                return port, False
            abi.PORT_ARG.pack_into(raw, abi.BIND_INTERDOMAIN_LOCAL_PORT, port)
            return 0, True
        if cmd == abi.EVTCHNOP_close:
            return self._close(t, abi.PORT_ARG.unpack(raw)[0]), False
        if cmd == abi.EVTCHNOP_unmask:
            return self._unmask(t, abi.PORT_ARG.unpack(raw)[0]), False
        if cmd == abi.EVTCHNOP_status:
            return self._status_op(t, raw)
        if cmd == abi.EVTCHNOP_bind_ipi:
            vcpu = abi.BIND_IPI.unpack(raw)[0]
            port = self._bind_ipi(t, vcpu)
            if port < 0:
                return port, False
            abi.PORT_ARG.pack_into(raw, abi.BIND_IPI_PORT, port)
            return 0, True
        if cmd == abi.EVTCHNOP_bind_vcpu:
            port, vcpu = abi.BIND_VCPU.unpack(raw)
            return self._bind_vcpu(t, port, vcpu), False
        return -E.ENOSYS, False

    # --- operations (the lock held; results: >= 0 or -errno) -------------------------------
    def _lookup(self, t: _Table, dom: int) -> _Table | None:
        """``rcu_lock_domain_by_any_id``: DOMID_SELF is the caller."""
        return t if dom == abi.DOMID_SELF else self._tables.get(dom)

    def _alloc_unbound(self, t: _Table, dom: int, remote: int) -> int:
        """A new UNBOUND port of *dom* (must be the caller) for *remote*;
        Xen's order of checks: ``-ESRCH`` unknown dom, ``-ENOSPC`` no free
        port, ``-EPERM`` dom is another domain.  *remote* is not looked up
        (Xen does not: the domain may not exist yet); DOMID_SELF means the
        caller."""
        d = self._lookup(t, dom)
        if d is None:
            return -E.ESRCH
        port = d.free_port()
        if port < 0:
            return -E.ENOSPC
        if d is not t:
            return -E.EPERM
        t.state[port] = UNBOUND
        t.remote_dom[port] = t.domid if remote == abi.DOMID_SELF else remote
        return port

    def _bind_interdomain(self, t: _Table, rdom: int, rport: int,
                          owner: "EvtchnHandle | None" = None) -> int:
        """Link a new port of *t* to *rport* of *rdom*, which must be UNBOUND
        and reserved for *t*; the new port is set pending at once (an event
        sent to the unbound port was dropped).  ``-ESRCH`` unknown rdom,
        ``-ENOSPC`` no free port, ``-EINVAL`` bad remote port (including the
        new port itself: the self-bind that QEMU's emulation let through)."""
        if rdom == abi.DOMID_SELF:
            rdom = t.domid
        rd = self._tables.get(rdom)
        if rd is None:
            return -E.ESRCH
        lport = t.free_port()
        if lport < 0:
            return -E.ENOSPC
        if (not rd.valid(rport) or (rd is t and rport == lport) or rd.state[rport] != UNBOUND
                or rd.remote_dom[rport] != t.domid):
            return -E.EINVAL
        t.state[lport] = INTERDOMAIN
        t.remote_dom[lport], t.remote_port[lport] = rd.domid, rport
        rd.state[rport] = INTERDOMAIN
        rd.remote_dom[rport], rd.remote_port[rport] = t.domid, lport
        if owner is not None:
            t.owner[lport] = owner
        self._set_pending(t, lport)
        return lport

    def _send(self, t: _Table, port: int) -> int:
        """``evtchn_send``: INTERDOMAIN raises the peer port, IPI this one,
        UNBOUND drops the event (0); ``-EINVAL`` otherwise."""
        if not t.valid(port):
            return -E.EINVAL
        state = t.state[port]
        if state == INTERDOMAIN:
            rd = self._tables.get(t.remote_dom[port])
            if rd is not None:
                self._set_pending(rd, t.remote_port[port])
            return 0
        if state == IPI:
            self._set_pending(t, port)
            return 0
        return 0 if state == UNBOUND else -E.EINVAL

    def _close(self, t: _Table, port: int) -> int:
        """``__evtchn_close``: ``-EINVAL`` for a port that is not open; the
        peer of an interdomain port goes back to UNBOUND, reserved for *t*,
        silently."""
        if not t.valid(port) or t.state[port] in (FREE, RESERVED):
            return -E.EINVAL
        if t.state[port] == INTERDOMAIN:
            rd = self._tables.get(t.remote_dom[port])
            rport = t.remote_port[port]
            if rd is not None and rd.state[rport] == INTERDOMAIN:
                rd.state[rport] = UNBOUND
                rd.remote_dom[rport], rd.remote_port[rport] = t.domid, 0
        self._free(t, port)
        return 0

    def _close_all(self, t: _Table) -> None:
        for port in range(1, t.nports):
            if t.state[port] not in (FREE, RESERVED):
                self._close(t, port)

    def _free(self, t: _Table, port: int) -> None:
        """``free_evtchn``: clear the pending bit, state FREE, notify vCPU 0."""
        if t.domid == 0:
            h = t.owner.pop(port, None)
            if h is not None:
                h._forget(port)
        elif t.shinfo is not None:
            atomic.test_and_clear_bit(t.shinfo.hva + abi.SHINFO_EVTCHN_PENDING, port)
        t.state[port] = FREE
        t.vcpu[port] = 0
        t.remote_dom[port] = t.remote_port[port] = 0

    def _bind_ipi(self, t: _Table, vcpu: int) -> int:
        """A new IPI port notifying *vcpu*: ``-ENOENT`` for a vCPU the domain
        does not have (Xen's code), ``-ENOSPC`` no free port."""
        if vcpu >= t.nr_vcpus:
            return -E.ENOENT
        port = t.free_port()
        if port < 0:
            return -E.ENOSPC
        t.state[port] = IPI
        t.vcpu[port] = vcpu
        return port

    def _bind_vcpu(self, t: _Table, port: int, vcpu: int) -> int:
        """Notify *vcpu* for *port* from now on: ``-ENOENT`` for a vCPU the
        domain does not have, ``-EINVAL`` unless the port is UNBOUND or
        INTERDOMAIN (an IPI port keeps its vCPU, as Xen)."""
        if vcpu >= t.nr_vcpus:
            return -E.ENOENT
        if not t.valid(port) or t.state[port] not in (UNBOUND, INTERDOMAIN):
            return -E.EINVAL
        t.vcpu[port] = vcpu
        return 0

    def _status(self, t: _Table, port: int) -> PortStatus:
        state = t.state[port]
        if state == UNBOUND:
            return PortStatus(abi.EVTCHNSTAT_unbound, t.vcpu[port], t.remote_dom[port])
        if state == INTERDOMAIN:
            return PortStatus(abi.EVTCHNSTAT_interdomain, t.vcpu[port], t.remote_dom[port],
                              t.remote_port[port])
        return PortStatus(_STATUS_OF[state], t.vcpu[port])

    def _status_op(self, t: _Table, raw: bytearray) -> tuple[int, bool]:
        """``evtchn_status``: ``-ESRCH`` unknown dom, ``-EINVAL`` port outside
        the table, ``-EPERM`` another domain's port (Xen's order)."""
        dom, port = abi.STATUS.unpack_from(raw)
        d = self._lookup(t, dom)
        if d is None:
            return -E.ESRCH, False
        if not d.valid(port):
            return -E.EINVAL, False
        if d is not t:
            return -E.EPERM, False
        st = self._status(d, port)
        abi.STATUS_OUT.pack_into(raw, abi.STATUS_STATUS, st.status, st.vcpu)
        if st.status in (abi.EVTCHNSTAT_unbound, abi.EVTCHNSTAT_interdomain):
            abi.STATUS_U_DOM.pack_into(raw, abi.STATUS_U, st.remote_dom)
        if st.status == abi.EVTCHNSTAT_interdomain:
            abi.PORT_ARG.pack_into(raw, abi.STATUS_U_PORT, st.remote_port)
        return 0, True

    # --- 2-level delivery -----------------------------------------------------------------
    def _set_pending(self, t: _Table, port: int) -> None:
        """Raise *port* of *t* (``evtchn_2l_set_pending``); for the host, queue
        it on the handle it is bound on."""
        if t.domid == 0:
            h = t.owner.get(port)
            if h is not None:
                h._event(port)
            return
        if t.domain is None:
            return
        base = t.shinfo.hva
        if atomic.test_and_set_bit(base + abi.SHINFO_EVTCHN_PENDING, port):
            return
        if _masked(t, port):
            return
        v = t.vcpu[port]
        if not atomic.test_and_set_bit(base + abi.vcpu_info(v) + abi.VI_PENDING_SEL,
                                       port // abi.BITS_PER_WORD):
            self._mark_events_pending(t, v)

    def _unmask(self, t: _Table, port: int) -> int:
        """``evtchn_2l_unmask``: clear the mask bit; if it was set and the port
        is pending, re-run the selector and upcall steps.  ``-EINVAL`` for a
        port outside the table."""
        if not t.valid(port):
            return -E.EINVAL
        if t.domain is None:
            return 0
        base = t.shinfo.hva
        v = t.vcpu[port]
        if (atomic.test_and_clear_bit(base + abi.SHINFO_EVTCHN_MASK, port)
                and _pending(t, port)
                and not atomic.test_and_set_bit(base + abi.vcpu_info(v) + abi.VI_PENDING_SEL,
                                                port // abi.BITS_PER_WORD)):
            self._mark_events_pending(t, v)
        return 0

    def _mark_events_pending(self, t: _Table, v: int) -> None:
        """``vcpu_mark_events_pending``: set ``evtchn_upcall_pending``; raise
        the upcall vector if it was clear."""
        addr = t.shinfo.hva + abi.vcpu_info(v) + abi.VI_UPCALL_PENDING
        if atomic.fetch_or_u8(addr, 1) & 1:
            return
        if v < len(t.irqfds):
            try:
                t.irqfds[v].fire()
            except OSError:
                pass            # the domain is being torn down


def _masked(t: _Table, port: int) -> bool:
    # One byte read: a byte load cannot tear, and only this bit matters.
    return bool(t.shinfo.buffer[abi.SHINFO_EVTCHN_MASK + (port >> 3)] >> (port & 7) & 1)


def _pending(t: _Table, port: int) -> bool:
    return bool(t.shinfo.buffer[abi.SHINFO_EVTCHN_PENDING + (port >> 3)] >> (port & 7) & 1)


class EvtchnHandle:
    """A host (domain 0) user of event channels: a model of one open
    ``/dev/xen/evtchn`` (Linux ``drivers/xen/evtchn.c``) with libxenevtchn's
    calls.  Get one from :meth:`EvtchnService.open`; close it (or use it as a
    context manager) to unbind all its ports.

    Delivery, as the Linux driver: an event on one of its ports queues the
    port and masks it; :meth:`pending` returns queued ports one at a time
    (oldest first); the port stays masked until :meth:`unmask`, and events
    arriving meanwhile are remembered as one (its pending bit) and delivered
    at the unmask.  :meth:`fileno` is an eventfd that is readable while a port
    is queued (for ``selectors`` / ``asyncio.add_reader``).  A port bound with
    :meth:`bind_interdomain` is queued at once (Xen sets the new port pending).

    Errors are ``OSError`` with the errno the Linux driver returns: EINVAL,
    ESRCH, ENOSPC from the hypervisor, ENOTCONN for a port this handle did not
    bind, EBADF once closed.  Thread safe (the service's lock)."""

    def __init__(self, service: EvtchnService) -> None:
        self._svc = service
        self._ports: set[int] = set()
        self._masked: set[int] = set()       # delivered, not unmasked yet
        self._latched: set[int] = set()      # raised while masked
        self._ring: collections.deque[int] = collections.deque()
        self._efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._closed = False

    # --- binding -------------------------------------------------------------------------
    def bind_unbound_port(self, remote_domid: int) -> int:
        """A new host port UNBOUND for *remote_domid* (0..0xFFFF; DOMID_SELF
        = the host), for that domain's ``bind_interdomain``
        (``IOCTL_EVTCHN_BIND_UNBOUND_PORT``).  Returns the port.  ``OSError``:
        ENOSPC when the host's 4096 ports are used, EINVAL for a domid outside
        u16."""
        _check_domid(remote_domid)
        svc = self._svc
        with svc.lock:
            self._check_open()
            t = svc._tables[0]
            port = _ok(svc._alloc_unbound(t, abi.DOMID_SELF, remote_domid))
            t.owner[port] = self
            self._ports.add(port)
            return port

    def bind_interdomain(self, remote_domid: int, remote_port: int) -> int:
        """Bind a new host port to *remote_port* of *remote_domid*, which that
        domain allocated UNBOUND for domain 0 (``IOCTL_EVTCHN_BIND_INTERDOMAIN``).
        Returns the local port, already queued as pending.  ``OSError``: ESRCH
        for a domain without event channels, EINVAL for a remote port that is
        not UNBOUND for the host (or a bad number), ENOSPC when full."""
        _check_domid(remote_domid)
        if not 0 <= remote_port <= _U32:
            raise OSError(E.EINVAL, f"port {remote_port} outside u32")
        svc = self._svc
        with svc.lock:
            self._check_open()
            port = _ok(svc._bind_interdomain(svc._tables[0], remote_domid, remote_port,
                                             owner=self))
            self._ports.add(port)
            return port

    def unbind(self, port: int) -> None:
        """Close *port* (``IOCTL_EVTCHN_UNBIND``): an interdomain peer goes back
        to UNBOUND for the host, silently; a queued event of the port is
        dropped.  ``OSError``: EINVAL for a port outside 0..4095, ENOTCONN
        for one this handle did not bind."""
        svc = self._svc
        with svc.lock:
            self._check_open()
            if not svc._tables[0].valid(port):
                raise OSError(E.EINVAL, f"port {port} outside 0..{abi.NR_EVENT_CHANNELS - 1}")
            if port not in self._ports:
                raise OSError(E.ENOTCONN, f"port {port} is not bound on this handle")
            svc._close(svc._tables[0], port)

    def notify(self, port: int) -> None:
        """Send an event on *port* (``IOCTL_EVTCHN_NOTIFY``); to a peer that
        closed its end (the port is UNBOUND again) the event is dropped, as
        Xen's send.  ``OSError`` ENOTCONN for a port this handle did not bind."""
        svc = self._svc
        with svc.lock:
            self._check_open()
            if port not in self._ports:
                raise OSError(E.ENOTCONN, f"port {port} is not bound on this handle")
            svc._send(svc._tables[0], port)

    # --- delivery ------------------------------------------------------------------------
    def fileno(self) -> int:
        """The eventfd: readable while :meth:`pending` has a port to return."""
        return self._efd

    def pending(self) -> int | None:
        """The oldest queued port (it stays masked until :meth:`unmask`), or
        None (never blocks; as ``xenevtchn_pending`` on a ready fd)."""
        with self._svc.lock:
            self._check_open()
            if not self._ring:
                return None
            port = self._ring.popleft()
            if not self._ring:
                _drain(self._efd)
            return port

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until a port is queued and return it, as :meth:`pending`;
        None after *timeout* seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            port = self.pending()
            if port is not None:
                return port
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            poller = select.poll()          # not select(): fds above 1023 work
            poller.register(self._efd, select.POLLIN)
            poller.poll(None if left is None else max(1, int(left * 1000)))

    def unmask(self, port: int) -> None:
        """Let *port* be delivered again (``xenevtchn_unmask``; a write of the
        port to the device); an event that came while it was masked is queued
        now.  A port not bound on this handle is ignored, as the driver does."""
        with self._svc.lock:
            self._check_open()
            if port not in self._ports or port not in self._masked:
                return
            self._masked.discard(port)
            if port in self._latched:
                self._latched.discard(port)
                self._event(port)

    @property
    def ports(self) -> frozenset[int]:
        """The ports bound on this handle."""
        with self._svc.lock:
            return frozenset(self._ports)

    def close(self) -> None:
        """Unbind every port and close the eventfd.  Idempotent."""
        svc = self._svc
        with svc.lock:
            if self._closed:
                return
            t = svc._tables[0]
            for port in sorted(self._ports):
                svc._close(t, port)
            self._closed = True
            os.close(self._efd)
            svc._handles.discard(self)

    def __enter__(self) -> "EvtchnHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- called by the service, its lock held ----------------------------------------------
    def _event(self, port: int) -> None:
        if port in self._masked:
            self._latched.add(port)
            return
        self._masked.add(port)
        self._ring.append(port)
        if len(self._ring) == 1:
            os.eventfd_write(self._efd, 1)

    def _forget(self, port: int) -> None:
        self._ports.discard(port)
        self._masked.discard(port)
        self._latched.discard(port)
        if port in self._ring:
            self._ring = collections.deque(p for p in self._ring if p != port)
            if not self._ring:
                _drain(self._efd)

    def _check_open(self) -> None:
        if self._closed:
            raise OSError(E.EBADF, "event channel handle is closed")


def _ok(ret: int) -> int:
    if ret < 0:
        raise OSError(-ret, os.strerror(-ret))
    return ret


def _check_domid(domid: int) -> None:
    if not 0 <= domid <= 0xFFFF:
        raise OSError(E.EINVAL, f"domid {domid} outside u16")


def _drain(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        pass
