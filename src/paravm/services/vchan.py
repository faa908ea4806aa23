"""vchan: libxenvchan's byte-stream channel, for the host side (domain 0).

A vchan is one shared *control page* and two byte rings (specs/grant-mpt.md
§D1.6, §D2.9; Xen ``tools/libs/vchan``), set up with grants and one event
channel, found through xenstore.  The guest SDK has the same protocol in C
(``guest/include/paravm/vchan.h``), so a guest and the host, or two guests,
talk over it.

Control page (little endian)::

    0  left.cons  u32    4 left.prod  u32    left ring: the client writes
    8  right.cons u32   12 right.prod u32    right ring: the server writes
   16  left_order u16   18 right_order u16   ring size = 2**order bytes
   20  cli_live   u8    21 srv_live   u8     0 gone, 1 live, 2 client not yet there
   22  cli_notify u8    23 srv_notify u8     VCHAN_NOTIFY_WRITE 1, _READ 2
   24  grants[]   u32                        ring pages: left's, then right's

Order 10 is a 1 KiB ring inside the control page at 1024, order 11 a 2 KiB
ring at 2048, orders 12..20 are separately granted pages.

* **Server** (the granter): binds an unbound port for the client, shares
  the control page with the unmap notification {clear ``srv_live``, send
  the event}, fills in the orders, ``cli_live = 2``, ``srv_live = 1``,
  ``cli_notify = WRITE``, shares the ring pages read-write, and publishes
  ``<path>/ring-ref`` and ``<path>/event-channel`` readable by the client.
* **Client**: reads both keys, binds the port, maps the control page with
  the notification {clear ``cli_live``, send the event}, checks the orders
  (10..20, not both the same in-page order), maps the left ring read-write
  and the right ring read-only, sets ``cli_live = 1`` and ``srv_notify =
  WRITE`` and wakes the server.
* **Notification**: a side that wants to be told sets a bit in the byte its
  *peer* acts on (the server sets ``cli_notify``, the client ``srv_notify``),
  then re-reads the indexes; after moving an index a side fetch-and-clears
  that bit in its own byte and sends the event only if it was set.
* Indexes are free-running u32; ``prod - cons`` greater than the ring
  size (a hostile peer) reads as 0 data / 0 space, as libxenvchan: the
  channel stalls, nothing outside the ring is touched.
"""

from __future__ import annotations

import ctypes
import selectors
import struct

from ..memory import atomic

VCHAN_NOTIFY_WRITE = 0x1
VCHAN_NOTIFY_READ = 0x2
SMALL_RING_SHIFT, LARGE_RING_SHIFT = 10, 11
SMALL_RING_OFFSET, LARGE_RING_OFFSET = 1024, 2048
MAX_RING_SHIFT = 20
PAGE_SHIFT = 12

OFF_LEFT, OFF_RIGHT = 0, 8             # struct ring_shared {cons, prod}
OFF_LEFT_ORDER, OFF_RIGHT_ORDER = 16, 18
OFF_CLI_LIVE, OFF_SRV_LIVE = 20, 21
OFF_CLI_NOTIFY, OFF_SRV_NOTIFY = 22, 23
OFF_GRANTS = 24
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")


class VchanError(OSError):
    """Set-up failed or the channel is closed (errno as the cause says)."""


def _min_order(size: int) -> int:
    order = PAGE_SHIFT
    while size > 1 << order:
        order += 1
    return order


def ring_orders(left_min: int, right_min: int) -> tuple[int, int]:
    """The ring orders libxenvchan's server picks for at least *left_min* /
    *right_min* bytes: in-page rings where they fit (one 1 KiB, one 2 KiB),
    otherwise whole pages.  ``ValueError`` above 1 MiB."""
    if left_min > 1 << MAX_RING_SHIFT or right_min > 1 << MAX_RING_SHIFT:
        raise ValueError("a vchan ring is at most 1 MiB")
    left, right = _min_order(left_min), _min_order(right_min)
    small, large = 1 << SMALL_RING_SHIFT, 1 << LARGE_RING_SHIFT
    if left_min <= small and right_min <= large:
        return SMALL_RING_SHIFT, LARGE_RING_SHIFT
    if left_min <= large and right_min <= small:
        return LARGE_RING_SHIFT, SMALL_RING_SHIFT
    if left_min <= large:
        return LARGE_RING_SHIFT, right
    if right_min <= large:
        return left, LARGE_RING_SHIFT
    return left, right


def _pages(order: int) -> int:
    return 1 << (order - PAGE_SHIFT) if order >= PAGE_SHIFT else 0


