"""The host's end of an IVC queue: the same operations as a guest's cookie, in Python.

The host is domain 0. Its end of a queue is a :class:`~.protocol.Channel` over
the VMM's own mapping of the shared area (zero copy: the guest's frames are
these bytes). The guest rings the host through an ioeventfd whose eventfd is
:meth:`HostEndpoint.fileno` (readable when rung), so an endpoint works with
``selectors``, ``asyncio`` (``loop.add_reader``) and the Hypervisor's event
loop; the host rings the guest by writing the guest end's irqfd.
"""

from __future__ import annotations

import errno
import os
import select
import time

from .protocol import Channel, IvcError


class HostEndpoint:
    """Host end of queue *qid* of an :class:`~.vmm.IvcService` (made before
    or after its guest peer is attached).  Data calls are :class:`~.protocol.Channel`'s (they
    raise :class:`~.protocol.IvcError`); not thread-safe."""

    def __init__(self, service, qid: int, **channel_options) -> None:
        end = service.host_end(qid)
        q = end.queue
        rx, tx = q.channel_views(end)
        self.qid = qid
        self.peer_vmid = end.peer.vmid
        self.nframes, self.frame_size = q.spec.nframes, q.spec.frame_size
        self._fd = service.eventfd_of(end)
        self._service, self._peer = service, end.peer
        self.channel = Channel(rx, tx, self.nframes, self.frame_size, self._ring,
                               **channel_options)
        # as tegra_hv at queue add time: adopt the counters found in memory
        self.channel.channel_sync()

    def _ring(self) -> None:
        self._service.ring(self._peer)

    def fileno(self) -> int:
        """Readable when the guest rang this end."""
        return self._fd

    def ack(self) -> int:
        """Consume pending rings; how many there were (0 if none)."""
        try:
            return os.eventfd_read(self._fd)
        except BlockingIOError:
            return 0

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the guest rings (True) or *timeout* s pass (False);
        then run the handshake step (:meth:`notified`)."""
        r, _, _ = select.select([self._fd], [], [], timeout)
        if not r:
            return False
        self.ack()
        self.channel.notified()
        return True

    def establish(self, timeout: float = 5.0) -> None:
        """Reset the queue and wait until the handshake with the guest ends;
        ``IvcError(ETIMEDOUT)`` if it does not within *timeout* s."""
        self.channel.reset()
        deadline = time.monotonic() + timeout
        while self.channel.notified() != 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise IvcError(errno.ETIMEDOUT, f"IVC queue {self.qid}: no handshake")
            self.wait(left)

    def read_wait(self, size: int | None = None, timeout: float | None = None) -> bytes:
        """Read one frame, waiting for one up to *timeout* s (``IvcError(ETIMEDOUT)``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.channel.can_read():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise IvcError(errno.ETIMEDOUT, f"IVC queue {self.qid}: nothing to read")
            self.wait(left)
        return self.channel.read(self.frame_size if size is None else size)

    def write_wait(self, data, timeout: float | None = None) -> int:
        """Write one frame, waiting for room up to *timeout* s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.channel.can_write():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise IvcError(errno.ETIMEDOUT, f"IVC queue {self.qid}: no room")
            self.wait(left)
        return self.channel.write(data)

    def __getattr__(self, name):
        # read, write, read_peek, write_poke, get_next_frame, advance, can_*,
        # tx_empty, reset, notified ... as the cookie API
        return getattr(self.channel, name)
