"""The Tegra IVC protocol on plain memory (specs/ivc-lguest-pvz.md §A.4).  No KVM.

Two endpoints share one bytearray: channel ``ab`` (A's tx = B's rx) and
channel ``ba`` (B's tx = A's rx).  A notification is counted as *sent* by the
endpoint that rang, and queued as *pending* for its peer; the test delivers it
by calling the peer's ``notified()``, in an order each test spells out.
"""

from __future__ import annotations

import array
import errno
import mmap
import struct
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, rule)

from paravm.services.ivc import (HEADER_SIZE, IVC_ALIGN, R_COUNT, STATE, ST_ACK,
                                 ST_ESTABLISHED, ST_SYNC, VARIANTS, W_COUNT, Channel,
                                 IvcError, align, check_params, read_header,
                                 total_queue_size)

EST, SYNC, ACK, GARBAGE = ST_ESTABLISHED, ST_SYNC, ST_ACK, 7
M32 = 0xFFFF_FFFF
NF, FS = 4, 64
EMPTY_FULL = errno.ENOMEM


def put32(view, off, value):
    struct.pack_into("<I", view, off, value & M32)


def get32(view, off):
    return struct.unpack_from("<I", view, off)[0]


class Pair:
    """Endpoints A and B over one bytearray, with counted, queued notifications."""

    def __init__(self, nframes=NF, frame_size=FS, variant="upstream", **kw):
        self.nframes, self.frame_size = nframes, frame_size
        size = total_queue_size(nframes * frame_size)
        self.mem = bytearray(2 * size)
        view = memoryview(self.mem)
        self.ab = view[:size]          # A -> B: A's tx, B's rx
        self.ba = view[size:]          # B -> A: B's tx, A's rx
        self.sent = {"A": 0, "B": 0}
        self.pending = {"A": 0, "B": 0}
        self.A = Channel(self.ba, self.ab, nframes, frame_size, lambda: self._ring("A"),
                         variant=variant, **kw)
        self.B = Channel(self.ab, self.ba, nframes, frame_size, lambda: self._ring("B"),
                         variant=variant, **kw)

    def _ring(self, who):
        self.sent[who] += 1
        self.pending[self.peer(who)] += 1

    @staticmethod
    def peer(who):
        return "B" if who == "A" else "A"

    def ep(self, who):
        return self.A if who == "A" else self.B

    def tx(self, who):
        return self.ab if who == "A" else self.ba

    def rx(self, who):
        return self.ba if who == "A" else self.ab

    def state(self, who):
        return get32(self.tx(who), STATE)

    def deliver(self, who):
        """Deliver one pending notification to *who*; its notified() code."""
        assert self.pending[who] > 0, f"no notification pending for {who}"
        self.pending[who] -= 1
        return self.ep(who).notified()

    def pump(self, limit=100):
        """Deliver every pending notification, B first, one at a time."""
        for _ in range(limit):
            for who in ("B", "A"):
                if self.pending[who]:
                    self.deliver(who)
                    break
            else:
                return
        raise AssertionError("notifications never settle")

    def handshake(self, who="A"):
        self.ep(who).reset()
        self.pump()
        assert self.A.established and self.B.established

    def set_counters(self, value):
        for ch in (self.ab, self.ba):
            put32(ch, W_COUNT, value)
            put32(ch, R_COUNT, value)

    def counters(self):
        return [get32(ch, off) for ch in (self.ab, self.ba) for off in (W_COUNT, R_COUNT)]


def frame_at(ch, i, fs=FS):
    off = HEADER_SIZE + i * fs
    return bytes(ch[off:off + fs])


def raises(code, fn, *args):
    with pytest.raises(IvcError) as info:
        fn(*args)
    assert info.value.errno == code, (info.value, code)
    return info.value


# -- Layout / constants --------------------------------------------------------------

def test_constants_are_the_reference_values():
    assert (IVC_ALIGN, HEADER_SIZE, W_COUNT, STATE, R_COUNT) == (64, 128, 0, 4, 64)
    assert (ST_ESTABLISHED, ST_SYNC, ST_ACK) == (0, 1, 2)


@pytest.mark.parametrize("k", [0, 1, 3, 64, 1000])
def test_total_queue_size_adds_the_header(k):
    assert total_queue_size(64 * k) == 128 + 64 * k


@pytest.mark.parametrize("q", [100, 1, 63, 65, 4097])
def test_total_queue_size_of_unaligned_size_is_zero(q):
    assert total_queue_size(q) == 0


@pytest.mark.parametrize("x, expected", [(0, 0), (1, 64), (63, 64), (64, 64), (65, 128)])
def test_align_rounds_up_to_64(x, expected):
    assert align(x) == expected


def test_header_fields_live_at_their_offsets_and_padding_is_untouched():
    p = Pair()
    p.A.write(b"x")
    assert get32(p.ab, 0) == 1                       # w_count, written by the sender
    p.B.read(1)
    assert get32(p.ab, 64) == 1                       # r_count, written by the receiver
    p.A.reset()
    assert get32(p.ab, 4) == ST_SYNC                  # the sender's state
    assert read_header(p.ab) == (1, ST_SYNC, 1)
    assert bytes(p.ab[8:64]) == bytes(56) and bytes(p.ab[68:128]) == bytes(60)
    assert bytes(p.ba[:128]) == bytes(128)            # B wrote nothing of its own yet


def test_frame_i_is_at_128_plus_i_times_frame_size():
    p = Pair(nframes=4, frame_size=128)
    for i in range(4):
        p.A.write(bytes([0x10 + i]) * 128)
    for i in range(4):
        assert frame_at(p.ab, i, 128) == bytes([0x10 + i]) * 128
    assert len(p.ab) == total_queue_size(4 * 128)


