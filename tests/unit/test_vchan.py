"""vchan's ring protocol (libxenvchan layout) over plain memory, no KVM."""

import os
import struct
import threading

import mmap
import pytest

from paravm.services import vchan as V


class FakeEvtchn:
    """One end of an interdomain channel: notify() makes the peer's fd readable."""

    def __init__(self):
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.peer = None
        self.sent = 0

    def fileno(self):
        return self.fd

    def notify(self, port):
        self.sent += 1
        os.eventfd_write(self.peer.fd, 1)

    def pending(self):
        try:
            os.eventfd_read(self.fd)
            return 1
        except BlockingIOError:
            return None

    def unmask(self, port):
        pass

    def close(self):
        os.close(self.fd)


def pair(left_min=1024, right_min=2048):
    """A server and a client over one anonymous 'control page' and ring pages."""
    left, right = V.ring_orders(left_min, right_min)
    page = mmap.mmap(-1, 4096)
    ctrl = memoryview(page)
    struct.pack_into("<HH", ctrl, V.OFF_LEFT_ORDER, left, right)
    ctrl[V.OFF_CLI_LIVE], ctrl[V.OFF_SRV_LIVE] = 2, 1
    ctrl[V.OFF_CLI_NOTIFY] = V.VCHAN_NOTIFY_WRITE

    pages = {"l": mmap.mmap(-1, 1 << left), "r": mmap.mmap(-1, 1 << right)}

    def ring(side, view):      # each side has its own views, as two mappings would
        order = left if side == "l" else right
        if order == V.SMALL_RING_SHIFT:
            return view[1024:2048]
        if order == V.LARGE_RING_SHIFT:
            return view[2048:4096]
        return memoryview(pages[side])

    es, ec = FakeEvtchn(), FakeEvtchn()
    es.peer, ec.peer = ec, es
    srv = V.Vchan(is_server=True, ctrl=ctrl, read_buf=ring("l", ctrl),
                  write_buf=ring("r", ctrl), evtchn=es, port=1, closers=[es.close])
    cview = memoryview(page)
    cview[V.OFF_CLI_LIVE] = 1
    cview[V.OFF_SRV_NOTIFY] = V.VCHAN_NOTIFY_WRITE
    cli = V.Vchan(is_server=False, ctrl=cview, read_buf=ring("r", cview),
                  write_buf=ring("l", cview), evtchn=ec, port=1, closers=[ec.close])
    return srv, cli


def test_ring_orders_follow_libxenvchan():
    assert V.ring_orders(1024, 2048) == (10, 11)
    assert V.ring_orders(2048, 1024) == (11, 10)
    assert V.ring_orders(2048, 8192) == (11, 13)
    assert V.ring_orders(65536, 4096) == (16, 12)
    with pytest.raises(ValueError):
        V.ring_orders(2 << 20, 1024)


@pytest.mark.parametrize("sizes", [(1024, 2048), (2048, 1024), (8192, 65536), (4096, 4096)])
def test_bytes_cross_both_rings_with_wraparound(sizes):
    srv, cli = pair(*sizes)
    data = os.urandom(300_000)
    got = bytearray()

    def reader():
        while len(got) < len(data):
            got.extend(srv.read(65536))

    t = threading.Thread(target=reader)
    t.start()
    assert cli.write(data) == len(data)
    t.join(10)
    assert bytes(got) == data
    back = os.urandom(50_000)
    t = threading.Thread(target=srv.write, args=(back,))
    t.start()
    out = bytearray(len(back))
    assert cli.recv_into(out) == len(back)
    t.join(10)
    assert bytes(out) == back


def test_event_sent_only_when_the_peer_asked():
    srv, cli = pair()
    # The server asked for WRITE at set-up (cli_notify): the first write notifies.
    cli.write(b"a")
    assert cli.evtchn.sent == 1
    # Nobody asked again: a second write sends no event.
    cli.write(b"b")
    assert cli.evtchn.sent == 1
    assert srv.read(10) == b"ab"           # ring had data: no request made
    assert srv.ctrl[V.OFF_CLI_NOTIFY] == 0
    srv.blocking = False
    assert srv.read(10) == b""             # empty: the server asks for WRITE
    assert srv.ctrl[V.OFF_CLI_NOTIFY] & V.VCHAN_NOTIFY_WRITE
    cli.write(b"c")
    assert cli.evtchn.sent == 2


def test_hostile_indexes_read_as_empty_and_full():
    srv, cli = pair()
    # The client claims 5000 bytes in a 1 KiB ring: the server sees no data.
    struct.pack_into("<I", srv.ctrl, V.OFF_LEFT + 4, 5000)
    assert srv.data_ready() == 0
    srv.blocking = False
    assert srv.read(100) == b""
    # The client moves the server's ring cons past prod: no space, not "huge".
    struct.pack_into("<I", srv.ctrl, V.OFF_RIGHT, 0xFFFF0000)
    assert srv.buffer_space() == 0
    assert srv.write(b"x" * 10) == 0


def test_close_marks_the_side_gone_and_wakes_the_peer():
    srv, cli = pair()
    cli.close()
    assert srv.ctrl[V.OFF_CLI_LIVE] == 0
    assert not srv.is_open()
    assert srv.wait(1.0)
    with pytest.raises(V.VchanError):
        srv.write(b"late")
