"""The hypervisor side of Tegra IVC: shared areas, the info page, doorbells, hypercalls.

What the Tegra hypervisor does for its guests (specs §A.1.3-A.1.4, A.3), done
here over KVM:

* **Shared areas.** Every pair of peers that shares queues gets one area of
  machine frames (a memfd :class:`~paravm.memory.FrameRange`), mapped into
  both guests' physical address spaces (a memslot each; the host peer uses the
  VMM's own mapping).  A queue takes ``2 * size`` bytes of its area at
  ``offset``, ``size = total_queue_size(nframes * frame_size)`` per direction,
  placed by the rx-first rule: the end whose vmid is ``peers[0]`` (for a
  loopback queue: the even id) has rx at ``offset`` and tx at ``offset+size``.
* **The info page.** One read-only page per guest at :data:`IVC_INFO_GPA`,
  ``struct ivc_info_page`` then its areas, queues and mempools, laid out as
  specs §A.1.4 (natural alignment, little endian).  The guest finds it with
  the ``ivc_read_info`` hypercall (READ_IVC) and its own vmid with
  ``ivc_read_gid`` (READ_GID).
* **Doorbells.** Each queue end has a receive vector (``irq`` in the info
  page) and a doorbell token (``raise_irq``).  A guest rings the peer with
  ``outl token, $IVC_DOORBELL_PORT``; ``KVM_IOEVENTFD`` (datamatch = token)
  signals an eventfd in the kernel, and that eventfd is the peer guest's
  ``KVM_IRQFD`` for its vector: no exit, no Python.  When the peer is the host,
  the eventfd is the host endpoint's ``fileno()``; the host rings a guest by
  writing the guest end's irqfd.  The ``ivc_raise_irq`` hypercall (RAISE_IRQ)
  does the same through the VMM, accepted only for ``(raise_irq, peer vmid)``
  of a queue the caller belongs to, and rate limited per queue end.
* **Mempools.** A ``[[ivc_mempool]]`` is a block of machine frames shared by
  two peers, mapped after the areas and listed in the info page
  (``struct ivc_mempool``: pa, size, id, peer vmid).
* **A peer that goes away.** The eventfds that queue ends are rung through
  belong to this service, not to a domain: a guest's irqfd borrows its end's
  eventfd, so the peers' ioeventfds stay valid when a domain is destroyed and
  rebuilt (:meth:`paravm.Hypervisor.restart`).  When a domain *crashes* or is
  stopped by the host, the service resets each of its queue ends on its
  behalf (its tx state becomes SYNC, as ``tegra_ivc_channel_reset`` would
  write) and rings the peer: the survivor's next ``channel_notified`` moves it
  to ACK and its reads and writes return ``ECONNRESET`` until a restarted peer
  completes the handshake.  A domain that *exits* leaves its queues as they
  are, so the frames it sent before exiting can still be read.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field

from ...hypercall import abi as hc
from ...hypercall.table import HypercallError
from ...memory import PAGE_SIZE
from .protocol import ST_SYNC, STATE, total_queue_size

IVC_INFO_GPA = 0xC0000000          # one read-only page per guest
IVC_AREA_GPA = 0xC0010000          # shared areas, one after another, page aligned
IVC_AREA_LIMIT = 0xF0000000
IVC_DOORBELL_PORT = 0x510          # outl token: ioeventfd, datamatch = token
IVC_VECTOR_BASE = 0x40             # receive vectors, one per queue end of a domain
IVC_VECTOR_LAST = 0xBF          # 0xC0.. belong to lguest (docs/lguest.md)

HC_IVC_READ_INFO = 16              # () -> GPA of the info page, -ENOENT without queues
HC_IVC_READ_GID = 17               # () -> my vmid (domid)
HC_IVC_RAISE_IRQ = 18              # (raise_irq, peer vmid) -> 0, -EINVAL, -EPERM, -EBUSY

RAISE_IRQ_RATE = 20000             # per queue end, per second (token bucket)

_INFO = struct.Struct("<IIII")
_AREA = struct.Struct("<QQIHH")
_QUEUE = struct.Struct("<IIIIIIIHH")
_MEMPOOL = struct.Struct("<QQII")


@dataclass
class QueueEnd:
    """One end of a queue as its owner sees it (one entry of its info page)."""
    owner: str            # domain name, or "host"
    vmid: int
    qid: int              # the id in the owner's info page
    peers: tuple[int, int]
    rx_first: bool
    irq: int = 0          # receive vector (guests)
    raise_irq: int = 0    # doorbell token the owner rings the peer with
    peer: "QueueEnd | None" = None
    queue: "Queue | None" = None
    eventfd: int = -1     # signalled when this end is rung (rx side)
    irqfd: object = None  # Irqfd of a guest end (borrows `eventfd`)
    wired: bool = False   # this end's doorbell reaches its peer
    tokens: float = RAISE_IRQ_RATE
    last: float = 0.0


@dataclass
class Queue:
    spec: object          # paravm.config.IvcSpec
    area: "Area"
    offset: int           # bytes into the area
    size: int             # bytes per direction (header + frames)
    ends: list[QueueEnd] = field(default_factory=list)

    def channel_views(self, end: QueueEnd) -> tuple[memoryview, memoryview]:
        """(rx, tx) views of the area memory for *end* (the VMM's mapping)."""
        buf = self.area.frames.buffer
        lo = buf[self.offset:self.offset + self.size]
        hi = buf[self.offset + self.size:self.offset + 2 * self.size]
        return (lo, hi) if end.rx_first else (hi, lo)


@dataclass
class Mempool:
    spec: object          # paravm.config.IvcMempoolSpec
    frames: object = None   # FrameRange
    gpa: dict[str, int] = field(default_factory=dict)   # per guest

    def peer_of(self, name: str) -> str:
        a, b = self.spec.peers
        return b if a == name else a


@dataclass
class Area:
    pair: tuple[str, str]   # sorted names (equal for loopback)
    size: int = 0
    frames: object = None   # FrameRange
    gpa: dict[str, int] = field(default_factory=dict)   # per guest


class IvcService:
    """Plans and wires the IVC queues of one hypervisor.

    Use: ``svc = IvcService(machine, specs, domids, mempools)``; pass
    :meth:`regions` of each guest to ``create_domain``; :meth:`attach` each
    guest domain; :meth:`host_endpoint` gives the Python endpoint of a queue
    with the host, :meth:`host_mempool` the host's view of a mempool;
    :meth:`domain_stopped` when a guest stops.  :meth:`close` releases areas,
    mempools, info pages and eventfds."""

    def __init__(self, machine, specs, domids: dict[str, int], mempools=()) -> None:
        self.machine = machine
        self.specs = tuple(specs)
        self.domids = dict(domids, host=0)
        self.queues: list[Queue] = []
        self.areas: dict[tuple[str, str], Area] = {}
        self.ends: dict[str, list[QueueEnd]] = {}
        self.mempools: list[Mempool] = [Mempool(m) for m in mempools]
        self.members: set[str] = set()    # guests with queues or mempools
        self.info_pages: dict[str, object] = {}
        self._eventfds: list[int] = []
        self._domains: dict[str, object] = {}    # attached guest domains by name
        self._plan()

    # --- planning (no KVM) --------------------------------------------------------------
    def _plan(self) -> None:
        for spec in self.specs:
            a, b = spec.peers
            pair = tuple(sorted((a, b)))
            area = self.areas.setdefault(pair, Area(pair))
            size = total_queue_size(spec.nframes * spec.frame_size)
            q = Queue(spec, area, area.size, size)
            area.size += 2 * size
            pa, pb = self.domids[a], self.domids[b]
            if spec.loopback:
                q.ends = [QueueEnd(a, pa, spec.id, (pa, pb), True),
                          QueueEnd(a, pa, spec.id + 1, (pa, pb), False)]
            else:
                q.ends = [QueueEnd(a, pa, spec.id, (pa, pb), True),
                          QueueEnd(b, pb, spec.id, (pa, pb), False)]
            q.ends[0].peer, q.ends[1].peer = q.ends[1], q.ends[0]
            q.ends[0].queue = q.ends[1].queue = q
            self.queues.append(q)
            for end in q.ends:
                self.ends.setdefault(end.owner, []).append(end)
        self.members = ({n for n in self.ends} | {p for m in self.mempools for p in m.spec.peers})
        self.members.discard("host")
        for owner, ends in self.ends.items():
            if owner == "host":
                continue
            if len(ends) > IVC_VECTOR_LAST - IVC_VECTOR_BASE + 1:
                raise ValueError(f"{owner}: more than {IVC_VECTOR_LAST - IVC_VECTOR_BASE + 1} "
                                 "IVC queue ends")
            for k, end in enumerate(ends):
                end.irq = IVC_VECTOR_BASE + k
                end.raise_irq = k + 1
        for name in sorted(self.members):
            gpa = IVC_AREA_GPA
            for pair, area in self.areas.items():
                if name in pair:
                    area.gpa[name] = gpa
                    gpa += _pages(area.size)
            for pool in self.mempools:
                if name in pool.spec.peers:
                    pool.gpa[name] = gpa
                    gpa += pool.spec.size
            if gpa > IVC_AREA_LIMIT:
                raise ValueError(f"{name}: IVC areas and mempools need {gpa - IVC_AREA_GPA:#x} "
                                 f"bytes, more than the {IVC_AREA_LIMIT - IVC_AREA_GPA:#x} window")

    def info_page(self, name: str) -> bytes:
        """The bytes of *name*'s info page (specs §A.1.4)."""
        areas = [a for a in self.areas.values() if name in a.pair]
        ends = self.ends.get(name, [])
        pools = [m for m in self.mempools if name in m.spec.peers]
        out = bytearray(_INFO.pack(len(ends), len(areas), len(pools), 0))
        for a in areas:
            other = a.pair[0] if a.pair[1] == name else a.pair[1]
            out += _AREA.pack(a.gpa[name], _pages(a.size), self.domids[other], 0, 0)
        for end in ends:
            q = end.queue
            out += _QUEUE.pack(end.qid, end.peers[0], end.peers[1], q.size, q.spec.nframes,
                               q.spec.frame_size, q.offset, end.irq, end.raise_irq)
        for m in pools:
            out += _MEMPOOL.pack(m.gpa[name], m.spec.size, m.spec.id,
                                 self.domids[m.peer_of(name)])
        if len(out) > PAGE_SIZE:
            raise ValueError(f"{name}: the IVC info page needs {len(out)} bytes, more than a page")
        return bytes(out)

    # --- wiring -------------------------------------------------------------------------------
    def regions(self, name: str) -> tuple:
        """``(gpa, FrameRange, readonly)`` to map into guest *name* (info page,
        areas, mempools); the same frames every time (a restarted domain maps
        what its predecessor had)."""
        if name not in self.members:
            return ()
        self._alloc()
        page = self.info_pages.get(name)
        if page is None:
            page = self.info_pages[name] = self.machine.alloc(1, f"ivc-info:{name}")
            data = self.info_page(name)
            page.buffer[:len(data)] = data
        out = [(IVC_INFO_GPA, page, True)]
        out += [(a.gpa[name], a.frames, False) for a in self.areas.values() if name in a.pair]
        out += [(m.gpa[name], m.frames, False) for m in self.mempools if name in m.spec.peers]
        return tuple(out)

    def _alloc(self) -> None:
        for area in self.areas.values():
            if area.frames is None:
                area.frames = self.machine.alloc(_pages(area.size) // PAGE_SIZE,
                                                 f"ivc:{area.pair[0]}-{area.pair[1]}")
        for m in self.mempools:
            if m.frames is None:
                m.frames = self.machine.alloc(m.spec.size // PAGE_SIZE, f"ivc-mempool:{m.spec.id}")

    def eventfd_of(self, end: QueueEnd) -> int:
        """The eventfd *end* is rung through (made on first use, owned here)."""
        if end.eventfd < 0:
            end.eventfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self._eventfds.append(end.eventfd)
        return end.eventfd

    def attach(self, domain) -> None:
        """Hypercalls, doorbell device and eventfds of a guest domain whose
        :meth:`regions` were mapped.  Call for every guest before starting."""
        name = domain.name
        t = domain.hypercalls
        has = name in self.members
        t.register(HC_IVC_READ_INFO, "ivc_read_info",
                   lambda v, *a: IVC_INFO_GPA if has else -hc.ENOENT)
        t.register(HC_IVC_READ_GID, "ivc_read_gid", lambda v, *a: domain.domid)
        t.register(HC_IVC_RAISE_IRQ, "ivc_raise_irq",
                   lambda v, irq, vmid, *a: self._raise_irq(name, irq, vmid))
        domain.pio_bus.insert(IVC_DOORBELL_PORT, 4, _Doorbell(), "ivc-doorbell")
        for end in self.ends.get(name, []):
            # The vector this end receives on: the service's eventfd -> irqfd.
            end.irqfd = domain.irqfd(0, end.irq, fd=self.eventfd_of(end))
        self._domains[name] = domain
        self._wire_doorbells()

    def domain_stopped(self, domain) -> None:
        """*domain* stopped (called once, after its vCPUs): unwire its ends;
        if it crashed or was stopped (not exited), reset its queue ends on
        its behalf and ring their peers (see the module docstring)."""
        name = domain.name
        if self._domains.get(name) is not domain:
            return
        del self._domains[name]
        reset = domain.result is not None and domain.result.how != "exited"
        for end in self.ends.get(name, []):
            end.wired = False
            end.irqfd = None
            if reset:
                _rx, tx = end.queue.channel_views(end)
                struct.pack_into("<I", tx, STATE, ST_SYNC)
                if end.peer.eventfd >= 0:
                    os.eventfd_write(end.peer.eventfd, 1)

    def _wire_doorbells(self) -> None:
        """For every end whose owner and peer are both ready: the owner's
        doorbell write signals the peer's eventfd in-kernel."""
        doms = self._domains
        for q in self.queues:
            for end in q.ends:
                if end.owner == "host" or end.owner not in doms or end.wired:
                    continue
                doms[end.owner].vm.ioeventfd(self.eventfd_of(end.peer), IVC_DOORBELL_PORT, 4,
                                             pio=True, datamatch=end.raise_irq)
                end.wired = True

    def _raise_irq(self, name: str, irq: int, vmid: int) -> int:
        for end in self.ends.get(name, []):
            if end.raise_irq == irq:
                if end.peer.vmid != vmid:
                    raise HypercallError(hc.EPERM, "not this queue's peer")
                now = time.monotonic()
                end.tokens = min(RAISE_IRQ_RATE, end.tokens + (now - end.last) * RAISE_IRQ_RATE)
                end.last = now
                if end.tokens < 1:
                    raise HypercallError(hc.EBUSY, "rate limit")
                end.tokens -= 1
                self.ring(end.peer)
                return 0
        raise HypercallError(hc.EINVAL, "no queue end with this raise_irq")

    def host_end(self, qid: int) -> QueueEnd:
        """The host's end of queue *qid* (``KeyError`` if the host has none)."""
        for end in self.ends.get("host", []):
            if end.qid == qid:
                return end
        raise KeyError(qid)

    def host_endpoint(self, qid: int, **channel_options):
        """A :class:`~.host.HostEndpoint` for the host's end of queue *qid*."""
        from .host import HostEndpoint
        return HostEndpoint(self, qid, **channel_options)

    def ring(self, end: QueueEnd) -> None:
        """Ring *end* (its receive eventfd; a guest end's vector if attached)."""
        os.eventfd_write(self.eventfd_of(end), 1)

    def host_mempool(self, pool_id: int) -> memoryview:
        """The host's view of mempool *pool_id* (zero copy; ``KeyError`` if
        the host is not one of its peers)."""
        for m in self.mempools:
            if m.spec.id == pool_id and "host" in m.spec.peers:
                self._alloc()
                return m.frames.buffer[:m.spec.size]
        raise KeyError(pool_id)

    def close(self) -> None:
        for fd in self._eventfds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._eventfds.clear()
        for page in self.info_pages.values():
            self.machine.free(page)
        self.info_pages.clear()
        for area in self.areas.values():
            if area.frames is not None:
                self.machine.free(area.frames)
                area.frames = None
        for m in self.mempools:
            if m.frames is not None:
                self.machine.free(m.frames)
                m.frames = None


class _Doorbell:
    """Doorbell writes that matched no ioeventfd (a wrong token or width) land
    here: they ring nothing (counted)."""

    def __init__(self) -> None:
        self.stray = 0

    def read(self, offset: int, data: memoryview) -> None:
        data[:] = bytes(len(data))

    def write(self, offset: int, data: memoryview) -> None:
        self.stray += 1


def _pages(n: int) -> int:
    return (n + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