def test_channel_works_over_mmap_and_close_releases_it():
    size = total_queue_size(NF * FS)
    mm = mmap.mmap(-1, 2 * size)
    view = memoryview(mm)
    a = Channel(view[size:], view[:size], NF, FS, lambda: None)
    b = Channel(view[:size], view[size:], NF, FS, lambda: None)
    assert a.write(b"over mmap") == 9
    assert b.read(9) == b"over mmap"
    a.close()
    b.close()
    view.release()
    mm.close()                      # no BufferError: the channels let go of the map
    with pytest.raises(ValueError):
        a.can_read()


# -- Init ----------------------------------------------------------------------------

QUEUE = NF * FS


def test_check_params_accepts_channels_spaced_by_total_queue_size():
    check_params(0, total_queue_size(QUEUE), NF, FS)
    check_params(total_queue_size(QUEUE), 0, NF, FS)          # tx below rx
    check_params(4096, 4096 + 64 * 1000, NF, FS)


@pytest.mark.parametrize("rx, tx", [(1, 4096), (4096, 32), (63, 4096), (4096, 4096 + 640 + 8)])
def test_check_params_refuses_unaligned_bases(rx, tx):
    assert "aligned" in str(raises(errno.EINVAL, check_params, rx, tx, NF, FS))


def test_check_params_refuses_frame_size_not_multiple_of_64():
    assert "frame size" in str(raises(errno.EINVAL, check_params, 0, 8192, NF, 65))


def test_check_params_refuses_2_to_the_32_bytes_of_frames():
    assert "overflows" in str(raises(errno.EINVAL, check_params, 0, 1 << 33, 1 << 26, 64))
    check_params(0, 1 << 33, (1 << 26) - 1, 64)                # one frame less fits


def test_check_params_checks_in_the_reference_order():
    # size before alignment before frame size before overlap
    assert "overflows" in str(raises(errno.EINVAL, check_params, 1, 1, 1 << 26, 65))
    assert "aligned" in str(raises(errno.EINVAL, check_params, 1, 0, NF, 65))
    assert "frame size" in str(raises(errno.EINVAL, check_params, 0, 0, NF, 65))


@pytest.mark.parametrize("rx, tx", [(0, 64), (0, 0), (640, 512), (512, 640)])
def test_check_params_refuses_overlap(rx, tx):
    assert "overlap" in str(raises(errno.EINVAL, check_params, rx, tx, NF, FS))


def test_check_params_refuses_the_reference_quirk_spacing_of_nframes_times_frame_size():
    # The reference passes this (its test ignores the header): the channels
    # would share 128 bytes.  We refuse it (docs/ivc.md, "choices").
    assert "overlap" in str(raises(errno.EINVAL, check_params, 0, QUEUE, NF, FS))
    assert "overlap" in str(raises(errno.EINVAL, check_params, QUEUE, 0, NF, FS))
    check_params(0, QUEUE + HEADER_SIZE, NF, FS)


@pytest.mark.parametrize("nframes, fs, code", [
    (NF, 65, errno.EINVAL), (NF, 32, errno.EINVAL), (1 << 26, 64, errno.EINVAL),
    (-1, 64, errno.EINVAL)])
def test_channel_refuses_bad_geometry(nframes, fs, code):
    buf = bytearray(1 << 16)
    raises(code, Channel, buf, bytearray(1 << 16), nframes, fs, lambda: None)


def test_channel_refuses_buffers_smaller_than_total_queue_size():
    size = total_queue_size(QUEUE)
    raises(errno.EINVAL, Channel, bytearray(size - 1), bytearray(size), NF, FS, lambda: None)
    raises(errno.EINVAL, Channel, bytearray(size), bytearray(size - 1), NF, FS, lambda: None)
    raises(errno.EINVAL, Channel, bytes(size), bytearray(size), NF, FS, lambda: None)
    Channel(bytearray(size), bytearray(size), NF, FS, lambda: None)


def test_channel_refuses_unknown_variant_and_errno():
    size = total_queue_size(QUEUE)
    with pytest.raises(ValueError):
        Channel(bytearray(size), bytearray(size), NF, FS, lambda: None, variant="linux")
    with pytest.raises(ValueError):
        Channel(bytearray(size), bytearray(size), NF, FS, lambda: None,
                empty_full_errno=errno.EAGAIN)


def test_channel_refuses_frame_size_above_int_max_with_e2big():
    # No buffer needed: tegra_ivc_init checks this before touching memory.
    raises(errno.E2BIG, Channel, bytearray(0), bytearray(0), 1, (1 << 31), lambda: None)


# -- Handshake -----------------------------------------------------------------------

@pytest.mark.parametrize("variant, sent_by_b", [("upstream", 2), ("oe4t", 1)])
def test_a_reset_only(variant, sent_by_b):
    p = Pair(variant=variant)
    p.A.write(b"stale")
    p.sent = {"A": 0, "B": 0}
    p.pending = {"A": 0, "B": 0}

    p.A.reset()
    assert (p.state("A"), p.state("B")) == (SYNC, EST) and p.sent == {"A": 1, "B": 0}
    assert p.deliver("B") == -errno.EAGAIN
    assert (p.state("A"), p.state("B")) == (SYNC, ACK) and p.sent == {"A": 1, "B": 1}
    assert p.deliver("A") == 0
    assert (p.state("A"), p.state("B")) == (EST, ACK) and p.sent == {"A": 2, "B": 1}
    assert p.deliver("B") == 0
    assert (p.state("A"), p.state("B")) == (EST, EST)
    p.pump()                                      # upstream: A gets B's last ring, does nothing
    assert p.sent == {"A": 2, "B": sent_by_b}
    assert p.counters() == [0, 0, 0, 0]
    assert not p.B.can_read()


