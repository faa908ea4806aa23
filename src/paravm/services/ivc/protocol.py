"""The Tegra IVC protocol: one endpoint of a queue, on plain shared memory.

An IVC *queue* between two peers is two *channels*, one per direction.  A
channel is a 128-byte header (two 64-byte cache lines, each written by one
side only) followed by ``nframes`` frames of ``frame_size`` bytes
(specs/ivc-lguest-pvz.md §A.1.1)::

    off  size  field     written by
      0     4  w_count   the sender: frames ever written (free-running u32)
      4     4  state     the sender: its reset-handshake state (0 EST, 1 SYNC, 2 ACK)
     64     4  r_count   the receiver: frames ever consumed (free-running u32)
    128   n*fs frames    frame i at 128 + i*frame_size

An endpoint (:class:`Channel`) owns ``w_count`` and ``state`` in its *tx*
channel and ``r_count`` in its *rx* channel; it learns the peer's progress and
state from the other fields.  This module is the same protocol as Linux
``drivers/firmware/tegra/ivc.c``, U-Boot ``arch/arm/mach-tegra/ivc.c`` and
NVIDIA's downstream ``drivers/platform/tegra/tegra-ivc.c`` (the library the
Tegra hypervisor driver calls), so a Python endpoint and a guest's C endpoint
interoperate over the same bytes.

What the code relies on, and why it is built this way:

* **The peer is another CPU, and may be hostile.**  Nothing read from shared
  memory is trusted for addressing: the frame *positions* ``w_pos``/``r_pos``
  are private to this object (only :meth:`Channel.channel_sync` derives them
  from shared counters, as the downstream library does), so a frame index is
  always below ``nframes``.  Occupancy is ``(w_count - r_count) mod 2**32``;
  an over-full value (``> nframes``) reads as *empty* (the peer seems silent)
  and ``>= nframes`` as *full*.  The peer's counter is re-read from shared
  memory at every check (nothing is cached); each check takes one snapshot of
  each counter so that its comparisons agree.  Our own counters and our state
  are also re-read from shared memory before each update, as the reference
  does: a peer scribbling on them loses or repeats frames, never more.
* **Copy once.**  :meth:`Channel.read` and :meth:`Channel.read_peek` copy the
  frame out of shared memory once and return the copy; validate the copy.
  :meth:`Channel.read_get_next_frame` returns a live view into shared memory
  instead (zero-copy): the peer can change it under you (TOCTOU), so copy what
  you validate.
* **Memory ordering.**  The reference orders payload stores -> wmb -> counter
  store, counter load -> rmb -> payload loads, and counter store -> mb -> load
  of the peer's counter (the notification decision).  paravm runs on x86-64,
  whose TSO model keeps the first two orders for program-ordered stores and
  loads (every access here is a separate C call, so no compiler reorders
  them).  TSO does *not* keep a store before a later load of another address:
  without the full barrier, writer and reader can both read the other's stale
  counter and both skip the notification (a lost wake-up).  CPython has no
  fence primitive, so the barrier (:func:`_full_barrier_of`) acquires and
  releases a private, uncontended lock: glibc's semaphore fast paths are
  ``lock``-prefixed read-modify-writes, which are full barriers on x86
  (about 0.1 us).  Each counter access is one aligned 4-byte load or store
  (on a little-endian host CPython's ``struct`` uses its native routines for
  ``"<I"``, a 4-byte ``memcpy``), so the peer never sees a torn counter.
* **Notifications** are edge hints, as in the reference: a writer notifies
  only when occupancy becomes 1 (empty -> non-empty), a reader only when it
  becomes ``nframes - 1`` (full -> not full); :meth:`Channel.reset` and every
  handshake transition notify.  Spurious notifications are harmless; a peer
  must call :meth:`Channel.notified` on every one it gets, and not transfer
  until it returns 0.
* **No thread safety**, as in the reference: one endpoint is used by one
  thread at a time (callers serialise, e.g. with a lock); the peer is the
  only concurrent party.
* **Lean data path**: this is also the host endpoint's data path, so an
  operation does a few ``struct`` calls and slice copies on prepared views and
  allocates nothing but what it returns (and a temporary slice object);
  :meth:`Channel.read` and :meth:`Channel.write` inline their checks (about
  1.3 us each here, a fence included).

Where the references differ, the choice is a constructor argument: the
errno for empty/full (``ENOMEM`` as downstream, the seed's library; or
``ENOSPC`` as upstream Linux) and the handshake ``variant`` (``"upstream"``:
Linux and U-Boot, ACK -> EST on any non-SYNC peer state, with a notification;
``"oe4t"``: NVIDIA's latest downstream library, ACK+EST -> EST without one,
ACK+garbage -> nothing).  docs/ivc.md records these choices.
"""

