"""The lguest launcher: the host side of a guest's devices, and /dev/lguest's requests.

In Linux 2.6.23 the launcher is a user program that drives /dev/lguest
(specs §B.2): ``LHREQ_INITIALIZE``, ``LHREQ_GETDMA(key)``, ``LHREQ_IRQ(irq)``,
``LHREQ_BREAK(on)``, and a ``read()`` that returns each DMA the guest sent to
a private key.  Here one :class:`Launcher` per guest does the same in the
VMM: a send to a private key calls the device that watches that key (in the
sender's vCPU thread: SEND_DMA is synchronous for the guest, as in the
reference), and the device's result becomes the sender's ``used_len``.

Devices (docs/lguest.md):

* **console** (key 0): output goes to the domain's console stream; input
  (a file, or stdin) goes into the buffer the guest bound at key 0 (GETDMA),
  then its irq.  Input waits for a free buffer instead of being discarded as
  the reference does (a guest that binds its buffer late loses nothing).
* **block** (key = its page): lguest_block_page requests over an image file:
  read, write, flush (a paravm extension: fsync).  A request beyond the end,
  a write that would grow the image or a write to a read-only disk gets
  result 2 (error): the reference's launcher exits instead, killing the guest.
  Writes are fsync'ed at flush and when the guest stops.
* **net**: nothing here: frames go guest to guest through the LAN's shared
  page (:mod:`.service`); this side only writes each guest's MAC into its slot.
"""

from __future__ import annotations

import errno
import os
import sys
import threading

from ...config.manifest import BlockSpec, ConsoleSpec, NetSpec
from ...memory import PAGE_SIZE
from . import abi
from .service import DmaError, LguestDomain, _gather