@pytest.mark.parametrize("variant, sent", [("upstream", {"A": 2, "B": 3}),
                                           ("oe4t", {"A": 2, "B": 2})])
def test_simultaneous_reset_delivered_one_after_the_other(variant, sent):
    p = Pair(variant=variant)
    p.A.reset()
    p.B.reset()
    assert (p.state("A"), p.state("B")) == (SYNC, SYNC)
    assert p.deliver("B") == -errno.EAGAIN        # B sees A in SYNC
    assert (p.state("A"), p.state("B")) == (SYNC, ACK)
    assert p.deliver("A") == 0                    # A sees B in ACK
    assert p.deliver("A") == 0
    assert p.deliver("B") == 0                    # B sees A established
    p.pump()
    assert (p.state("A"), p.state("B")) == (EST, EST)
    assert p.sent == sent


@pytest.mark.parametrize("variant, sent", [("upstream", {"A": 3, "B": 3}),
                                           ("oe4t", {"A": 3, "B": 2})])
def test_simultaneous_reset_both_sync_then_both_ack_then_both_established(variant, sent):
    p = Pair(variant=variant)
    p.A.reset()
    p.B.reset()
    # Both read the other's SYNC before either publishes ACK (two CPUs):
    # B's read of A's state is replayed by showing B the SYNC A had then.
    assert p.deliver("A") == -errno.EAGAIN
    put32(p.ab, STATE, SYNC)
    assert p.deliver("B") == -errno.EAGAIN
    put32(p.ab, STATE, ACK)
    assert (p.state("A"), p.state("B")) == (ACK, ACK)
    assert p.deliver("A") == 0                    # ACK + ACK -> EST, notify
    assert (p.state("A"), p.state("B")) == (EST, ACK)
    p.pump()
    assert (p.state("A"), p.state("B")) == (EST, EST)
    assert p.sent == sent
    assert p.counters() == [0, 0, 0, 0]


# (local, remote) -> (new local state, counters cleared, notifies) for each variant.
UPSTREAM_TABLE = {
    (EST, EST): (EST, False, False), (EST, SYNC): (ACK, True, True),
    (EST, ACK): (EST, False, False), (EST, GARBAGE): (EST, False, False),
    (SYNC, EST): (SYNC, False, False), (SYNC, SYNC): (ACK, True, True),
    (SYNC, ACK): (EST, True, True), (SYNC, GARBAGE): (SYNC, False, False),
    (ACK, EST): (EST, False, True), (ACK, SYNC): (ACK, True, True),
    (ACK, ACK): (EST, False, True), (ACK, GARBAGE): (EST, False, True),
    # a local state nobody should have (the peer scribbled on it)
    (GARBAGE, EST): (GARBAGE, False, False), (GARBAGE, SYNC): (ACK, True, True),
    (GARBAGE, ACK): (GARBAGE, False, False), (GARBAGE, GARBAGE): (GARBAGE, False, False),
}
OE4T_TABLE = dict(UPSTREAM_TABLE)
OE4T_TABLE[(ACK, EST)] = (EST, False, False)
OE4T_TABLE[(ACK, GARBAGE)] = (ACK, False, False)
TABLES = {"upstream": UPSTREAM_TABLE, "oe4t": OE4T_TABLE}


def positions(p, who):
    """(w_pos, r_pos) of *who*, observed through memory (destroys the channel state)."""
    ep, tx, rx = p.ep(who), p.tx(who), p.rx(who)
    put32(tx, STATE, EST)
    put32(tx, W_COUNT, 0)
    put32(tx, R_COUNT, 0)
    tx[HEADER_SIZE:] = b"\xee" * (len(tx) - HEADER_SIZE)
    ep.write(b"\x01" * FS)
    w_pos = [frame_at(tx, i) for i in range(NF)].index(b"\x01" * FS)
    for i in range(NF):
        rx[HEADER_SIZE + i * FS:HEADER_SIZE + (i + 1) * FS] = bytes([i]) * FS
    put32(rx, W_COUNT, 1)
    put32(rx, R_COUNT, 0)
    r_pos = ep.read(1)[0]
    return w_pos, r_pos


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("local, remote", sorted(UPSTREAM_TABLE))
def test_notified_follows_the_state_transition_table(variant, local, remote):
    new, clears, notifies = TABLES[variant][(local, remote)]
    p = Pair(variant=variant)
    put32(p.ab, W_COUNT, 3)           # A's
    put32(p.ab, R_COUNT, 1)           # B's
    put32(p.ba, W_COUNT, 6)           # B's
    put32(p.ba, R_COUNT, 2)           # A's
    p.A.channel_sync()                # positions 3, 2: visible if cleared
    put32(p.ab, STATE, local)
    put32(p.ba, STATE, remote)

    code = p.A.notified()

    assert p.state("A") == new
    assert p.state("B") == remote                        # never touches the peer's line
    assert code == (0 if new == EST else -errno.EAGAIN)
    assert p.A.established == (new == EST)
    assert p.sent["A"] == int(notifies)
    ours = (get32(p.ab, W_COUNT), get32(p.ba, R_COUNT))
    assert ours == ((0, 0) if clears else (3, 2))
    assert (get32(p.ab, R_COUNT), get32(p.ba, W_COUNT)) == (1, 6)   # the peer's counters
    assert positions(p, "A") == ((0, 0) if clears else (3, 2))