from __future__ import annotations

import errno
import struct
import threading
from collections.abc import Callable
from typing import NamedTuple

__all__ = [
    "IVC_ALIGN", "HEADER_SIZE", "W_COUNT", "STATE", "R_COUNT",
    "ST_ESTABLISHED", "ST_SYNC", "ST_ACK", "VARIANTS",
    "align", "total_queue_size", "check_params",
    "IvcError", "Header", "read_header", "Channel",
]

IVC_ALIGN = 64
"""Alignment of channel bases, frame sizes and header lines (bytes)."""

HEADER_SIZE = 128
"""Bytes of a channel header: the sender's line, then the receiver's."""

# struct ivc_channel_header (little-endian u32s; the rest of each line is padding):
#   line 0 (sender):   u32 w_count @0; u32 state @4; u8 pad[56]
#   line 1 (receiver): u32 r_count @64; u8 pad[60]
W_COUNT = 0
STATE = 4
R_COUNT = 64

ST_ESTABLISHED = 0
ST_SYNC = 1
ST_ACK = 2

VARIANTS = ("upstream", "oe4t")

_U32_MASK = 0xFFFF_FFFF
_U32_LIMIT = 1 << 32
_INT_MAX = 0x7FFF_FFFF

_U32 = struct.Struct("<I")
_get = _U32.unpack_from
_put = _U32.pack_into


def _byte_view(data):
    """*data* (any bytes-like) as something whose len() is its byte count."""
    if type(data) is bytes or type(data) is bytearray:
        return data
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def align(x: int) -> int:
    """*x* bytes rounded up to :data:`IVC_ALIGN` (as ``tegra_ivc_align``)."""
    return (x + IVC_ALIGN - 1) & ~(IVC_ALIGN - 1)


def total_queue_size(queue_size: int) -> int:
    """Bytes of one channel whose frames take *queue_size* bytes: header + frames.

    0 if *queue_size* is not a multiple of 64, as ``tegra_ivc_total_queue_size``
    (which logs and returns 0).
    """
    if queue_size % IVC_ALIGN:
        return 0
    return queue_size + HEADER_SIZE


class IvcError(OSError):
    """An IVC operation failed; ``.errno`` is the reference's error code.

    ``ECONNRESET`` (not established), ``ENOMEM``/``ENOSPC`` (empty on read,
    full on write), ``E2BIG`` (size or offset beyond the frame), ``EINVAL``
    (bad geometry).  Raised as ``IvcError(errno.X, "message")``.
    """


def check_params(rx_off: int, tx_off: int, nframes: int, frame_size: int) -> None:
    """Check the placement of a queue's two channels; raise ``IvcError(EINVAL)``.

    *rx_off*, *tx_off* are the channels' byte offsets (or addresses) in the
    shared area.  The checks and their order are the downstream library's
    ``check_ivc_params`` (specs §A.1.1): ``nframes * frame_size >= 2**32``;
    a base not 64-aligned; ``frame_size`` not a multiple of 64; overlap.

    Stricter than the reference: the reference's overlap test ignores the
    128-byte header, so channels spaced exactly ``nframes * frame_size`` apart
    pass although they overlap.  Here the lower channel's whole
    :func:`total_queue_size` must end at or before the higher base, and two
    channels never share a base.
    """
    for name, value in (("rx_off", rx_off), ("tx_off", tx_off),
                        ("nframes", nframes), ("frame_size", frame_size)):
        if value < 0:
            raise IvcError(errno.EINVAL, f"{name} {value} is negative")
    queue = nframes * frame_size
    if queue >= _U32_LIMIT:
        raise IvcError(errno.EINVAL,
                       f"nframes * frame_size = {nframes} * {frame_size} overflows u32")
    for name, base in (("rx", rx_off), ("tx", tx_off)):
        if base % IVC_ALIGN:
            raise IvcError(errno.EINVAL,
                           f"{name} channel start {base:#x} not {IVC_ALIGN}-byte aligned")
    if frame_size % IVC_ALIGN:
        raise IvcError(errno.EINVAL,
                       f"frame size {frame_size} not a multiple of {IVC_ALIGN}")
    low, high = sorted((rx_off, tx_off))
    if low + HEADER_SIZE + queue > high:
        raise IvcError(errno.EINVAL,
                       f"channels overlap: {low:#x} + {HEADER_SIZE + queue:#x} > {high:#x}")