def _addr(view: memoryview) -> int:
    probe = ctypes.c_char.from_buffer(view)
    try:
        return ctypes.addressof(probe)
    finally:
        del probe


class Vchan:
    """One end of a vchan over mapped pages.  Use :meth:`server` or
    :meth:`client`; *blocking* reads/writes wait on the event channel.
    Not thread-safe: one user per end, as libxenvchan."""

    def __init__(self, *, is_server: bool, ctrl: memoryview, read_buf: memoryview,
                 write_buf: memoryview, evtchn, port: int, closers: list,
                 blocking: bool = True) -> None:
        self.is_server = is_server
        self.ctrl = ctrl
        self._ctrl_addr = _addr(ctrl)
        self.read_buf, self.write_buf = read_buf, write_buf
        self.read_size, self.write_size = len(read_buf), len(write_buf)
        rd, wr = (OFF_LEFT, OFF_RIGHT) if is_server else (OFF_RIGHT, OFF_LEFT)
        self._rd_shr, self._wr_shr = rd, wr
        # A side requests by setting the byte the peer acts on; it acts on its own.
        self._request_off = OFF_CLI_NOTIFY if is_server else OFF_SRV_NOTIFY
        self._act_off = OFF_SRV_NOTIFY if is_server else OFF_CLI_NOTIFY
        self.evtchn, self.port = evtchn, port
        self.blocking = blocking
        self._closers = closers
        self._sel = selectors.DefaultSelector()
        self._sel.register(evtchn.fileno(), selectors.EVENT_READ)
        self.closed = False

    # --- set-up -----------------------------------------------------------------------------
    @classmethod
    def server(cls, hv, domid: int, path: str, left_min: int = 1024, right_min: int = 2048,
               **kw) -> "Vchan":
        """Serve a vchan to guest *domid* at xenstore *path* (absolute, or
        relative to the host's home ``/local/domain/0``): the host reads the
        left ring (*left_min* bytes at least), writes the right one."""
        from .grant.abi import UNMAP_NOTIFY_CLEAR_BYTE, UNMAP_NOTIFY_SEND_EVENT
        from .grant.gntalloc import Gntalloc
        left, right = ring_orders(left_min, right_min)
        closers: list = []
        try:
            ev = hv.evtchn.open()
            closers.append(ev.close)
            port = ev.bind_unbound_port(domid)
            shr = Gntalloc(hv.grant)
            closers.append(shr.close)
            index, (ring_ref,) = shr.alloc_gref(domid, 1, True)
            ctrl = shr.mmap(index, 1)
            shr.set_unmap_notify(index + OFF_SRV_LIVE,
                                 UNMAP_NOTIFY_CLEAR_BYTE | UNMAP_NOTIFY_SEND_EVENT, port)
            ctrl[:] = bytes(len(ctrl))
            _U16.pack_into(ctrl, OFF_LEFT_ORDER, left)
            _U16.pack_into(ctrl, OFF_RIGHT_ORDER, right)
            grants: list[int] = []
            bufs = []
            for order in (left, right):
                if order == SMALL_RING_SHIFT:
                    bufs.append(ctrl[SMALL_RING_OFFSET:SMALL_RING_OFFSET + 1024])
                elif order == LARGE_RING_SHIFT:
                    bufs.append(ctrl[LARGE_RING_OFFSET:LARGE_RING_OFFSET + 2048])
                else:
                    i, refs = shr.alloc_gref(domid, _pages(order), True)
                    grants += refs
                    bufs.append(shr.mmap(i, _pages(order)))
            for k, ref in enumerate(grants):
                _U32.pack_into(ctrl, OFF_GRANTS + 4 * k, ref)
            ctrl[OFF_CLI_LIVE], ctrl[OFF_SRV_LIVE] = 2, 1
            ctrl[OFF_CLI_NOTIFY] = VCHAN_NOTIFY_WRITE
            path = path if path.startswith("/") else f"/local/domain/0/{path}"
            hv.xenstore.write(f"{path}/ring-ref", str(ring_ref), reader=domid)
            hv.xenstore.write(f"{path}/event-channel", str(port), reader=domid)
            closers.append(lambda: _rm_quietly(hv.xenstore, path))
            return cls(is_server=True, ctrl=ctrl, read_buf=bufs[0], write_buf=bufs[1],
                       evtchn=ev, port=port, closers=closers, **kw)
        except BaseException:
            _close_all(closers)
            raise

    @classmethod
    def client(cls, hv, domid: int, path: str, *, timeout: float = 10.0, **kw) -> "Vchan":
        """Connect to the vchan guest *domid* serves at xenstore *path*
        (waiting up to *timeout* s for it to appear).  ``VchanError`` (EINVAL)
        for orders out of range."""
        from .grant.abi import UNMAP_NOTIFY_CLEAR_BYTE, UNMAP_NOTIFY_SEND_EVENT
        from .grant.gntdev import Gntdev
        try:
            ring_ref = int(hv.xenstore.wait(f"{path}/ring-ref", timeout))
            remote_port = int(hv.xenstore.wait(f"{path}/event-channel", timeout))
        except ValueError:
            raise VchanError(22, f"{path}: ring-ref / event-channel are not numbers") from None
        closers: list = []
        try:
            ev = hv.evtchn.open()
            closers.append(ev.close)
            port = ev.bind_interdomain(domid, remote_port)
            dev = Gntdev(hv.grant)
            closers.append(dev.close)
            index = dev.map_grant_refs([(domid, ring_ref)])
            ctrl = dev.mmap(index, 1, writable=True)
            dev.set_unmap_notify(index + OFF_CLI_LIVE,
                                 UNMAP_NOTIFY_CLEAR_BYTE | UNMAP_NOTIFY_SEND_EVENT, port)
            wr_order = _U16.unpack_from(ctrl, OFF_LEFT_ORDER)[0]
            rd_order = _U16.unpack_from(ctrl, OFF_RIGHT_ORDER)[0]
            for o in (wr_order, rd_order):
                if not SMALL_RING_SHIFT <= o <= MAX_RING_SHIFT:
                    raise VchanError(22, f"vchan ring order {o} outside 10..20")
            if wr_order == rd_order and wr_order < PAGE_SHIFT:
                raise VchanError(22, "both rings in the same part of the control page")
            grants = iter(_U32.unpack_from(ctrl, OFF_GRANTS + 4 * k)[0]
                          for k in range((4096 - OFF_GRANTS) // 4))
            bufs = []
            for order, writable in ((wr_order, True), (rd_order, False)):
                if order == SMALL_RING_SHIFT:
                    bufs.append(ctrl[SMALL_RING_OFFSET:SMALL_RING_OFFSET + 1024])
                elif order == LARGE_RING_SHIFT:
                    bufs.append(ctrl[LARGE_RING_OFFSET:LARGE_RING_OFFSET + 2048])
                else:
                    n = _pages(order)
                    refs = [(domid, next(grants)) for _ in range(n)]
                    i = dev.map_grant_refs(refs)
                    bufs.append(dev.mmap(i, n, writable=writable))
            ctrl[OFF_CLI_LIVE] = 1
            ctrl[OFF_SRV_NOTIFY] = VCHAN_NOTIFY_WRITE
            ev.notify(port)
            return cls(is_server=False, ctrl=ctrl, read_buf=bufs[1], write_buf=bufs[0],
                       evtchn=ev, port=port, closers=closers, **kw)
        except BaseException:
            _close_all(closers)
            raise

    # --- the protocol ---------------------------------------------------------------------------
    def _u32(self, off: int) -> int:
        return _U32.unpack_from(self.ctrl, off)[0]

    def _request_notify(self, bit: int) -> None:
        atomic.fetch_or_u8(self._ctrl_addr + self._request_off, bit)

    def _send_notify(self, bit: int) -> None:
        if atomic.fetch_and_u8(self._ctrl_addr + self._act_off, ~bit & 0xFF) & bit:
            self.evtchn.notify(self.port)

    def _data_ready(self) -> int:
        ready = (self._u32(self._rd_shr + 4) - self._u32(self._rd_shr)) & 0xFFFFFFFF
        return 0 if ready > self.read_size else ready

    def _space(self) -> int:
        used = (self._u32(self._wr_shr + 4) - self._u32(self._wr_shr)) & 0xFFFFFFFF
        space = (self.write_size - used) & 0xFFFFFFFF
        return 0 if space > self.write_size else space

    def _readable(self, want: int) -> int:
        """Bytes readable; if fewer than *want*, ask to be told of more and
        look again (a write between the two reads would otherwise be missed:
        libxenvchan's fast_get_data_ready)."""
        avail = self._data_ready()
        if avail < want:
            self._request_notify(VCHAN_NOTIFY_WRITE)
            avail = self._data_ready()
        return avail

    def _writable(self, want: int) -> int:
        """As :meth:`_readable`, for space in the write ring."""
        avail = self._space()
        if avail < want:
            self._request_notify(VCHAN_NOTIFY_READ)
            avail = self._space()
        return avail

    def data_ready(self) -> int:
        """Bytes readable now (asks to be told when more arrive)."""
        self._request_notify(VCHAN_NOTIFY_WRITE)
        return self._data_ready()

    def buffer_space(self) -> int:
        """Bytes writable now (asks to be told when space frees up)."""
        self._request_notify(VCHAN_NOTIFY_READ)
        return self._space()

    def is_open(self) -> bool:
        """The peer is there: ``cli_live`` for the server (2, not yet
        connected, counts as open, as libxenvchan), ``srv_live`` for the client."""
        return bool(self.ctrl[OFF_CLI_LIVE if self.is_server else OFF_SRV_LIVE]) \
            and not self.closed

    def fileno(self) -> int:
        """The event channel's fd: readable when the peer notified."""
        return self.evtchn.fileno()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the peer's next notification (True) or *timeout* s (False)."""
        if not self._sel.select(timeout):
            return False
        port = self.evtchn.pending()
        if port is not None:
            self.evtchn.unmask(port)
        return True

    def write(self, data) -> int:
        """Write all of *data* (blocking) or as much as fits (non-blocking);
        bytes written.  ``VchanError`` (EPIPE) once the peer is gone."""
        mv = memoryview(data).cast("B")
        pos = 0
        while True:
            if not self.is_open():
                raise VchanError(32, "vchan peer gone")
            n = min(self._writable(len(mv) - pos), len(mv) - pos)
            if n:
                self._put(mv[pos:pos + n])
                pos += n
            if pos == len(mv) or not self.blocking:
                return pos
            self.wait(0.1)

    def read(self, size: int) -> bytes:
        """Up to *size* bytes, at least one (blocking) or ``b""`` (non-blocking,
        nothing there); ``b""`` too once the peer is gone and the ring is empty."""
        while True:
            avail = self._readable(1)
            if avail:
                return self._get(min(avail, size))
            if not self.is_open() or not self.blocking:
                return b""
            self.wait(0.1)

    def recv_into(self, out) -> int:
        """Fill *out* (a writable buffer) completely, waiting as needed;
        bytes received (fewer only if the peer went away)."""
        mv = memoryview(out).cast("B")
        pos = 0
        while pos < len(mv):
            avail = self._readable(1)
            if avail:
                pos += self._get_into(mv[pos:pos + min(avail, len(mv) - pos)])
                continue
            if not self.is_open():
                break
            self.wait(0.1)
        return pos

    def _put(self, mv: memoryview) -> None:
        prod = self._u32(self._wr_shr + 4)
        idx = prod & (self.write_size - 1)
        first = min(len(mv), self.write_size - idx)
        self.write_buf[idx:idx + first] = mv[:first]
        if first < len(mv):
            self.write_buf[:len(mv) - first] = mv[first:]
        _U32.pack_into(self.ctrl, self._wr_shr + 4, (prod + len(mv)) & 0xFFFFFFFF)
        self._send_notify(VCHAN_NOTIFY_WRITE)

    def _get(self, n: int) -> bytes:
        out = bytearray(n)
        self._get_into(memoryview(out))
        return bytes(out)

    def _get_into(self, mv: memoryview) -> int:
        n = len(mv)
        cons = self._u32(self._rd_shr)
        idx = cons & (self.read_size - 1)
        first = min(n, self.read_size - idx)
        mv[:first] = self.read_buf[idx:idx + first]
        if first < n:
            mv[first:] = self.read_buf[:n - first]
        _U32.pack_into(self.ctrl, self._rd_shr, (cons + n) & 0xFFFFFFFF)
        self._send_notify(VCHAN_NOTIFY_READ)
        return n

    def close(self) -> None:
        """Mark this side gone, unmap (firing the unmap notification: the
        peer sees the live byte cleared and gets the event), unbind."""
        if self.closed:
            return
        self.closed = True
        try:
            self.ctrl[OFF_SRV_LIVE if self.is_server else OFF_CLI_LIVE] = 0
            self.evtchn.notify(self.port)
        except (OSError, ValueError):
            pass
        self._sel.close()
        for v in (self.read_buf, self.write_buf, self.ctrl):
            v.release()
        _close_all(self._closers)

    def __enter__(self) -> "Vchan":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _rm_quietly(store, path: str) -> None:
    try:
        store.rm(path)
    except OSError:
        pass


def _close_all(closers: list) -> None:
    for fn in reversed(closers):
        try:
            fn()
        except Exception:  # noqa: BLE001 - tear down the rest regardless
            pass
    closers.clear()