def test_data_operations_before_established_raise_econnreset():
    p = Pair()
    p.A.write(b"queued")
    p.B.write(b"queued")
    p.A.reset()
    p.deliver("B")                                          # B -> ACK
    for ep in (p.A, p.B):
        assert not ep.established
        assert not ep.can_read() and not ep.can_write()
        raises(errno.ECONNRESET, ep.read, 1)
        raises(errno.ECONNRESET, ep.read_into, bytearray(1))
        raises(errno.ECONNRESET, ep.write, b"x")
        raises(errno.ECONNRESET, ep.read_peek, 0, 1)
        raises(errno.ECONNRESET, ep.write_poke, b"x", 0)
        raises(errno.ECONNRESET, ep.read_get_next_frame)
        raises(errno.ECONNRESET, ep.read_advance)
        raises(errno.ECONNRESET, ep.write_get_next_frame)
        raises(errno.ECONNRESET, ep.write_advance)
        raises(errno.E2BIG, ep.read, FS + 1)                # size is checked first
        raises(errno.E2BIG, ep.write, bytes(FS + 1))


def test_the_peer_can_still_send_until_it_sees_the_reset_then_the_frames_are_dropped():
    p = Pair()
    p.A.reset()
    assert p.B.established and p.B.can_write()
    p.B.write(b"in flight")
    assert p.A.notified() == -errno.EAGAIN                  # spurious for A: B not in ACK yet
    p.pump()
    assert p.A.established and not p.A.can_read()


def test_reset_mid_stream_discards_queued_frames_and_zeroes_all_counters():
    p = Pair()
    for i in range(3):
        p.A.write(bytes([i]))
    p.B.write(b"b0")
    p.B.write(b"b1")
    p.B.read(1)
    p.handshake("B")
    assert p.counters() == [0, 0, 0, 0]
    assert not p.A.can_read() and not p.B.can_read()
    assert p.A.tx_empty() and p.B.tx_empty()
    p.A.write(b"fresh")
    assert frame_at(p.ab, 0)[:5] == b"fresh"                # positions restarted too
    assert p.B.read(5) == b"fresh"


def test_zero_initialised_channel_is_usable_without_reset():
    p = Pair()
    assert p.A.established and p.B.established
    assert p.A.notified() == 0 and p.sent == {"A": 0, "B": 0}
    p.A.write(b"hello")
    assert p.B.read(5) == b"hello"


def test_every_reset_notifies_once_and_keeps_counters():
    p = Pair()
    p.A.write(b"x")
    p.A.reset()
    p.A.reset()
    assert p.sent["A"] == 3 and get32(p.ab, W_COUNT) == 1


# -- Data ----------------------------------------------------------------------------

@pytest.mark.parametrize("code", [errno.ENOMEM, errno.ENOSPC])
def test_nframes_fit_then_full_then_fifo_then_empty(code):
    p = Pair(empty_full_errno=code)
    for i in range(NF):
        assert p.A.write(bytes([i]) * (i + 1)) == i + 1
    assert not p.A.can_write()
    assert "full" in str(raises(code, p.A.write, b"x"))
    raises(code, p.A.write_get_next_frame)
    raises(code, p.A.write_poke, b"x", 0)
    raises(code, p.A.write_advance)
    for i in range(NF):
        assert p.B.read(i + 1) == bytes([i]) * (i + 1)
    assert not p.B.can_read()
    assert "empty" in str(raises(code, p.B.read, 1))
    raises(code, p.B.read_peek, 0, 1)
    raises(code, p.B.read_get_next_frame)
    raises(code, p.B.read_advance)
    raises(code, p.B.read_into, bytearray(1))


def test_sizes_beyond_a_frame_raise_e2big_and_change_nothing():
    p = Pair()
    raises(errno.E2BIG, p.A.write, bytes(FS + 1))
    assert p.A.tx_empty() and p.sent["A"] == 0
    p.A.write(b"x")
    raises(errno.E2BIG, p.B.read, FS + 1)
    raises(errno.E2BIG, p.B.read, -1)
    raises(errno.E2BIG, p.B.read_into, bytearray(FS + 1))
    assert p.B.read(1) == b"x"


def test_a_short_write_zero_pads_the_rest_of_the_frame():
    p = Pair()
    p.ab[HEADER_SIZE:] = b"\xff" * (len(p.ab) - HEADER_SIZE)
    assert p.A.write(b"abc") == 3
    assert frame_at(p.ab, 0) == b"abc" + bytes(FS - 3)
    assert frame_at(p.ab, 1) == b"\xff" * FS
    assert p.B.read(FS) == b"abc" + bytes(FS - 3)


def test_an_empty_write_sends_a_zeroed_frame():
    p = Pair(nframes=1)
    p.A.write(b"\xff" * FS)
    p.B.read(0)
    assert p.A.write(b"") == 0
    assert p.B.read(FS) == bytes(FS)


def test_a_full_frame_write_and_read():
    p = Pair()
    payload = bytes(range(FS))
    assert p.A.write(payload) == FS
    assert p.B.read(FS) == payload


def test_a_short_read_consumes_the_whole_frame():
    p = Pair()
    p.A.write(b"first frame")
    p.A.write(b"second")
    assert p.B.read(5) == b"first"
    assert p.B.read(6) == b"second"
    assert not p.B.can_read()


def test_read_zero_bytes_consumes_a_frame():
    p = Pair()
    p.A.write(b"gone")
    assert p.B.read(0) == b""
    assert not p.B.can_read()


def test_read_into_fills_the_buffer_and_consumes_the_frame():
    p = Pair()
    p.A.write(b"0123456789")
    buf = bytearray(4)
    assert p.B.read_into(buf) == 4 and buf == b"0123"
    assert not p.B.can_read()
    p.A.write(struct.pack("<2I", 7, 9))
    words = array.array("I", [0, 0])
    assert p.B.read_into(words) == 8 and list(words) == [7, 9]


def test_write_accepts_any_bytes_like():
    p = Pair()
    assert p.A.write(bytearray(b"ba")) == 2
    assert p.A.write(memoryview(b"xmvx")[1:3]) == 2
    assert p.A.write(array.array("H", [0x4241])) == 2
    assert [p.B.read(2) for _ in range(3)] == [b"ba", b"mv", b"AB"]