class Header(NamedTuple):
    """The three fields of one channel header (for dumps and tests)."""
    w_count: int
    state: int
    r_count: int


def read_header(view) -> Header:
    """The header at the start of *view* (a buffer of at least 128 bytes)."""
    return Header(_get(view, W_COUNT)[0], _get(view, STATE)[0], _get(view, R_COUNT)[0])


def _full_barrier_of(lock: threading.Lock) -> Callable[[], None]:
    acquire, release = lock.acquire, lock.release

    def _full_barrier() -> None:
        # lock cmpxchg (sem_wait) + lock xadd (sem_post): full fences on x86.
        acquire()
        release()
    return _full_barrier


class Channel:
    """One endpoint of an IVC queue: reads *rx*, writes *tx*.

    *rx*, *tx*: writable buffers (memoryview of a bytearray or an mmap) of at
    least ``total_queue_size(nframes * frame_size)`` bytes each; the peer's tx
    is our rx and vice versa.  *notify*: called with no argument to ring the
    peer (a doorbell).  *variant*: ``"upstream"`` or ``"oe4t"`` (handshake,
    see :meth:`notified`).  *empty_full_errno*: ``errno.ENOMEM`` (downstream,
    the default) or ``errno.ENOSPC`` (upstream Linux).

    Geometry errors raise ``IvcError``: ``EINVAL`` for ``nframes *
    frame_size >= 2**32``, a frame size not a multiple of 64, a negative
    value or a buffer too small; ``E2BIG`` for ``frame_size > INT_MAX``
    (as ``tegra_ivc_init``).  Placement of the two channels in one area is
    :func:`check_params`' job (views carry no address).

    Positions start at 0; they are right for an all-zero channel (state 0 is
    ESTABLISHED, so it works at once) and after a reset handshake.  Use
    :meth:`channel_sync` to adopt counters another endpoint left behind.

    Data operations raise :class:`IvcError`; predicates return ``bool``.
    Not thread-safe (as the reference): callers serialise.
    """

    __slots__ = ("_rx", "_tx", "_nframes", "_frame_size", "_notify", "_variant_oe4t",
                 "_empty_full", "_w_pos", "_r_pos", "_zeros", "_mb", "__weakref__")

    def __init__(self, rx, tx, nframes: int, frame_size: int,
                 notify: Callable[[], None], *, variant: str = "upstream",
                 empty_full_errno: int = errno.ENOMEM) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r}: expected one of {VARIANTS}")
        if empty_full_errno not in (errno.ENOMEM, errno.ENOSPC):
            raise ValueError(f"empty_full_errno {empty_full_errno}: expected ENOMEM or ENOSPC")
        if not callable(notify):
            raise TypeError("notify must be callable")
        if nframes < 0 or frame_size < 0:
            raise IvcError(errno.EINVAL, f"negative geometry {nframes} x {frame_size}")
        if nframes * frame_size >= _U32_LIMIT:
            raise IvcError(errno.EINVAL,
                           f"nframes * frame_size = {nframes} * {frame_size} overflows u32")
        if frame_size % IVC_ALIGN:
            raise IvcError(errno.EINVAL,
                           f"frame size {frame_size} not a multiple of {IVC_ALIGN}")
        if frame_size > _INT_MAX:
            raise IvcError(errno.E2BIG, f"frame size {frame_size} > INT_MAX")
        size = total_queue_size(nframes * frame_size)
        views = []
        for name, buf in (("rx", rx), ("tx", tx)):
            view = memoryview(buf)
            if view.readonly:
                raise IvcError(errno.EINVAL, f"{name} buffer is read-only")
            if view.format != "B" or view.ndim != 1:
                view = view.cast("B")
            if view.nbytes < size:
                raise IvcError(errno.EINVAL,
                               f"{name} buffer of {view.nbytes} bytes < {size} "
                               f"(total_queue_size({nframes} * {frame_size}))")
            views.append(view[:size])
        self._rx, self._tx = views
        self._nframes = nframes
        self._frame_size = frame_size
        self._notify = notify
        self._variant_oe4t = variant == "oe4t"
        self._empty_full = empty_full_errno
        self._w_pos = 0
        self._r_pos = 0
        self._zeros = memoryview(bytes(frame_size))
        self._mb = _full_barrier_of(threading.Lock())

    # -- geometry ---------------------------------------------------------------

    @property
    def nframes(self) -> int:
        return self._nframes

    @property
    def frame_size(self) -> int:
        """Bytes per frame."""
        return self._frame_size

    @property
    def variant(self) -> str:
        return "oe4t" if self._variant_oe4t else "upstream"

    def close(self) -> None:
        """Release this endpoint's views of the shared memory (so an mmap can close).

        The channel is unusable afterwards (operations raise ``ValueError``).
        """
        self._rx.release()
        self._tx.release()
        self._zeros.release()

    def __repr__(self) -> str:
        return (f"Channel(nframes={self._nframes}, frame_size={self._frame_size}, "
                f"variant={self.variant!r}, w_pos={self._w_pos}, r_pos={self._r_pos})")

    # -- checks (errno or 0; never raise) ---------------------------------------

    def _read_status(self) -> int:
        """0 if a frame can be read, else ECONNRESET or the empty errno.

        Our state is checked first (local state only, as the reference); then
        one snapshot of each counter: over-full (a lying peer) reads as empty.
        """
        if _get(self._tx, STATE)[0] != ST_ESTABLISHED:
            return errno.ECONNRESET
        rx = self._rx
        avail = (_get(rx, W_COUNT)[0] - _get(rx, R_COUNT)[0]) & _U32_MASK
        if avail == 0 or avail > self._nframes:
            return self._empty_full
        return 0

    def _write_status(self) -> int:
        """0 if a frame can be written, else ECONNRESET or the full errno."""
        tx = self._tx
        if _get(tx, STATE)[0] != ST_ESTABLISHED:
            return errno.ECONNRESET
        if ((_get(tx, W_COUNT)[0] - _get(tx, R_COUNT)[0]) & _U32_MASK) >= self._nframes:
            return self._empty_full
        return 0

    @staticmethod
    def _read_error(code: int, what: str) -> IvcError:
        why = "not established" if code == errno.ECONNRESET else "rx channel empty"
        return IvcError(code, f"IVC {what}: {why}")

    @staticmethod
    def _write_error(code: int, what: str) -> IvcError:
        why = "not established" if code == errno.ECONNRESET else "tx channel full"
        return IvcError(code, f"IVC {what}: {why}")

    def _too_big(self, what: str, off: int, count: int) -> IvcError:
        return IvcError(errno.E2BIG,
                        f"IVC {what}: offset {off} + {count} bytes beyond frame of "
                        f"{self._frame_size}")

    # -- counters ---------------------------------------------------------------

    def _advance_rx(self) -> None:
        """Consume the frame at r_pos; notify on full -> not full."""
        rx = self._rx
        r = (_get(rx, R_COUNT)[0] + 1) & _U32_MASK      # re-read ours, as the reference
        _put(rx, R_COUNT, r)
        pos = self._r_pos + 1
        self._r_pos = 0 if pos == self._nframes else pos
        self._mb()
        # w_count only grows concurrently: the worst case is a spurious notify.
        if ((_get(rx, W_COUNT)[0] - r) & _U32_MASK) == self._nframes - 1:
            self._notify()

    def _advance_tx(self) -> None:
        """Publish the frame at w_pos; notify on empty -> non-empty."""
        tx = self._tx
        w = (_get(tx, W_COUNT)[0] + 1) & _U32_MASK      # re-read ours, as the reference
        _put(tx, W_COUNT, w)
        pos = self._w_pos + 1
        self._w_pos = 0 if pos == self._nframes else pos
        self._mb()
        # r_count only grows concurrently: the worst case is a spurious notify.
        if ((w - _get(tx, R_COUNT)[0]) & _U32_MASK) == 1:
            self._notify()

    # -- the reset handshake (specs §A.1.2) -------------------------------------

    @property
    def established(self) -> bool:
        """True iff our state (in our tx header) is ESTABLISHED."""
        return _get(self._tx, STATE)[0] == ST_ESTABLISHED

    def reset(self) -> None:
        """Start the reset handshake: our state = SYNC, then notify the peer.

        Counters are left alone (the peer's notified() and ours clear them).
        Data operations raise ``ECONNRESET`` until :meth:`notified` returns 0.
        As ``tegra_ivc_channel_reset``.
        """
        _put(self._tx, STATE, ST_SYNC)
        self._notify()

    def _clear_counters(self) -> None:
        # The peer is in SYNC or ACK and does not use these now.
        _put(self._tx, W_COUNT, 0)
        _put(self._rx, R_COUNT, 0)
        self._w_pos = 0
        self._r_pos = 0

    def notified(self) -> int:
        """Advance the handshake on a notification; 0 if established, else ``-EAGAIN``.

        As ``tegra_ivc_channel_notified``; returns a code (not raising) because
        clients call it on every notification and loop until it is 0.  Table
        (local = our state, remote = the peer's, read once):

        =====  ==========  =======================================================
        local  remote      action
        =====  ==========  =======================================================
        any    SYNC        clear our counters and positions; ACK; notify
        SYNC   ACK         clear our counters and positions; EST; notify
        ACK    EST         EST; notify ("upstream") / no notify ("oe4t")
        ACK    ACK         EST; notify
        ACK    other       EST; notify ("upstream") / nothing ("oe4t")
        other  other       nothing
        =====  ==========  =======================================================
        """
        tx = self._tx
        remote = _get(self._rx, STATE)[0]
        if remote == ST_SYNC:
            self._clear_counters()
            _put(tx, STATE, ST_ACK)
            self._notify()
        else:
            local = _get(tx, STATE)[0]
            if local == ST_SYNC:
                if remote == ST_ACK:
                    self._clear_counters()
                    _put(tx, STATE, ST_ESTABLISHED)
                    self._notify()
            elif local == ST_ACK:
                if not self._variant_oe4t or remote == ST_ACK:
                    _put(tx, STATE, ST_ESTABLISHED)
                    self._notify()
                elif remote == ST_ESTABLISHED:
                    # The peer is already established: no need to ring it.
                    _put(tx, STATE, ST_ESTABLISHED)
        return 0 if _get(tx, STATE)[0] == ST_ESTABLISHED else -errno.EAGAIN

    def channel_sync(self) -> None:
        """Adopt the shared counters as positions (downstream ``tegra_ivc_channel_sync``).

        ``w_pos = tx.w_count % nframes``, ``r_pos = rx.r_count % nframes``: for an
        endpoint re-attaching to a channel it used before (e.g. across a
        reboot) without a reset.  The counters are the only shared values ever
        turned into positions, and only here; the result is below nframes.
        ``IvcError(EINVAL)`` if nframes is 0.
        """
        n = self._nframes
        if n == 0:
            raise IvcError(errno.EINVAL, "channel_sync: nframes is 0")
        self._w_pos = _get(self._tx, W_COUNT)[0] % n
        self._r_pos = _get(self._rx, R_COUNT)[0] % n

    # -- predicates ---------------------------------------------------------------

    def can_read(self) -> bool:
        """A frame is waiting and we are established (``tegra_ivc_can_read``)."""
        return self._read_status() == 0

    def can_write(self) -> bool:
        """A frame is free and we are established (``tegra_ivc_can_write``)."""
        return self._write_status() == 0

    def tx_empty(self) -> bool:
        """The peer consumed all we sent (over-full counts as empty); state not checked."""
        tx = self._tx
        avail = (_get(tx, W_COUNT)[0] - _get(tx, R_COUNT)[0]) & _U32_MASK
        return avail == 0 or avail > self._nframes

    def tx_frames_available(self) -> int:
        """``nframes - (w_count - r_count)`` in u32 arithmetic, unprotected.

        As ``tegra_ivc_tx_frames_available``: a lying peer makes it wrap to a
        huge value, so do not size anything by it.
        """
        tx = self._tx
        return (self._nframes - (_get(tx, W_COUNT)[0] - _get(tx, R_COUNT)[0])) & _U32_MASK

    # -- reading ------------------------------------------------------------------

    def read(self, size: int | None = None) -> bytes:
        """Consume the next frame and return its first *size* bytes (a copy;
        the whole frame when *size* is None).

        Frames carry no length: exactly *size* bytes are returned and the rest
        of the frame is dropped.  Raises ``E2BIG`` if *size* > frame_size (or
        negative), then ``ECONNRESET`` / empty.  Notifies the peer if the
        channel was full.  As ``tegra_ivc_read``.
        """
        fs = self._frame_size
        if size is None:
            size = fs
        elif size > fs or size < 0:
            raise self._too_big("read", 0, size)
        code = self._read_status()
        if code:
            raise self._read_error(code, "read")
        off = HEADER_SIZE + self._r_pos * fs
        data = self._rx[off:off + size].tobytes()
        self._advance_rx()
        return data

    def read_into(self, buf) -> int:
        """Consume the next frame into *buf* (its first ``len(buf)`` bytes); return that count.

        As :meth:`read` with ``size = nbytes of buf`` (``E2BIG`` if larger than a
        frame), without allocating the result.
        """
        dst = memoryview(buf)
        if dst.format != "B" or dst.ndim != 1:
            dst = dst.cast("B")
        n = dst.nbytes
        fs = self._frame_size
        if n > fs:
            raise self._too_big("read_into", 0, n)
        code = self._read_status()
        if code:
            raise self._read_error(code, "read_into")
        off = HEADER_SIZE + self._r_pos * fs
        dst[:] = self._rx[off:off + n]
        self._advance_rx()
        return n

    def read_peek(self, offset: int, count: int) -> bytes:
        """Copy *count* bytes at *offset* of the next frame, without consuming it.

        ``E2BIG`` if ``offset > frame_size or count > frame_size - offset`` (or
        either is negative); then ``ECONNRESET`` / empty.  No notification.
        Returns the bytes (the reference returns the count; the seed says 0).
        """
        fs = self._frame_size
        if offset < 0 or count < 0 or offset > fs or count > fs - offset:
            raise self._too_big("read_peek", offset, count)
        code = self._read_status()
        if code:
            raise self._read_error(code, "read_peek")
        off = HEADER_SIZE + self._r_pos * fs + offset
        return self._rx[off:off + count].tobytes()

    def read_get_next_frame(self) -> memoryview:
        """A read-only view of the whole next rx frame, in shared memory (zero-copy).

        TOCTOU: the peer can change these bytes at any time; copy before you
        validate.  The view stays pointed at that slot after
        :meth:`read_advance`, when the peer may reuse it.  Raises
        ``ECONNRESET`` / empty.
        """
        code = self._read_status()
        if code:
            raise self._read_error(code, "read_get_next_frame")
        fs = self._frame_size
        off = HEADER_SIZE + self._r_pos * fs
        return self._rx[off:off + fs].toreadonly()

    def read_advance(self) -> None:
        """Consume the next frame (after :meth:`read_get_next_frame`); notify as :meth:`read`.

        Checks readability again, as the reference ("to catch programming
        errors"): ``ECONNRESET`` / empty.
        """
        code = self._read_status()
        if code:
            raise self._read_error(code, "read_advance")
        self._advance_rx()

    # -- writing ------------------------------------------------------------------

    def write(self, data) -> int:
        """Send *data* (bytes-like, at most frame_size bytes) as one frame; return its length.

        The rest of the frame is zeroed.  Raises ``E2BIG`` if too long, then
        ``ECONNRESET`` / full.  Notifies the peer if the channel was empty.
        As ``tegra_ivc_write``.
        """
        data = _byte_view(data)
        n = len(data)
        fs = self._frame_size
        if n > fs:
            raise self._too_big("write", 0, n)
        code = self._write_status()
        if code:
            raise self._write_error(code, "write")
        off = HEADER_SIZE + self._w_pos * fs
        tx = self._tx
        tx[off:off + n] = data
        if n != fs:
            tx[off + n:off + fs] = self._zeros[n:]
        self._advance_tx()
        return n

    def write_poke(self, data, offset: int) -> int:
        """Copy *data* into the next tx frame at *offset*, without sending it; return its length.

        Bounds as :meth:`read_peek` (``E2BIG``); then ``ECONNRESET`` / full.
        Send the frame with :meth:`write_advance`.
        """
        data = _byte_view(data)
        n = len(data)
        fs = self._frame_size
        if offset < 0 or offset > fs or n > fs - offset:
            raise self._too_big("write_poke", offset, n)
        code = self._write_status()
        if code:
            raise self._write_error(code, "write_poke")
        off = HEADER_SIZE + self._w_pos * fs + offset
        self._tx[off:off + n] = data
        return n

    def write_get_next_frame(self) -> memoryview:
        """A writable view of the whole next tx frame, in shared memory (zero-copy).

        Its contents are whatever the slot held (not zeroed).  Fill it, then
        :meth:`write_advance`.  Raises ``ECONNRESET`` / full.
        """
        code = self._write_status()
        if code:
            raise self._write_error(code, "write_get_next_frame")
        fs = self._frame_size
        off = HEADER_SIZE + self._w_pos * fs
        return self._tx[off:off + fs]

    def write_advance(self) -> None:
        """Send the next tx frame as it stands; notify as :meth:`write`.

        Raises ``ECONNRESET`` / full.
        """
        code = self._write_status()
        if code:
            raise self._write_error(code, "write_advance")
        self._advance_tx()