def build_pages(service, g: LguestDomain) -> tuple:
    """The descriptor page and the device pages of *g*, filled in
    (``(gpa, FrameRange, readonly)``; made once per guest, rewritten on each call)."""
    if getattr(g, "pages", None) is None:
        pages = {g.desc_gpa: service.machine.alloc(1, f"lguest-desc:{g.name}")}
        for dev, gpa in zip(g.devices, g.device_gpa):
            if isinstance(dev, BlockSpec):
                pages[gpa] = service.machine.alloc(1, f"lguest-block:{g.name}")
            elif isinstance(dev, NetSpec):
                pages[gpa] = g.lans[gpa].frames
        g.pages = pages
    desc = g.pages[g.desc_gpa].buffer
    desc[:PAGE_SIZE] = bytes(PAGE_SIZE)
    for i, (dev, gpa) in enumerate(zip(g.devices, g.device_gpa)):
        if isinstance(dev, ConsoleSpec):
            entry = (abi.T_CONSOLE, 0, 0, 0, 0)
        elif isinstance(dev, BlockSpec):
            size = os.stat(dev.path).st_size
            page = g.pages[gpa].buffer
            page[:PAGE_SIZE] = bytes(PAGE_SIZE)
            abi.BLOCK.pack_into(page, 0, 0, 0, 0, abi.BLOCK_PENDING,
                                -(-size // abi.SECTOR), 0, size)
            entry = (abi.T_BLOCK, abi.DEVICE_F_RANDOMNESS, 0, 1, gpa >> 12)
        else:
            lan = g.lans[gpa]
            slot = lan.slots[g.name]
            lan.write_slot(slot, abi.net_mac(g.domid))
            entry = (abi.T_NET, slot | abi.NET_F_NOCSUM, 0, 1, gpa >> 12)
        abi.DESC.pack_into(desc, i * abi.DESC_SIZE, *entry)
    return tuple((gpa, frames, False) for gpa, frames in g.pages.items())


class Launcher:
    """What a launcher does through /dev/lguest, for one guest.  Errors are
    ``OSError`` with /dev/lguest's errno: ``EBUSY`` (initialize twice),
    ``EINVAL`` (before initialize; irq >= 32), ``ENOENT`` (no free buffer
    bound at the key; the guest is gone)."""

    def __init__(self, service, g: LguestDomain, loop_factory=None) -> None:
        self.service, self.g = service, g
        self._loop_factory = loop_factory
        self._initialized = False
        self._watch: dict[tuple, object] = {}
        self.devices: list = []
        self.dead = False

    # --- /dev/lguest ----------------------------------------------------------------
    def initialize(self) -> None:
        """LHREQ_INITIALIZE: open the devices (``OSError(EBUSY)`` the second time)."""
        if self._initialized:
            raise OSError(errno.EBUSY, "lguest: already initialized")
        self._initialized = True
        g = self.g
        for i, (dev, gpa) in enumerate(zip(g.devices, g.device_gpa)):
            if isinstance(dev, ConsoleSpec):
                self.devices.append(ConsoleDevice(self, i, dev))
            elif isinstance(dev, BlockSpec):
                self.devices.append(BlockDevice(self, i, dev, gpa))
            else:
                self.devices.append(None)          # net: served guest to guest
        for d in self.devices:
            if d is not None:
                d.start()

    def _check(self) -> None:
        if not self._initialized:
            raise OSError(errno.EINVAL, "lguest: not initialized")
        if self.dead:
            raise OSError(errno.ENOENT, "lguest: the guest is gone")

    def getdma(self, key: int) -> tuple[int, int]:
        """LHREQ_GETDMA: ``(dma GPA, irq)`` of a free entry this guest bound
        at *key*, marked busy (its used_len holds the irq until the caller
        writes the real length, e.g. with :meth:`write_dma`).  ``ENOENT`` if
        no binding or none free (the reference returns a busy one then)."""
        self._check()
        with self.service.lock:
            gpa, irq = self._free_entry(key)
            self.g.set_used_len(gpa, irq)
            return gpa, irq

    def irq(self, irq: int) -> None:
        """LHREQ_IRQ: raise lguest irq *irq* (``EINVAL`` if >= 32)."""
        self._check()
        if not 0 <= irq < abi.IRQS:
            raise OSError(errno.EINVAL, f"lguest: irq {irq} outside 0..31")
        self.g.raise_irq(irq)

    def break_(self, on: bool, timeout: float = 5.0) -> bool:
        """LHREQ_BREAK: 1 pauses the guest (its vCPUs parked; True once
        parked), 0 lets it run again."""
        self._check()
        dom = self.g.domain
        if on:
            return dom.pause(timeout)
        dom.resume()
        return True

    # --- helpers for devices --------------------------------------------------------
    def watch(self, key: int, handler) -> None:
        """Send DMAs to the private *key* to ``handler(key, dma_gpa, sections)``,
        which returns the sender's used_len (or None to leave it 0)."""
        self._watch[self.g.key_id(key)] = handler

    def write_dma(self, gpa: int, data) -> int:
        """Scatter *data* into the sections of the lguest_dma at *gpa* (the
        data first), then set its used_len to the bytes written; returns that
        count.  ``DmaError`` for a bad lguest_dma."""
        g = self.g
        with self.service.lock:
            _used, sections = g.read_dma(gpa)
            n = _scatter(g.memory, sections, memoryview(data))
            g.set_used_len(gpa, n)
            return n

    def deliver(self, key: int, data) -> tuple[int, int]:
        """Put *data* into a free entry this guest bound at *key* with
        :meth:`write_dma` (no GETDMA busy mark first: the guest would see the
        irq number as a length).  ``(bytes, irq)``; errors as :meth:`getdma`."""
        self._check()
        with self.service.lock:
            gpa, irq = self._free_entry(key)
            try:
                return self.write_dma(gpa, data), irq
            except DmaError as e:
                self.g.kill(str(e))
                raise OSError(errno.ENOENT, f"lguest: {e}") from None

    def _free_entry(self, key: int, kid: tuple | None = None) -> tuple[int, int]:
        """A free entry bound at *key*: ``(dma GPA, irq)``; ``OSError(ENOENT)``
        if none.  A binding whose array leaves guest memory kills the guest
        (as the reference's GETDMA) and counts as none."""
        g = self.g
        if kid is None:
            try:
                kid = g.key_id(key)
            except DmaError:
                raise OSError(errno.ENOENT, f"lguest: bad key {key:#x}") from None
        try:
            for b in g.bindings:
                if b is None or b.key != kid:
                    continue
                for i in range(b.num):
                    gpa = b.dmas + i * abi.DMA_SIZE
                    if g.used_len(gpa) == 0:
                        return gpa, b.irq
                raise OSError(errno.ENOENT, f"lguest: no free buffer at key {key:#x}")
        except DmaError as e:
            g.kill(str(e))
            raise OSError(errno.ENOENT, f"lguest: {e}") from None
        raise OSError(errno.ENOENT, f"lguest: nothing bound at key {key:#x}")

    def read_sections(self, sections) -> bytes:
        return _gather(self.g.memory, sections, sum(n for _, n in sections))

    def device_status(self, index: int) -> int:
        """The status the guest set on device *index* (ACKNOWLEDGE 1, DRIVER 2,
        DRIVER_OK 4, FAILED 128, ...)."""
        buf = self.g.pages[self.g.desc_gpa].buffer
        return abi.DESC.unpack_from(buf, index * abi.DESC_SIZE)[2]

    def remove_device(self, index: int) -> None:
        """Hot-unplug: set REMOVED in the device's status and raise its irq."""
        self._check()
        buf = self.g.pages[self.g.desc_gpa].buffer
        off = index * abi.DESC_SIZE + abi.DESC_STATUS
        status = int.from_bytes(buf[off:off + 2], "little") | abi.S_REMOVED
        buf[off:off + 2] = status.to_bytes(2, "little")
        self.g.raise_irq(index + 1)

    def handle_output(self, key: int, kid: tuple, dma: int, sections) -> int | None:
        """A DMA sent to the private *key* (identity *kid*): the watching
        device's result, or None."""
        handler = self._watch.get(kid)
        if handler is None:
            return None
        return handler(key, dma, sections)

    @property
    def loop(self):
        return self._loop_factory() if self._loop_factory else None

    def stopped(self) -> None:
        """The guest stopped: its LAN slots are emptied (no more sends to it)."""
        self.dead = True
        g = self.g
        for lan in g.lans.values():
            lan.write_slot(lan.slots[g.name], bytes(abi.NET_SLOT))
        for d in self.devices:
            if d is not None:
                d.stopped()

    def close(self) -> None:
        self.dead = True
        for d in self.devices:
            if d is not None:
                d.close()


class ConsoleDevice:
    """Console output to the domain's console; input into the buffer at key 0."""

    def __init__(self, launcher: Launcher, index: int, spec) -> None:
        self.l, self.index, self.spec = launcher, index, spec
        self.pending = bytearray()
        self._lock = threading.Lock()
        self._timer = None
        self._stdin = None
        launcher.watch(abi.CONSOLE_KEY, self._output)

    def _output(self, key, dma, sections) -> int:
        data = self.l.read_sections(sections)
        self.l.g.domain.console.write(data)
        return len(data)

    def start(self) -> None:
        inp = self.spec.input
        if inp is None:
            return
        if inp == "stdin":
            loop = self.l.loop
            if loop is not None:
                self._stdin = sys.stdin.fileno()
                loop.add_reader(self._stdin, self._read_stdin)
            return
        with open(inp, "rb") as f:
            self.feed(f.read())

    def _read_stdin(self) -> None:
        try:
            data = os.read(self._stdin, 4096)
        except OSError:
            data = b""
        if not data:
            self.l.loop.remove_reader(self._stdin)
            self._stdin = None
            return
        self.feed(data)

    def feed(self, data: bytes) -> None:
        """Queue console input for the guest (delivered as buffers free up)."""
        with self._lock:
            self.pending += data
        self.pump()

    def pump(self) -> None:
        """Move pending input into free buffers; retry every 2 ms while some waits."""
        with self._lock:
            self._timer = None
            while self.pending and not self.l.dead:
                try:
                    n, irq = self.l.deliver(abi.CONSOLE_KEY, self.pending)
                except (OSError, DmaError):
                    break
                if n == 0:
                    break
                del self.pending[:n]
                self.l.g.raise_irq(irq)
            if self.pending and not self.l.dead and self.l.loop is not None:
                self._timer = self.l.loop.call_later(0.002, self.pump)

    def stopped(self) -> None:
        self.close()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._stdin is not None and self.l.loop is not None:
            self.l.loop.remove_reader(self._stdin)
            self._stdin = None


class BlockDevice:
    """lguest_block_page requests over an image file (see the module docstring)."""

    def __init__(self, launcher: Launcher, index: int, spec, gpa: int) -> None:
        self.l, self.index, self.spec, self.gpa = launcher, index, spec, gpa
        self.page = launcher.g.pages[gpa].buffer
        self.fd = os.open(spec.path, (os.O_RDONLY if spec.readonly else os.O_RDWR) | os.O_CLOEXEC)
        self.size = os.fstat(self.fd).st_size
        self.end = -(-self.size // abi.SECTOR) * abi.SECTOR     # num_sectors * 512
        self.dirty = False
        self.reads = self.writes = self.errors = 0
        self.kid = launcher.g.key_id(gpa)
        launcher.watch(gpa, self._request)

    def start(self) -> None:
        pass

    def _request(self, key, dma, sections) -> int:
        kind, sector, nbytes = abi.BLOCK.unpack_from(self.page, 0)[:3]
        off = sector * abi.SECTOR
        if kind == abi.BLOCK_WRITE:
            result = self._write(off, nbytes, sections)
        elif kind == abi.BLOCK_READ:
            result = self._read(off, nbytes)
        elif kind == abi.BLOCK_FLUSH:
            self.flush()
            result = abi.BLOCK_DONE
        else:
            result = abi.BLOCK_ERROR
        if result == abi.BLOCK_ERROR:
            self.errors += 1
        abi.BLOCK.pack_into(self.page, 0, kind, sector, nbytes, result,
                            self.end // abi.SECTOR, 0, self.size)
        self.l.g.raise_irq(self.index + 1)
        return 0

    def _write(self, off: int, nbytes: int, sections) -> int:
        data = self.l.read_sections(sections)
        if self.spec.readonly or off + len(data) > self.size or len(data) != nbytes:
            return abi.BLOCK_ERROR
        os.pwrite(self.fd, data, off)
        self.dirty = True
        self.writes += 1
        return abi.BLOCK_DONE

    def _read(self, off: int, nbytes: int) -> int:
        """Into the free reply entry (no busy mark: the guest waits for the
        result, which is written after used_len), read straight into guest
        memory with preadv."""
        g = self.l.g
        try:
            reply, _irq = self.l._free_entry(self.gpa, self.kid)
        except OSError:
            return abi.BLOCK_ERROR
        if off >= self.end:
            return abi.BLOCK_ERROR
        _used, sections = g.read_dma(reply)
        want = min(nbytes, sum(n for _, n in sections), self.end - off)
        views, left = [], want
        mem = g.memory
        for addr, length in sections:
            if left <= 0:
                break
            take = min(length, left)
            views.append(mem.writable_view(addr, take))
            left -= take
        got = os.preadv(self.fd, views, off)
        if got < want:                             # the partial last sector: zeros
            pos = 0
            for v in views:
                lo = max(got - pos, 0)
                if lo < len(v):
                    v[lo:] = bytes(len(v) - lo)
                pos += len(v)
        g.set_used_len(reply, want)
        self.reads += 1
        return abi.BLOCK_DONE if want == nbytes else abi.BLOCK_ERROR

    def flush(self) -> None:
        if self.dirty:
            os.fsync(self.fd)
            self.dirty = False

    def stopped(self) -> None:
        self.flush()

    def close(self) -> None:
        if self.fd >= 0:
            self.flush()
            os.close(self.fd)
            self.fd = -1


def _scatter(mem, sections, data: memoryview) -> int:
    done = 0
    for addr, length in sections:
        take = min(length, len(data) - done)
        if take <= 0:
            break
        mem.write(addr, data[done:done + take])
        done += take
    return done