def test_read_returns_a_copy_not_a_view_of_shared_memory():
    p = Pair()
    p.A.write(b"stable")
    data = p.B.read(6)
    p.ab[HEADER_SIZE:HEADER_SIZE + 6] = b"CHANGE"
    assert data == b"stable" and isinstance(data, bytes)


@pytest.mark.parametrize("off, count", [(FS, 0), (0, FS), (FS - 1, 1), (10, 20), (0, 0)])
def test_peek_and_poke_within_the_frame(off, count):
    p = Pair()
    p.A.write(bytes(range(FS)))
    assert p.B.read_peek(off, count) == bytes(range(FS))[off:off + count]
    assert p.A.write_poke(b"\x01" * count, off) == count


@pytest.mark.parametrize("off, count", [(FS, 1), (FS + 1, 0), (0, FS + 1), (FS - 1, 2),
                                        (1, (1 << 64) - 1), (-1, 1), (0, -1)])
def test_peek_beyond_the_frame_is_e2big(off, count):
    p = Pair()
    p.A.write(bytes(range(FS)))
    raises(errno.E2BIG, p.B.read_peek, off, count)
    assert p.B.can_read()


@pytest.mark.parametrize("off, count", [(FS, 1), (FS + 1, 0), (0, FS + 1), (FS - 1, 2),
                                        (-1, 1)])
def test_poke_beyond_the_frame_is_e2big_and_writes_nothing(off, count):
    p = Pair()
    raises(errno.E2BIG, p.A.write_poke, b"\x01" * count, off)
    assert bytes(p.ab) == bytes(len(p.ab))


def test_peek_neither_consumes_nor_notifies():
    p = Pair(nframes=1)
    p.A.write(b"peekaboo")
    before = dict(p.sent)
    assert p.B.read_peek(4, 4) == b"aboo"
    assert p.B.read_peek(0, 4) == b"peek"
    assert p.sent == before and p.B.can_read() and not p.A.can_write()


def test_poke_then_write_advance_transmits_the_poked_bytes():
    p = Pair()
    assert p.A.write_poke(b"tail", FS - 4) == 4
    assert not p.B.can_read() and p.sent["A"] == 0          # poke sends nothing
    assert p.A.write_poke(b"head", 0) == 4
    p.A.write_advance()
    assert p.sent["A"] == 1
    frame = p.B.read(FS)
    assert frame[:4] == b"head" and frame[-4:] == b"tail"


def test_get_next_frame_and_advance_equal_read_and_write():
    p, q = Pair(), Pair()
    for i in range(6):
        payload = bytes([i + 1]) * FS
        p.A.write(payload)
        view = q.A.write_get_next_frame()
        assert len(view) == FS and not view.readonly
        view[:] = payload
        q.A.write_advance()
        assert p.mem == q.mem and p.sent == q.sent
        got = p.B.read(FS)
        frame = q.B.read_get_next_frame()
        assert frame.readonly and bytes(frame) == got == payload
        q.B.read_advance()
        assert p.mem == q.mem and p.sent == q.sent


def test_read_get_next_frame_is_a_live_view_of_shared_memory():
    p = Pair()
    p.A.write(b"before")
    view = p.B.read_get_next_frame()
    p.A.write_poke(b"x", 0)                 # A's next slot, not this frame
    assert bytes(view[:6]) == b"before"
    p.ab[HEADER_SIZE:HEADER_SIZE + 5] = b"AFTER"   # a peer rewriting after validation
    assert bytes(view[:6]) == b"AFTERe"     # TOCTOU: documented, copy first


def test_write_get_next_frame_is_not_zeroed():
    p = Pair(nframes=1)
    p.A.write(b"old contents")
    p.B.read(1)
    view = p.A.write_get_next_frame()
    assert bytes(view[:12]) == b"old contents"


# -- Notify --------------------------------------------------------------------------

@pytest.mark.parametrize("nframes", [1, 2, 4])
@pytest.mark.parametrize("zero_copy", [False, True])
def test_writer_notifies_on_empty_to_one_and_reader_on_full_to_nframes_minus_one(nframes,
                                                                              zero_copy):
    p = Pair(nframes=nframes)

    def send():
        before = p.sent["A"]
        if zero_copy:
            p.A.write_get_next_frame()[0] = 1
            p.A.write_advance()
        else:
            p.A.write(b"\x01")
        return p.sent["A"] - before

    def recv():
        before = p.sent["B"]
        if zero_copy:
            p.B.read_get_next_frame()
            p.B.read_advance()
        else:
            p.B.read(1)
        return p.sent["B"] - before

    for _ in range(3):                                   # several laps of the ring
        assert [send() for _ in range(nframes)] == [1] + [0] * (nframes - 1)
        assert [recv() for _ in range(nframes)] == [1] + [0] * (nframes - 1)
    # half full: neither side crosses a boundary
    if nframes >= 4:
        assert [send(), send(), recv(), send(), recv()] == [1, 0, 0, 0, 0]   # 1 left
        assert [send(), send(), send()] == [0, 0, 0]    # now full (4)
        assert recv() == 1                          # full -> 3
        assert [recv(), recv(), recv()] == [0, 0, 0]
        assert send() == 1                          # empty -> 1 again


def test_a_full_channel_drained_by_one_notifies_the_writer_once():
    p = Pair()
    for _ in range(NF):
        p.A.write(b"x")
    p.B.read(1)
    assert p.pending["A"] == 1
    assert p.A.notified() == 0 and p.A.can_write()


