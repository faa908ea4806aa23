"""lguest DMA with keys: BIND_DMA / SEND_DMA between guests and to the launcher.

What Linux 2.6.23's lguest host does for its guests (specs §B.2), done here in
the VMM (docs/lguest.md):

* A **key** is a guest-physical address, 4-byte aligned and mapped (else the
  guest is killed, "bad dma key").  A key inside a page shared by several
  guests (a LAN's net page) is *shared*: its identity is (LAN, offset), the
  same for every guest whatever GPA the page has there, as the reference's
  futex key of a MAP_SHARED file page.  Any other key is *private*:
  (domain, GPA).
* **BIND_DMA(key, dmas, num, irq)**: 32 bindings per guest; irq 0 unbinds the
  binding of (key, dmas); irq >= 32, no free slot, or ``num`` outside
  1..256 (the reference takes up to 65535, unchecked) give 0.  A newer binding of a key is found before older
  ones ("most recent binder").
* **SEND_DMA(key, dma)** to a shared key goes to the most recent binder that
  is not the sender: the first entry of its array, from ``next_dma`` on, with
  ``used_len == 0`` receives the data (truncated to its sections), both
  ``used_len`` are set to the bytes copied and the binder's irq is raised.  No
  free entry: its irq is raised anyway, then one retry; then the sender's
  ``used_len`` stays 0.  No binder: nothing happens.  A send to a private key
  goes to the domain's :class:`~.launcher.Launcher` (its devices), which
  returns the sender's ``used_len``.
* A section outside the guest's memory (``(addr + len) / 4096 >= pfn_limit``,
  as the reference), longer than a page or crossing one kills the guest that
  owns the list, sender or receiver; the VMM and the other guests go on.
  Stricter than the reference: a section may not touch the reserved low
  1 MiB (page tables, IDT: the VMM would write them for the guest).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ...arch.x86 import layout as L
from ...config.manifest import ConsoleSpec, NetSpec
from ...memory import PAGE_SIZE
from ...memory.guest import GuestMemoryError
from ...vm.vcpu import GuestStop
from . import abi


class DmaError(Exception):
    """A bad lguest_dma or section: the owner of the list is killed."""


@dataclass
class Binding:
    owner: "LguestDomain"
    key: tuple
    dmas: int             # GPA of the lguest_dma array
    num: int
    irq: int
    next_dma: int = 0


@dataclass
class Lan:
    """A virtual LAN: one page of lguest_net slots, shared by its guests."""
    name: str
    frames: object = None                        # FrameRange (one page)
    slots: dict[str, int] = field(default_factory=dict)   # domain name -> slot
    capture: object = None                       # PcapWriter, when asked
    dropped: int = 0

    def write_slot(self, slot: int, mac: bytes) -> None:
        """Write *mac* into *slot* of the page (zeros: the slot is unused)."""
        self.frames.buffer[slot * abi.NET_SLOT:(slot + 1) * abi.NET_SLOT] = mac


class LguestDomain:
    """The lguest state of one guest: bindings, device pages, its launcher."""

    def __init__(self, service: "LguestService", name: str, domid: int, memory_bytes: int,
                 devices: tuple) -> None:
        self.service, self.name, self.domid = service, name, domid
        self.devices = tuple(devices)
        self.domain = None                       # attached Domain
        self.bindings: list[Binding | None] = [None] * abi.MAX_DMA
        self.desc_gpa = memory_bytes             # the page just above RAM
        self.device_gpa: list[int] = []          # each device's page (0 for the console)
        self.lans: dict[int, Lan] = {}           # page GPA -> LAN
        gpa = memory_bytes + PAGE_SIZE
        for dev in self.devices:
            if isinstance(dev, ConsoleSpec):
                self.device_gpa.append(0)
                continue
            self.device_gpa.append(gpa)
            gpa += PAGE_SIZE
        self.top = gpa                           # pfn_limit * 4096
        self.launcher = None
        self._irqfds: dict = {}                  # irq -> the domain's Irqfd

    @property
    def memory(self):
        return self.domain.memory

    def key_id(self, key: int) -> tuple:
        """The identity of *key*; ``DmaError`` if unaligned or unmapped."""
        if key & 3:
            raise DmaError(f"bad dma key {key:#x}")
        for page, lan in self.lans.items():
            if page <= key < page + PAGE_SIZE:
                return ("lan", lan.name, key - page)
        if not self.domain.memory.contains(key, 4):
            raise DmaError(f"bad dma key {key:#x}")
        return ("private", self.domid, key)

    def section_ok(self, addr: int, length: int) -> bool:
        end = addr + length
        return (length <= PAGE_SIZE and addr % PAGE_SIZE + length <= PAGE_SIZE
                and addr >= L.RESERVED_END and end // PAGE_SIZE < self.top // PAGE_SIZE)

    def read_dma(self, gpa: int) -> tuple[int, list[tuple[int, int]]]:
        """(used_len, sections) of the lguest_dma at *gpa*; ``DmaError`` if it
        is not in guest memory or a section is bad."""
        self._check_dma(gpa)
        try:
            raw = self.memory.read(gpa, abi.DMA_SIZE)
        except GuestMemoryError:
            raise DmaError(f"lguest_dma at {gpa:#x} outside guest memory") from None
        fields = abi.DMA.unpack(raw)
        sections = []
        for addr, length in zip(fields[2:18], fields[18:34]):
            if length == 0:
                break
            if not self.section_ok(addr, length):
                raise DmaError(f"bad dma section {addr:#x}+{length} (outside memory, "
                               "longer than a page or crossing one)")
            sections.append((addr, length))
        return fields[0], sections

    def _check_dma(self, gpa: int) -> None:
        # As the reference's lguest_address_ok: the struct lies in the guest's
        # RAM below pfn_limit (so never in a read-only region such as a
        # read-only grant window or the IVC info page, where the VMM could
        # not write used_len back).
        if not (L.RESERVED_END <= gpa and gpa + abi.DMA_SIZE <= self.top):
            raise DmaError(f"lguest_dma at {gpa:#x} outside the guest's RAM")

    def used_len(self, gpa: int) -> int:
        self._check_dma(gpa)
        try:
            return self.memory.read_u32(gpa + abi.DMA_USED_LEN)
        except GuestMemoryError:
            raise DmaError(f"lguest_dma at {gpa:#x} outside guest memory") from None

    def set_used_len(self, gpa: int, value: int) -> None:
        self._check_dma(gpa)
        try:
            self.memory.write_u32(gpa + abi.DMA_USED_LEN, value)
        except GuestMemoryError:
            raise DmaError(f"lguest_dma at {gpa:#x} outside guest memory") from None

    def raise_irq(self, irq: int) -> None:
        """Raise lguest irq *irq* on vCPU 0 through an irqfd made on first use
        (an eventfd write, as the IVC doorbells; the domain closes it)."""
        dom = self.domain
        if dom is None or dom.stopped or not 0 < irq < abi.IRQS:
            return
        irqfd = self._irqfds.get(irq)
        if irqfd is None:
            irqfd = self._irqfds[irq] = dom.irqfd(0, abi.VECTOR_BASE + irq)
        irqfd.fire()                 # nothing once the domain closed it

    def kill(self, reason: str) -> None:
        if self.domain is not None:
            self.domain.crash(f"lguest: {reason}")


class LguestService:
    """The lguest host of one hypervisor: per-guest bindings, LANs, launchers.

    Use: ``svc = LguestService(specs)`` (the manifest's domains); pass
    :meth:`regions` of each guest to ``create_domain``; :meth:`attach` it;
    :meth:`domain_stopped` when it stops; :meth:`close` at the end."""

    def __init__(self, machine, specs, loop_factory=None) -> None:
        self.machine = machine
        self.lock = threading.RLock()
        self.guests: dict[str, LguestDomain] = {}
        self.lans: dict[str, Lan] = {}
        self.by_key: dict[tuple, list[Binding]] = {}    # most recent first
        self._loop_factory = loop_factory
        self._frames = []
        for spec in specs:
            if spec.devices:
                self.guests[spec.name] = LguestDomain(self, spec.name, spec.domid,
                                                      spec.memory_bytes, spec.devices)
        for g in self.guests.values():
            for dev, gpa in zip(g.devices, g.device_gpa):
                if isinstance(dev, NetSpec):
                    lan = self.lans.get(dev.lan)
                    if lan is None:
                        lan = self.lans[dev.lan] = Lan(dev.lan)
                    if len(lan.slots) >= abi.NET_SLOTS:
                        raise ValueError(f"LAN {dev.lan}: more than {abi.NET_SLOTS} guests")
                    lan.slots[g.name] = len(lan.slots)
                    g.lans[gpa] = lan

    # --- building ---------------------------------------------------------------------
    def regions(self, name: str) -> tuple:
        """``(gpa, FrameRange, readonly)`` of guest *name*: the descriptor page
        and the device pages (a LAN's page is the same frames in every guest)."""
        from .launcher import build_pages
        g = self.guests.get(name)
        if g is None:
            return ()
        for lan in self.lans.values():
            if lan.frames is None:
                lan.frames = self.machine.alloc(1, f"lguest-lan:{lan.name}")
                self._frames.append(lan.frames)
        pages = build_pages(self, g)
        self._frames += [f for _, f, _ in pages if f not in self._frames]
        return pages

    def attach(self, domain):
        """Hypercalls and launcher of a guest whose :meth:`regions` were
        mapped; returns its :class:`~.launcher.Launcher` (None without devices)."""
        from .launcher import Launcher
        g = self.guests.get(domain.name)
        t = domain.hypercalls
        if g is None:
            t.register(abi.HC_BIND_DMA, "lguest_bind_dma", lambda v, *a: 0)
            t.register(abi.HC_SEND_DMA, "lguest_send_dma", lambda v, *a: 0)
            return None
        from .launcher import build_pages
        with self.lock:
            self._drop_bindings(g)
            if g.launcher is not None:          # a restarted domain: a fresh launcher
                g.launcher.close()
            if getattr(g, "pages", None) is not None:
                build_pages(self, g)            # descriptors and MAC slots as new
            g.domain = domain
            g._irqfds = {}                      # the old domain closed its irqfds
            g.launcher = Launcher(self, g, self._loop_factory)
        t.register(abi.HC_BIND_DMA, "lguest_bind_dma",
                   lambda v, key, dmas, num, irq, *a: self.bind_dma(g, key, dmas, num, irq))
        t.register(abi.HC_SEND_DMA, "lguest_send_dma",
                   lambda v, key, dma, *a: self.send_dma(g, key, dma))
        # Tell the guest where its devices are (0, the default, says none).
        domain.memory.write_u64(L.BOOT_INFO + L.BI_OFF_LGUEST_DESCS, g.desc_gpa)
        g.launcher.initialize()
        return g.launcher

    def launcher(self, name: str):
        """The :class:`~.launcher.Launcher` of guest *name* (``KeyError``)."""
        g = self.guests[name]
        if g.launcher is None:
            raise KeyError(name)
        return g.launcher

    def capture(self, lan: str, path) -> None:
        """Write every frame delivered on *lan* to the pcap file *path* (a
        frame sent to several guests, e.g. a broadcast, appears once per
        receiver).  ``KeyError`` for an unknown LAN, ``OSError`` if the file
        cannot be made."""
        from .pcap import PcapWriter
        with self.lock:
            target = self.lans[lan]
            if target.capture is not None:
                target.capture.close()
            target.capture = PcapWriter(path)

    def domain_stopped(self, domain) -> None:
        """Forget a stopped guest's bindings, free its LAN slots, flush its disks."""
        g = self.guests.get(domain.name)
        if g is None or g.domain is not domain:
            return
        with self.lock:
            self._drop_bindings(g)
            if g.launcher is not None:
                g.launcher.stopped()

    def _unbind(self, g: LguestDomain, i: int) -> None:
        b = g.bindings[i]
        g.bindings[i] = None
        same = self.by_key[b.key]
        same.remove(b)
        if not same:
            del self.by_key[b.key]

    def _drop_bindings(self, g: LguestDomain) -> None:
        for i, b in enumerate(g.bindings):
            if b is not None:
                self._unbind(g, i)

    def close(self) -> None:
        with self.lock:
            for g in self.guests.values():
                if g.launcher is not None:
                    g.launcher.close()
            for lan in self.lans.values():
                if lan.capture is not None:
                    lan.capture.close()
                    lan.capture = None
            for f in self._frames:
                self.machine.free(f)
            self._frames.clear()

    # --- the hypercalls --------------------------------------------------------------
    def bind_dma(self, g: LguestDomain, key: int, dmas: int, num: int, irq: int) -> int:
        """BIND_DMA: 1 if bound (or, with irq 0, unbound), else 0."""
        if irq >= abi.IRQS:
            return 0
        try:
            kid = g.key_id(key)
        except DmaError as e:
            raise GuestStop(f"lguest: {e}") from None
        with self.lock:
            if irq == 0:
                for i, b in enumerate(g.bindings):
                    if b is not None and b.key == kid and b.dmas == dmas:
                        self._unbind(g, i)
                        return 1
                return 0
            if not 0 < num <= abi.MAX_BOUND:
                return 0
            for i, b in enumerate(g.bindings):
                if b is None:
                    nb = Binding(g, kid, dmas, num, irq)
                    g.bindings[i] = nb
                    self.by_key.setdefault(kid, []).insert(0, nb)
                    return 1
            return 0

    def send_dma(self, g: LguestDomain, key: int, dma: int) -> int:
        """SEND_DMA: deliver; the result is in the sender's used_len."""
        try:
            kid = g.key_id(key)
        except DmaError as e:
            raise GuestStop(f"lguest: {e}") from None
        with self.lock:
            try:
                _used, sections = g.read_dma(dma)
                if kid[0] == "private":
                    n = g.launcher.handle_output(key, kid, dma, sections)
                    if n is not None:
                        g.set_used_len(dma, n)
                    return 0
            except DmaError as e:
                raise GuestStop(f"lguest: {e}") from None
            lan = self.lans[kid[1]]
            if sum(n for _, n in sections) > abi.NET_MAX_FRAME:
                lan.dropped += 1                   # an oversize frame is dropped
                return 0
            for _attempt in range(2):          # "give one chance to restock"
                dst = next((b for b in self.by_key.get(kid, ()) if b.owner is not g), None)
                if dst is None or self._transfer(g, dma, sections, dst, lan) is not None:
                    return 0
            return 0

    def _transfer(self, src: LguestDomain, dma: int, src_sections, dst: Binding, lan: Lan):
        """dma_transfer of the checked *src_sections*: bytes copied, or None
        when *dst* had no free entry."""
        owner = dst.owner
        try:
            entry = None
            for k in range(dst.num):
                i = (dst.next_dma + k) % dst.num
                gpa = dst.dmas + i * abi.DMA_SIZE
                if owner.used_len(gpa) == 0:
                    entry = gpa
                    break
            if entry is None:
                owner.raise_irq(dst.irq)
                return None
            _u, dst_sections = owner.read_dma(entry)
        except DmaError as e:
            owner.kill(str(e))
            self._drop_bindings(owner)
            return 0
        total = _copy(src.memory, src_sections, owner.memory, dst_sections)
        src.set_used_len(dma, total)
        if total == 0 and src_sections:
            return 0
        owner.set_used_len(entry, total)
        dst.next_dma = (dst.next_dma + 1) & 0xFFFF
        if lan.capture is not None:
            lan.capture.write(_gather(owner.memory, dst_sections, total))
        owner.raise_irq(dst.irq)
        return total


def _copy(smem, ssec, dmem, dsec) -> int:
    """Copy from source sections to destination sections until either ends."""
    total = 0
    si = di = 0
    soff = doff = 0
    while si < len(ssec) and di < len(dsec):
        sa, sl = ssec[si]
        da, dl = dsec[di]
        n = min(sl - soff, dl - doff)
        dmem.writable_view(da + doff, n)[:] = smem.view(sa + soff, n)
        total += n
        soff += n
        doff += n
        if soff == sl:
            si, soff = si + 1, 0
        if doff == dl:
            di, doff = di + 1, 0
    return total


def _gather(mem, sections, total: int) -> bytes:
    out = bytearray()
    for addr, length in sections:
        take = min(length, total - len(out))
        if take <= 0:
            break
        out += mem.read(addr, take)
    return bytes(out)