def test_the_full_barrier_comes_after_our_counter_store():
    # x86 may hoist the load of the peer's counter above our counter store
    # (StoreLoad); both sides would then skip the notification.  The fence
    # sits between the two, as the reference's smp_mb().
    p = Pair()
    seen = []
    p.A._mb = lambda: seen.append(("A", get32(p.ab, W_COUNT)))
    p.B._mb = lambda: seen.append(("B", get32(p.ab, R_COUNT)))
    p.A.write(b"x")
    p.A.write_advance()
    p.B.read(1)
    p.B.read_get_next_frame()
    p.B.read_advance()
    assert seen == [("A", 1), ("A", 2), ("B", 1), ("B", 2)]


# -- Wrap ----------------------------------------------------------------------------

@pytest.mark.parametrize("nframes", [4, 3])
def test_counters_wrap_at_2_to_the_32(nframes):
    p = Pair(nframes=nframes)
    p.handshake()
    p.sent = {"A": 0, "B": 0}
    start = 0xFFFF_FFF0
    p.set_counters(start)
    expected, seq, delivered, laps, full_laps = deque(), 0, 0, 0, 0
    while delivered < 40:
        while p.A.can_write() and seq < 40:
            p.A.write(seq.to_bytes(4, "little"))
            expected.append(seq)
            seq += 1
        assert p.A.tx_frames_available() == nframes - len(expected)
        full_laps += len(expected) == nframes
        while p.B.can_read():
            assert int.from_bytes(p.B.read(4), "little") == expected.popleft()
            delivered += 1
        assert not expected and p.A.tx_empty()
        p.B.write(b"r")                              # and one frame back each lap
        assert p.A.read(1) == b"r"
        laps += 1
    assert full_laps == 40 // nframes and laps == -(-40 // nframes)
    end = (start + 40) & M32
    assert (get32(p.ab, W_COUNT), get32(p.ab, R_COUNT)) == (end, end)
    assert (get32(p.ba, W_COUNT), get32(p.ba, R_COUNT)) == ((start + laps) & M32,) * 2
    # A rings once a lap (empty -> 1); B once a lap for its own frame, and once
    # more each lap that its reads took from full.
    assert p.sent == {"A": laps, "B": laps + full_laps}


def test_full_is_detected_across_the_wrap():
    p = Pair()
    put32(p.ab, W_COUNT, 2)
    put32(p.ab, R_COUNT, 0xFFFF_FFFE)          # 4 in flight across zero
    assert not p.A.can_write() and p.A.tx_frames_available() == 0
    assert p.B.can_read()
    put32(p.ab, R_COUNT, 0xFFFF_FFFF)          # 3 in flight
    assert p.A.can_write() and p.A.tx_frames_available() == 1


# -- Malicious peer ------------------------------------------------------------------

def test_over_full_rx_reads_as_empty():
    p = Pair()
    put32(p.ab, R_COUNT, 5)
    put32(p.ab, W_COUNT, 5 + NF + 1)           # the peer claims nframes + 1 frames
    assert not p.B.can_read()
    raises(EMPTY_FULL, p.B.read, 1)
    raises(EMPTY_FULL, p.B.read_peek, 0, 1)
    raises(EMPTY_FULL, p.B.read_get_next_frame)
    raises(EMPTY_FULL, p.B.read_advance)
    put32(p.ab, W_COUNT, 5 + NF)               # exactly full is legitimate
    assert p.B.can_read()
    put32(p.ab, W_COUNT, 4)                    # w behind r: huge, over-full, silent
    assert not p.B.can_read()


@pytest.mark.parametrize("r_offset", [-NF, -NF - 5, 1, 1 << 31])
def test_a_lying_reader_makes_the_channel_look_full(r_offset):
    p = Pair()
    put32(p.ab, W_COUNT, 100)
    put32(p.ab, R_COUNT, 100 + r_offset)       # w - r >= nframes (mod 2^32)
    assert not p.A.can_write()
    raises(EMPTY_FULL, p.A.write, b"x")
    raises(EMPTY_FULL, p.A.write_get_next_frame)


def test_tx_frames_available_is_raw_u32_arithmetic():
    p = Pair()
    assert p.A.tx_frames_available() == NF
    p.A.write(b"x")
    assert p.A.tx_frames_available() == NF - 1
    put32(p.ab, W_COUNT, 10)
    put32(p.ab, R_COUNT, 11)                   # w - r = 2^32 - 1
    assert p.A.tx_frames_available() == NF + 1
    put32(p.ab, R_COUNT, 10 - NF - 3)          # over-full by 3
    assert p.A.tx_frames_available() == (-3) & M32


def test_tx_empty_counts_over_full_as_empty():
    p = Pair()
    assert p.A.tx_empty()
    p.A.write(b"x")
    assert not p.A.tx_empty()
    put32(p.ab, R_COUNT, get32(p.ab, W_COUNT) - NF - 1)
    assert p.A.tx_empty()
    p.A.reset()
    put32(p.ab, R_COUNT, get32(p.ab, W_COUNT))
    assert p.A.tx_empty()                      # whatever our state


def test_the_peer_is_re_read_on_every_check():
    p = Pair()
    assert not p.B.can_read()
    put32(p.ab, W_COUNT, 1)                    # a frame appears without a notification
    assert p.B.can_read()
    put32(p.ab, W_COUNT, 0)
    assert not p.B.can_read()


def test_a_peer_scribbling_our_state_stops_our_data_until_the_handshake():
    p = Pair()
    put32(p.ab, STATE, GARBAGE)                # B writes A's line
    raises(errno.ECONNRESET, p.A.write, b"x")
    p.handshake("A")
    assert p.A.write(b"x") == 1


_OPS = st.sampled_from(["write", "read", "peek", "poke", "getw", "getr", "advw", "advr",
                        "reset", "notified", "sync", "avail", "empty"])
_FIELDS = st.sampled_from([W_COUNT, STATE, R_COUNT])
_VALUES = st.one_of(st.integers(0, 8), st.integers(0, M32),
                    st.integers(0xFFFF_FFF0, M32))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(variant=st.sampled_from(VARIANTS),
       steps=st.lists(st.one_of(
           st.tuples(st.just("scribble"), st.booleans(), _FIELDS, _VALUES),
           st.tuples(_OPS, st.booleans(), st.integers(0, FS + 2), st.integers(0, FS + 2))),
           max_size=60))
def test_a_hostile_peer_gets_defined_errors_never_a_crash(variant, steps):
    """Arbitrary header values in both channels: every operation either works
    within the frame or raises IvcError with a reference errno."""
    p = Pair(variant=variant)
    allowed = {errno.ECONNRESET, EMPTY_FULL, errno.E2BIG, errno.EINVAL}
    for op, on_a, x, y in steps:
        ep = p.A if on_a else p.B
        if op == "scribble":
            put32(p.ab if on_a else p.ba, x, y)
            continue
        try:
            if op == "write":
                assert ep.write(bytes(x)) == x
            elif op == "read":
                assert len(ep.read(x)) == x
            elif op == "peek":
                assert len(ep.read_peek(x, y)) == y
            elif op == "poke":
                assert ep.write_poke(b"p" * y, x) == y
            elif op == "getw":
                assert len(ep.write_get_next_frame()) == FS
            elif op == "getr":
                assert len(ep.read_get_next_frame()) == FS
            elif op == "advw":
                ep.write_advance()
            elif op == "advr":
                ep.read_advance()
            elif op == "reset":
                ep.reset()
            elif op == "notified":
                assert ep.notified() in (0, -errno.EAGAIN)
            elif op == "sync":
                ep.channel_sync()
            elif op == "avail":
                assert 0 <= ep.tx_frames_available() <= M32
            elif op == "empty":
                assert ep.tx_empty() in (True, False)
        except IvcError as e:
            assert e.errno in allowed, e
    assert len(p.mem) == 2 * total_queue_size(NF * FS)


# -- channel_sync --------------------------------------------------------------------

def test_channel_sync_takes_positions_from_the_counters_modulo_nframes():
    p = Pair(nframes=4)
    put32(p.ab, W_COUNT, 7)                    # A's tx.w_count
    put32(p.ab, R_COUNT, 5)                    # not full
    put32(p.ba, R_COUNT, 3)                    # A's rx.r_count
    put32(p.ba, W_COUNT, 4)                    # one frame waiting
    for i in range(4):
        p.ba[HEADER_SIZE + i * FS:HEADER_SIZE + (i + 1) * FS] = bytes([0x30 + i]) * FS
    p.A.channel_sync()
    p.A.write(b"w")
    assert frame_at(p.ab, 3)[:1] == b"w"       # w_pos 3
    assert p.A.read(1) == b"\x33"              # r_pos 3
    p.A.write(b"v")
    assert frame_at(p.ab, 0)[:1] == b"v"       # and wraps on


def test_channel_sync_without_frames_is_einval():
    size = total_queue_size(0)
    ch = Channel(bytearray(size), bytearray(size), 0, FS, lambda: None)
    raises(errno.EINVAL, ch.channel_sync)
    assert not ch.can_write() and not ch.can_read()


# -- a model of two endpoints ---------------------------------------------------------

class TwoEndpoints(RuleBasedStateMachine):
    """A and B doing random operations against a model: one deque of frames per
    direction and each side's handshake state (the table of specs §A.1.2)."""

    @initialize(nframes=st.sampled_from([1, 2, 3, 4]), fs=st.sampled_from([64, 128]),
                variant=st.sampled_from(VARIANTS),
                base=st.sampled_from([0, 0xFFFF_FFFE, 0xFFFF_FFF0, 12345]),
                code=st.sampled_from([errno.ENOMEM, errno.ENOSPC]))
    def setup(self, nframes, fs, variant, base, code):
        self.p = Pair(nframes, fs, variant, empty_full_errno=code)
        self.p.set_counters(base)                 # positions 0, counters anywhere
        self.nframes, self.fs, self.variant, self.code = nframes, fs, variant, code
        self.st = {"A": EST, "B": EST}
        self.q = {"A": deque(), "B": deque()}     # frames in flight from A / from B

    # helpers ------------------------------------------------------------------------
    def expect(self, who, code, fn, *args):
        """Run fn; check it raised *code* (or succeeded if None) and sent nothing on error."""
        before = self.p.sent[who]
        if code is None:
            return fn(*args)
        with pytest.raises(IvcError) as info:
            fn(*args)
        assert info.value.errno == code
        assert self.p.sent[who] == before
        return None

    def write_error(self, who, size):
        if size > self.fs:
            return errno.E2BIG
        if self.st[who] != EST:
            return errno.ECONNRESET
        if len(self.q[who]) >= self.nframes:
            return self.code
        return None

    def read_error(self, who, size=0):
        if size > self.fs:
            return errno.E2BIG
        if self.st[who] != EST:
            return errno.ECONNRESET
        if not self.q[Pair.peer(who)]:
            return self.code
        return None

    def sent_frame(self, who, frame):
        self.q[who].append(frame)
        return int(len(self.q[who]) == 1)

    def got_frame(self, who):
        q = self.q[Pair.peer(who)]
        frame = q.popleft()
        return frame, int(len(q) == self.nframes - 1)

    def pad(self, data):
        return bytes(data[:self.fs]).ljust(self.fs, b"\0")

    # rules --------------------------------------------------------------------------
    who = st.sampled_from(["A", "B"])
    # sizes spread over 0..130 so that frames too big for 64 and 128 come up
    payload = st.integers(0, 130).flatmap(lambda n: st.binary(min_size=n, max_size=n))

    @rule(who=who, data=payload)
    def write(self, who, data):
        ep, before = self.p.ep(who), self.p.sent[who]
        err = self.write_error(who, len(data))
        result = self.expect(who, err, ep.write, data)
        if err is None:
            assert result == len(data)
            assert self.p.sent[who] - before == self.sent_frame(who, self.pad(data))

    @rule(who=who, size=st.integers(0, 130), into=st.booleans())
    def read(self, who, size, into):
        ep, before = self.p.ep(who), self.p.sent[who]
        err = self.read_error(who, size)
        if into:
            buf = bytearray(b"\xaa" * size)
            result = self.expect(who, err, ep.read_into, buf)
            got = bytes(buf)
        else:
            result = got = self.expect(who, err, ep.read, size)
        if err is None:
            frame, notifies = self.got_frame(who)
            assert got == frame[:size]
            assert into is False or result == size
            assert self.p.sent[who] - before == notifies

    @rule(who=who, off=st.integers(0, 130), count=st.integers(0, 130))
    def peek(self, who, off, count):
        ep, before = self.p.ep(who), self.p.sent[who]
        err = (errno.E2BIG if off > self.fs or count > self.fs - off
               else self.read_error(who))
        got = self.expect(who, err, ep.read_peek, off, count)
        if err is None:
            assert got == self.q[Pair.peer(who)][0][off:off + count]
            assert self.p.sent[who] == before

    @rule(who=who, data=payload, off=st.integers(0, 130))
    def poke_only(self, who, data, off):
        ep, peer = self.p.ep(who), self.p.ep(Pair.peer(who))
        readable = peer.can_read()
        err = (errno.E2BIG if off > self.fs or len(data) > self.fs - off
               else self.write_error(who, 0))
        assert self.expect(who, err, ep.write_poke, data, off) == (
            len(data) if err is None else None)
        assert peer.can_read() == readable

    @rule(who=who, data=st.binary(max_size=128), split=st.integers(0, 128))
    def send_by_poke(self, who, data, split):
        ep, before = self.p.ep(who), self.p.sent[who]
        frame = self.pad(data)
        split = min(split, self.fs)
        err = self.write_error(who, 0)
        if self.expect(who, err, ep.write_poke, frame[split:], split) is None:
            return
        assert ep.write_poke(frame[:split], 0) == split
        ep.write_advance()
        assert self.p.sent[who] - before == self.sent_frame(who, frame)

    @rule(who=who, data=st.binary(max_size=128))
    def send_by_frame(self, who, data):
        ep, before = self.p.ep(who), self.p.sent[who]
        err = self.write_error(who, 0)
        view = self.expect(who, err, ep.write_get_next_frame)
        if view is None:
            return
        frame = self.pad(data)
        view[:] = frame
        ep.write_advance()
        assert self.p.sent[who] - before == self.sent_frame(who, frame)

    @rule(who=who)
    def recv_by_frame(self, who):
        ep, before = self.p.ep(who), self.p.sent[who]
        err = self.read_error(who)
        view = self.expect(who, err, ep.read_get_next_frame)
        if view is None:
            return
        assert view.readonly and bytes(view) == self.q[Pair.peer(who)][0]
        ep.read_advance()
        frame, notifies = self.got_frame(who)
        assert self.p.sent[who] - before == notifies

    @rule(who=who)
    def reset(self, who):
        before = self.p.sent[who]
        self.p.ep(who).reset()
        self.st[who] = SYNC
        assert self.p.sent[who] == before + 1

    def model_notified(self, who):
        """The table: new state of *who*, whether it clears, whether it notifies."""
        local, remote = self.st[who], self.st[Pair.peer(who)]
        if remote == SYNC:
            return ACK, True, True
        if local == SYNC and remote == ACK:
            return EST, True, True
        if local == ACK:
            return EST, False, self.variant == "upstream" or remote == ACK
        return local, False, False

    @rule(who=who, spurious=st.booleans())
    def deliver(self, who, spurious):
        if not spurious and not self.p.pending[who]:
            return
        if not spurious:
            self.p.pending[who] -= 1
        before = self.p.sent[who]
        new, clears, notifies = self.model_notified(who)
        code = self.p.ep(who).notified()
        self.st[who] = new
        if clears:
            self.q["A"].clear()
            self.q["B"].clear()
        assert code == (0 if new == EST else -errno.EAGAIN)
        assert self.p.sent[who] - before == int(notifies)

    @rule(who=who)
    def reset_to_completion(self, who):
        self.reset(who)
        self.settle()
        assert self.st == {"A": EST, "B": EST}
        assert not self.q["A"] and not self.q["B"]
        assert not self.p.A.can_read() and not self.p.B.can_read()
        assert self.p.A.tx_empty() and self.p.B.tx_empty()

    @rule()
    def settle(self):
        for _ in range(100):
            pending = [w for w in ("B", "A") if self.p.pending[w]]
            if not pending:
                return
            self.deliver(pending[0], False)
        raise AssertionError("notifications never settle")

    # invariants ----------------------------------------------------------------------
    @invariant()
    def endpoints_agree_with_the_model(self):
        if not hasattr(self, "p"):
            return
        for who in ("A", "B"):
            ep, est = self.p.ep(who), self.st[who] == EST
            assert self.p.state(who) == self.st[who]
            assert ep.established == est
            assert ep.can_read() == (est and bool(self.q[Pair.peer(who)]))
            assert ep.can_write() == (est and len(self.q[who]) < self.nframes)
            if est:
                assert ep.tx_empty() == (not self.q[who])
                assert ep.tx_frames_available() == self.nframes - len(self.q[who])


TwoEndpoints.TestCase.settings = settings(max_examples=300, stateful_step_count=50,
                                          deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
test_two_endpoints_against_a_model = TwoEndpoints.TestCase
