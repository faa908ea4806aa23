"""The guest SDK's C IVC library (guest/src/ivc.c), built for the host (no KVM).

tests/interop builds ``libivc_host.so`` from the very source the guest SDK
compiles; here two C endpoints share one ctypes buffer (A's rx channel is B's
tx channel and the other way round) and every case of specs §A.4 that the
library alone can show is run against it: layout, init checks, the reset
handshake table in both variants, data, notifications, counter wrap, a lying
peer and channel_sync.  ``ivc_stress`` runs two endpoints on two threads.  The
last test pairs a C endpoint with the Python one
(:mod:`paravm.services.ivc.protocol`) over one buffer.

Defaults under test (they must match the Python side): empty/full is
-ENOMEM; the handshake is upstream Linux's (ACK + EST -> EST with a
notification, ACK + garbage treated as EST).  ``TEGRA_IVC_FLAG_ENOSPC`` and
``TEGRA_IVC_FLAG_OE4T_HANDSHAKE`` select the other references' behaviour.
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INTEROP = ROOT / "tests" / "interop"
HEADER_H = ROOT / "guest" / "include" / "paravm" / "ivc.h"
ERRNO_H = ROOT / "guest" / "include" / "paravm" / "errno.h"

EST, SYNC, ACK = 0, 1, 2
GARBAGE = 7
HDR = 128
W_COUNT, STATE, R_COUNT = 0, 4, 64
FLAG_ENOSPC, FLAG_OE4T = 0x1, 0x2
INT_MAX = 2**31 - 1

NOTIFY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


class TegraIvc(ctypes.Structure):
    """Mirror of ``struct tegra_ivc`` (checked against the C layout below)."""
    _fields_ = [
        ("rx_channel", ctypes.c_void_p),
        ("tx_channel", ctypes.c_void_p),
        ("w_pos", ctypes.c_uint32),
        ("r_pos", ctypes.c_uint32),
        ("nframes", ctypes.c_uint32),
        ("frame_size", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("notify", NOTIFY),
        ("notify_data", ctypes.c_void_p),
    ]


P = ctypes.POINTER(TegraIvc)
VP, SZ, U = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint
SIGNATURES = {
    "tegra_ivc_align": (U, [U]),
    "tegra_ivc_total_queue_size": (U, [U]),
    "tegra_ivc_init": (ctypes.c_int, [P, VP, VP, U, U, NOTIFY, VP]),
    "tegra_ivc_set_flags": (ctypes.c_int, [P, U]),
    "tegra_ivc_channel_reset": (None, [P]),
    "tegra_ivc_channel_notified": (ctypes.c_int, [P]),
    "tegra_ivc_channel_sync": (ctypes.c_int, [P]),
    "tegra_ivc_can_read": (ctypes.c_int, [P]),
    "tegra_ivc_can_write": (ctypes.c_int, [P]),
    "tegra_ivc_tx_empty": (ctypes.c_int, [P]),
    "tegra_ivc_tx_frames_available": (U, [P]),
    "tegra_ivc_read": (ctypes.c_int, [P, VP, SZ]),
    "tegra_ivc_write": (ctypes.c_int, [P, VP, SZ]),
    "tegra_ivc_read_peek": (ctypes.c_int, [P, VP, SZ, SZ]),
    "tegra_ivc_write_poke": (ctypes.c_int, [P, VP, SZ, SZ]),
    "tegra_ivc_read_get_next_frame": (VP, [P]),
    "tegra_ivc_read_get_next_frame_err": (VP, [P, ctypes.POINTER(ctypes.c_int)]),
    "tegra_ivc_read_advance": (ctypes.c_int, [P]),
    "tegra_ivc_write_get_next_frame": (VP, [P]),
    "tegra_ivc_write_get_next_frame_err": (VP, [P, ctypes.POINTER(ctypes.c_int)]),
    "tegra_ivc_write_advance": (ctypes.c_int, [P]),
    "ivc_shim_layout": (SZ, [U]),
}


def _build() -> None:
    for tool in ("make", os.environ.get("CC", "gcc")):
        if shutil.which(tool) is None:
            pytest.skip(f"cannot build tests/interop: {tool} is not installed")
    proc = subprocess.run(["make", "-s", "-C", str(INTEROP)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"make -C tests/interop failed (exit {proc.returncode}):\n"
                    f"{proc.stdout}{proc.stderr}", pytrace=False)


@pytest.fixture(scope="module")
def lib():
    _build()
    so = ctypes.CDLL(str(INTEROP / "build" / "libivc_host.so"))
    for name, (res, args) in SIGNATURES.items():
        fn = getattr(so, name)
        fn.restype, fn.argtypes = res, args
    return so


class Mem:
    """A 64-byte aligned block of host memory with raw u32 access."""

    def __init__(self, size: int, fill: int = 0):
        self._buf = (ctypes.c_uint8 * (size + 64))()
        self.addr = (ctypes.addressof(self._buf) + 63) & ~63
        self.view = memoryview((ctypes.c_uint8 * size).from_address(self.addr)).cast("B")
        self.view[:] = bytes([fill]) * size

    def u32(self, off: int) -> int:
        return struct.unpack_from("<I", self.view, off)[0]

    def set_u32(self, off: int, value: int) -> None:
        struct.pack_into("<I", self.view, off, value & 0xFFFFFFFF)


class End:
    """One C endpoint; its notifications go to the pair's log as its name."""

    def __init__(self, lib, name, mem, rx_off, tx_off, nframes, fs, log, flags=0):
        self.lib, self.name, self.mem = lib, name, mem
        self.rx_off, self.tx_off, self.fs, self.nframes = rx_off, tx_off, fs, nframes
        self.ivc = TegraIvc()
        self.ref = ctypes.byref(self.ivc)
        self.cb = NOTIFY(lambda ivc, data: log.append(name))
        rc = lib.tegra_ivc_init(self.ref, mem.addr + rx_off, mem.addr + tx_off,
                                nframes, fs, self.cb, None)
        assert rc == 0
        assert lib.tegra_ivc_set_flags(self.ref, flags) == 0

    # -- shared memory as this end sees it
    @property
    def state(self) -> int:
        return self.mem.u32(self.tx_off + STATE)

    @state.setter
    def state(self, v: int) -> None:
        self.mem.set_u32(self.tx_off + STATE, v)

    def counters(self) -> tuple[int, int]:
        """(my tx w_count, my rx r_count): the two counters I own."""
        return self.mem.u32(self.tx_off + W_COUNT), self.mem.u32(self.rx_off + R_COUNT)

    def frame(self, channel_off: int, i: int) -> bytes:
        start = channel_off + HDR + i * self.fs
        return bytes(self.mem.view[start:start + self.fs])

    # -- the C calls
    def reset(self) -> None:
        self.lib.tegra_ivc_channel_reset(self.ref)

    def notified(self) -> int:
        return self.lib.tegra_ivc_channel_notified(self.ref)

    def sync(self) -> int:
        return self.lib.tegra_ivc_channel_sync(self.ref)

    def write(self, data: bytes) -> int:
        return self.lib.tegra_ivc_write(self.ref, data, len(data))

    def read(self, n: int) -> bytes | int:
        buf = ctypes.create_string_buffer(max(n, 1))
        rc = self.lib.tegra_ivc_read(self.ref, buf, n)
        return buf.raw[:rc] if rc >= 0 else rc

    def peek(self, off: int, count: int) -> bytes | int:
        buf = ctypes.create_string_buffer(max(min(count, 1 << 20), 1))
        rc = self.lib.tegra_ivc_read_peek(self.ref, buf, off, count)
        return buf.raw[:rc] if rc >= 0 else rc

    def poke(self, data: bytes, off: int, count: int | None = None) -> int:
        count = len(data) if count is None else count
        return self.lib.tegra_ivc_write_poke(self.ref, data, off, count)

    def rx_frame(self) -> tuple[int | None, int]:
        err = ctypes.c_int(12345)
        p = self.lib.tegra_ivc_read_get_next_frame_err(self.ref, ctypes.byref(err))
        return p, err.value

    def tx_frame(self) -> tuple[int | None, int]:
        err = ctypes.c_int(12345)
        p = self.lib.tegra_ivc_write_get_next_frame_err(self.ref, ctypes.byref(err))
        return p, err.value

    def read_advance(self) -> int:
        return self.lib.tegra_ivc_read_advance(self.ref)

    def write_advance(self) -> int:
        return self.lib.tegra_ivc_write_advance(self.ref)

    def can_read(self) -> int:
        return self.lib.tegra_ivc_can_read(self.ref)

    def can_write(self) -> int:
        return self.lib.tegra_ivc_can_write(self.ref)

    def tx_empty(self) -> int:
        return self.lib.tegra_ivc_tx_empty(self.ref)

    def tx_frames_available(self) -> int:
        return self.lib.tegra_ivc_tx_frames_available(self.ref)


class Pair:
    """Endpoints A and B of one queue: A's rx channel at offset 0, B's at chan."""

    def __init__(self, lib, nframes=4, fs=64, flags=0, fill=0):
        self.lib, self.nframes, self.fs = lib, nframes, fs
        self.chan = lib.tegra_ivc_total_queue_size(nframes * fs)
        self.mem = Mem(2 * self.chan, fill)
        self.log: list[str] = []
        self.a = End(lib, "A", self.mem, 0, self.chan, nframes, fs, self.log, flags)
        self.b = End(lib, "B", self.mem, self.chan, 0, nframes, fs, self.log, flags)
        self.delivered = 0

    def peer(self, end: End) -> End:
        return self.b if end is self.a else self.a

    def pump(self, limit: int = 100) -> None:
        """Deliver every pending notification to the other end's notified()."""
        while self.delivered < len(self.log):
            limit -= 1
            assert limit > 0, f"notification storm: {self.log}"
            who = self.log[self.delivered]
            self.delivered += 1
            (self.b if who == "A" else self.a).notified()

    def establish(self) -> None:
        self.a.reset()
        self.pump()
        assert (self.a.state, self.b.state) == (EST, EST)
        assert self.a.notified() == 0 and self.b.notified() == 0
        self.log.clear()
        self.delivered = 0


@pytest.fixture(params=[0, FLAG_ENOSPC], ids=["ENOMEM", "ENOSPC"])
def flags(request):
    return request.param


def empty_full(flags: int) -> int:
    return -errno.ENOSPC if flags & FLAG_ENOSPC else -errno.ENOMEM


@pytest.fixture
def pair(lib):
    p = Pair(lib)
    p.establish()
    return p


def frame_bytes(tag: int, fs: int) -> bytes:
    return bytes((tag * 37 + i) & 0xFF for i in range(fs))


# --- layout and constants -------------------------------------------------------------

def test_header_layout_and_the_struct_mirror_match_the_c_layout(lib):
    L = [lib.ivc_shim_layout(i) for i in range(14)]
    assert L[:4] == [HDR, W_COUNT, STATE, R_COUNT]
    assert L[4] == ctypes.sizeof(TegraIvc)
    names = ["rx_channel", "tx_channel", "w_pos", "r_pos", "nframes", "frame_size", "flags",
             "notify", "notify_data"]
    assert L[5:14] == [getattr(TegraIvc, n).offset for n in names]
    assert lib.ivc_shim_layout(14) == 2**64 - 1


def test_header_constants_are_the_linux_values():
    text = HEADER_H.read_text()

    def define(name):
        m = re.search(rf"^#define\s+{name}\s+(\S+)", text, re.M)
        assert m, f"{name} missing from ivc.h"
        return int(m.group(1), 0)

    assert (define("TEGRA_IVC_ALIGN"), define("TEGRA_IVC_HEADER_SIZE")) == (64, 128)
    assert [define(f"TEGRA_IVC_STATE_{s}") for s in ("ESTABLISHED", "SYNC", "ACK")] == [0, 1, 2]
    assert define("PV_EPROBE_DEFER") == 517
    assert '#include "paravm/errno.h"' in text
    errnos = dict(re.findall(r"^#define\s+PV_(E\w+)\s+(\d+)", ERRNO_H.read_text(), re.M))
    for name in ("E2BIG", "EAGAIN", "ENOMEM", "EBUSY", "ENODEV", "EINVAL", "ENOSPC",
                 "ECONNRESET"):
        assert int(errnos[name]) == getattr(errno, name), name
    for name, value in errnos.items():      # every one the SDK has is Linux's
        assert int(value) == getattr(errno, name), name


def test_frame_i_lies_at_128_plus_i_times_frame_size(lib):
    p = Pair(lib, nframes=3, fs=128)
    p.establish()
    for i in range(3):
        assert p.a.write(frame_bytes(i, 128)) == 128
    # A's tx channel is at offset chan; its sender line holds w_count = 3
    assert p.mem.u32(p.chan + W_COUNT) == 3 and p.mem.u32(p.chan + STATE) == EST
    for i in range(3):
        assert p.a.frame(p.chan, i) == frame_bytes(i, 128)
    assert p.b.read(1) == frame_bytes(0, 128)[:1]
    assert p.mem.u32(p.chan + R_COUNT) == 1          # the receiver's line


@pytest.mark.parametrize("k", [0, 1, 2, 64, 2**20])
def test_total_queue_size_adds_the_header(lib, k):
    assert lib.tegra_ivc_total_queue_size(64 * k) == 128 + 64 * k


@pytest.mark.parametrize("size", [100, 1, 63, 65])
def test_total_queue_size_of_an_unaligned_size_is_zero(lib, size):
    assert lib.tegra_ivc_total_queue_size(size) == 0


@pytest.mark.parametrize("size, aligned", [(0, 0), (1, 64), (63, 64), (64, 64), (65, 128),
                                           (2**32 - 1, 0)])
def test_align_rounds_up_to_64_mod_2_32(lib, size, aligned):
    assert lib.tegra_ivc_align(size) == aligned


# --- init -----------------------------------------------------------------------------

def _noop(ivc, data):
    pass


NOOP = NOTIFY(_noop)


def init(lib, rx, tx, nframes=4, fs=64, notify=NOOP, ivc=None):
    ivc = TegraIvc() if ivc is None else ivc
    return lib.tegra_ivc_init(ctypes.byref(ivc), rx, tx, nframes, fs, notify, None)


BASE = 0x10000          # init touches no memory: plain numbers will do
FAR = BASE + 2**33


@pytest.mark.parametrize("rx, tx", [(BASE + 8, FAR), (BASE, FAR + 32), (BASE + 1, FAR + 1)])
def test_init_refuses_unaligned_channels(lib, rx, tx):
    assert init(lib, rx, tx) == -errno.EINVAL


@pytest.mark.parametrize("fs", [65, 1, 32, 96])
def test_init_refuses_a_frame_size_not_a_multiple_of_64(lib, fs):
    assert init(lib, BASE, FAR, fs=fs) == -errno.EINVAL


def test_init_refuses_nframes_times_frame_size_of_2_32(lib):
    assert init(lib, BASE, FAR, nframes=2**26, fs=64) == -errno.EINVAL
    assert init(lib, BASE, FAR, nframes=2**26 - 1, fs=64) == 0


@pytest.mark.parametrize("gap", [0, 64, 4 * 64, 4 * 64 + 64])
def test_init_refuses_overlapping_channels_header_included(lib, gap):
    """Stricter than the reference: it accepts gap == nframes*frame_size (4*64
    here) although the channels then share 128 bytes (specs §A.1.1 QUIRK)."""
    assert init(lib, BASE, BASE + gap) == -errno.EINVAL
    assert init(lib, BASE + gap, BASE) == -errno.EINVAL


def test_init_accepts_channels_spaced_by_total_queue_size(lib):
    gap = lib.tegra_ivc_total_queue_size(4 * 64)
    assert init(lib, BASE, BASE + gap) == 0
    assert init(lib, BASE + gap, BASE) == 0


def test_init_refuses_null_notify_and_null_ivc(lib):
    assert init(lib, BASE, FAR, notify=NOTIFY()) == -errno.EINVAL
    assert lib.tegra_ivc_init(None, BASE, FAR, 4, 64, NOOP, None) == -errno.EINVAL


def test_init_frame_size_above_int_max_is_e2big_after_the_geometry_checks(lib):
    assert init(lib, BASE, FAR, nframes=1, fs=2**31) == -errno.E2BIG
    assert init(lib, BASE, FAR, nframes=0, fs=2**32 - 64) == -errno.E2BIG
    # nframes * frame_size overflows first (the reference's order)
    assert init(lib, BASE, FAR, nframes=2, fs=2**31) == -errno.EINVAL


def test_init_touches_no_shared_memory_and_starts_at_position_0(lib):
    mem = Mem(2 * 384, fill=0xA5)
    ivc = TegraIvc(w_pos=3, r_pos=3, flags=3)
    assert init(lib, mem.addr, mem.addr + 384, ivc=ivc) == 0
    assert bytes(mem.view) == b"\xa5" * 768
    assert (ivc.w_pos, ivc.r_pos, ivc.nframes, ivc.frame_size, ivc.flags) == (0, 0, 4, 64, 0)
    assert (ivc.rx_channel, ivc.tx_channel) == (mem.addr, mem.addr + 384)


def test_set_flags_refuses_unknown_bits(lib):
    p = Pair(lib)
    assert lib.tegra_ivc_set_flags(p.a.ref, 4) == -errno.EINVAL
    assert lib.tegra_ivc_set_flags(p.a.ref, FLAG_ENOSPC | FLAG_OE4T) == 0
    assert p.a.ivc.flags == 3


def test_zero_frames_init_but_never_carry_anything(lib):
    p = Pair(lib, nframes=0)
    assert (p.a.can_read(), p.a.can_write()) == (0, 0)
    assert p.a.write(b"x") == -errno.ENOMEM and p.b.read(0) == -errno.ENOMEM
    assert p.a.sync() == -errno.EINVAL


# --- the reset handshake -----------------------------------------------------------------

@pytest.mark.parametrize("variant, notifications", [
    (0, ["A", "B", "A", "B"]),           # upstream: ACK + EST notifies
    (FLAG_OE4T, ["A", "B", "A"]),        # OE4T latest: it does not
])
def test_reset_by_one_end(lib, variant, notifications):
    p = Pair(lib, flags=variant)
    p.a.reset()
    assert (p.a.state, p.b.state) == (SYNC, EST)
    assert p.a.notified() == -errno.EAGAIN          # peer EST: wait
    assert p.b.notified() == -errno.EAGAIN          # sees SYNC -> ACK
    assert (p.a.state, p.b.state) == (SYNC, ACK)
    assert p.a.notified() == 0                      # sees ACK -> EST
    assert (p.a.state, p.b.state) == (EST, ACK)
    assert p.b.notified() == 0                      # sees EST -> EST
    assert (p.a.state, p.b.state) == (EST, EST)
    assert p.log == notifications
    assert p.a.notified() == 0 and p.b.notified() == 0 and p.log == notifications


def test_reset_by_one_end_driven_by_its_notifications(lib):
    p = Pair(lib)
    p.a.reset()
    p.pump()
    assert (p.a.state, p.b.state) == (EST, EST)
    assert p.log == ["A", "B", "A", "B"]


def test_simultaneous_reset_in_turn_settles_established(lib):
    p = Pair(lib)
    p.a.reset()
    p.b.reset()
    assert p.a.notified() == -errno.EAGAIN          # sees SYNC -> ACK
    assert p.b.notified() == 0                      # SYNC, sees ACK -> EST
    assert p.a.notified() == 0                      # ACK, sees EST -> EST
    assert (p.a.state, p.b.state) == (EST, EST)
    p.pump()
    assert (p.a.state, p.b.state) == (EST, EST)


def test_simultaneous_reset_both_ack_then_both_established(lib):
    """Both saw the other's SYNC before either answered: both zeroed their
    counters and went to ACK (done here by two notified() calls, each seeing a
    SYNC that is put back for the second one)."""
    p = Pair(lib)
    p.a.reset()
    p.b.reset()
    assert p.a.notified() == -errno.EAGAIN          # A: SYNC seen -> ACK
    p.a.state = SYNC                                # B has not seen A's ACK yet
    assert p.b.notified() == -errno.EAGAIN          # B: SYNC seen -> ACK
    p.a.state = ACK
    assert (p.a.state, p.b.state) == (ACK, ACK)
    assert p.a.notified() == 0 and p.b.notified() == 0
    assert (p.a.state, p.b.state) == (EST, EST)


def expected_transition(local: int, remote: int, oe4t: bool) -> tuple[int, bool, bool]:
    """(new local state, counters cleared, notified) per specs §A.1.2."""
    if remote == SYNC:
        return ACK, True, True
    if local == SYNC and remote == ACK:
        return EST, True, True
    if local == ACK and remote == ACK:
        return EST, False, True
    if local == ACK and remote == EST:
        return EST, False, not oe4t
    if local == ACK:                                # garbage remote
        return (ACK, False, False) if oe4t else (EST, False, True)
    return local, False, False


@pytest.mark.parametrize("variant", [0, FLAG_OE4T], ids=["upstream", "oe4t"])
@pytest.mark.parametrize("remote", [EST, SYNC, ACK, GARBAGE], ids=["rEST", "rSYNC", "rACK", "r7"])
@pytest.mark.parametrize("local", [EST, SYNC, ACK, GARBAGE], ids=["EST", "SYNC", "ACK", "7"])
def test_handshake_table(lib, local, remote, variant):
    p = Pair(lib, nframes=4, flags=variant)
    # counters in use: A's tx w_count 7 (B consumed 5), B's tx w_count 9 (A consumed 6)
    p.mem.set_u32(p.chan + W_COUNT, 7)
    p.mem.set_u32(p.chan + R_COUNT, 5)
    p.mem.set_u32(0 + W_COUNT, 9)
    p.mem.set_u32(0 + R_COUNT, 6)
    assert p.a.sync() == 0 and (p.a.ivc.w_pos, p.a.ivc.r_pos) == (3, 2)
    p.a.state, p.b.state = local, remote
    state, cleared, notifies = expected_transition(local, remote, bool(variant))

    rc = p.a.notified()

    assert p.a.state == state
    assert rc == (0 if state == EST else -errno.EAGAIN)
    assert p.a.counters() == ((0, 0) if cleared else (7, 6))
    assert (p.a.ivc.w_pos, p.a.ivc.r_pos) == ((0, 0) if cleared else (3, 2))
    assert p.log == (["A"] if notifies else [])
    # the counters the peer owns are never touched, nor its state
    assert (p.mem.u32(0 + W_COUNT), p.mem.u32(p.chan + R_COUNT), p.b.state) == (9, 5, remote)


@pytest.mark.parametrize("state", [SYNC, ACK, GARBAGE])
def test_data_calls_fail_with_econnreset_until_established(lib, state):
    p = Pair(lib)
    p.establish()
    assert p.b.write(b"pending") == 7               # a frame waiting for A
    p.log.clear()
    p.a.state = state
    E = -errno.ECONNRESET
    assert p.a.write(b"x") == E and p.a.read(1) == E
    assert p.a.peek(0, 1) == E and p.a.poke(b"x", 0) == E
    assert p.a.read_advance() == E and p.a.write_advance() == E
    assert p.a.rx_frame() == (None, E) and p.a.tx_frame() == (None, E)
    assert p.lib.tegra_ivc_read_get_next_frame(p.a.ref) is None
    assert p.lib.tegra_ivc_write_get_next_frame(p.a.ref) is None
    assert (p.a.can_read(), p.a.can_write()) == (0, 0)
    assert p.log == []


def test_reset_mid_stream_discards_queued_frames(lib):
    p = Pair(lib)
    p.establish()
    for i in range(3):
        p.a.write(bytes([i]))
    p.b.write(b"b0")
    assert p.b.read(1) == b"\x00"
    p.b.reset()
    assert p.b.read(1) == -errno.ECONNRESET and p.a.write(b"z") == 1
    p.pump()
    assert (p.a.state, p.b.state) == (EST, EST)
    assert p.a.counters() == (0, 0) and p.b.counters() == (0, 0)
    assert [p.mem.u32(o) for o in (0, 64, p.chan, p.chan + 64)] == [0, 0, 0, 0]
    assert p.b.read(1) == -errno.ENOMEM and p.a.read(1) == -errno.ENOMEM
    assert p.a.write(b"new") == 3 and p.b.read(3) == b"new"
    assert p.a.frame(p.chan, 0)[:3] == b"new"       # from position 0 again


def test_a_zeroed_channel_is_usable_without_reset(lib):
    p = Pair(lib)
    assert (p.a.state, p.b.state) == (EST, EST)
    assert p.a.write(b"hi") == 2 and p.b.read(2) == b"hi"
    assert p.b.write(b"yo") == 2 and p.a.read(2) == b"yo"


# --- data -------------------------------------------------------------------------------

def test_fill_then_full_then_fifo_then_empty(lib, flags):
    p = Pair(lib, nframes=4, fs=64, flags=flags)
    p.establish()
    for i in range(4):
        assert p.a.can_write() == 1
        assert p.a.write(frame_bytes(i, 64)) == 64
    assert p.a.can_write() == 0
    assert p.a.write(b"x") == empty_full(flags)
    assert p.a.poke(b"x", 0) == empty_full(flags)
    assert p.a.tx_frame() == (None, empty_full(flags))
    assert p.a.write_advance() == empty_full(flags)
    for i in range(4):
        assert p.b.can_read() == 1
        assert p.b.read(64) == frame_bytes(i, 64)
    assert p.b.can_read() == 0
    assert p.b.read(64) == empty_full(flags)
    assert p.b.peek(0, 1) == empty_full(flags)
    assert p.b.rx_frame() == (None, empty_full(flags))
    assert p.b.read_advance() == empty_full(flags)


def test_sizes_beyond_the_frame_are_e2big_checked_before_state(lib):
    p = Pair(lib, fs=64)
    p.establish()
    assert p.a.write(bytes(65)) == -errno.E2BIG
    assert p.b.read(65) == -errno.E2BIG
    p.a.state = SYNC
    assert p.a.write(bytes(65)) == -errno.E2BIG and p.a.read(65) == -errno.E2BIG
    assert p.a.peek(65, 0) == -errno.E2BIG and p.a.poke(b"", 65, 0) == -errno.E2BIG


def test_write_zero_pads_the_frame_and_returns_size(lib):
    p = Pair(lib, nframes=2, fs=128, fill=0xEE)
    p.establish()
    assert p.a.write(b"abc") == 3
    assert p.a.frame(p.chan, 0) == b"abc" + bytes(125)
    assert p.b.read(128) == b"abc" + bytes(125)
    assert p.a.write(b"") == 0 and p.b.read(128) == bytes(128)


def test_a_short_read_consumes_the_whole_frame(lib):
    p = Pair(lib)
    p.establish()
    p.a.write(b"first frame")
    p.a.write(b"second frame")
    assert p.b.read(5) == b"first"
    assert p.b.read(6) == b"second"
    assert p.b.read(0) == -errno.ENOMEM


@pytest.mark.parametrize("off, count, ok", [
    (0, 0, True), (0, 64, True), (63, 1, True), (64, 0, True), (32, 32, True),
    (64, 1, False), (65, 0, False), (0, 65, False), (1, 64, False),
    (1, 2**64 - 1, False), (2**64 - 1, 2, False), (2**63, 2**63, False),
])
def test_peek_and_poke_bounds(lib, off, count, ok):
    p = Pair(lib, fs=64)
    p.establish()
    p.a.write(frame_bytes(1, 64))
    want = frame_bytes(1, 64)[off:off + count] if ok else -errno.E2BIG
    assert p.b.peek(off, count) == want
    data = bytes(range(count)) if ok else b"\x00" * 64
    assert p.a.poke(data, off, count) == (count if ok else -errno.E2BIG)


def test_peek_neither_consumes_nor_notifies(lib):
    p = Pair(lib, nframes=1)
    p.establish()
    p.a.write(b"abcdef")
    p.log.clear()
    assert p.b.peek(2, 3) == b"cde" and p.b.peek(0, 2) == b"ab"
    assert p.log == [] and p.b.read(6) == b"abcdef"


def test_poke_then_write_advance_sends_the_poked_bytes(lib):
    p = Pair(lib, fs=64, fill=0x11)
    p.establish()
    assert p.a.poke(b"XY", 10) == 2 and p.a.poke(b"Z", 63) == 1
    assert p.b.can_read() == 0                     # not sent yet
    assert p.a.write_advance() == 0
    got = p.b.read(64)
    assert got[10:12] == b"XY" and got[63:] == b"Z"
    assert got[:10] == b"\x11" * 10                # not zeroed: poke sends the frame as is


def test_get_next_frame_and_advance_equal_read_and_write(lib):
    p = Pair(lib, nframes=3, fs=64)
    p.establish()
    for i in range(7):
        ptr, err = p.a.tx_frame()
        assert err == 0 and ptr == p.mem.addr + p.chan + HDR + (i % 3) * 64
        ctypes.memmove(ptr, frame_bytes(i, 64), 64)
        assert p.a.write_advance() == 0
        assert p.lib.tegra_ivc_read_get_next_frame(p.b.ref) == ptr
        ptr2, err = p.b.rx_frame()
        assert (ptr2, err) == (ptr, 0)
        assert ctypes.string_at(ptr2, 64) == frame_bytes(i, 64)
        assert p.b.read_advance() == 0
        # and the copying calls interleave with the zero-copy ones
        assert p.b.write(frame_bytes(100 + i, 64)) == 64
        assert p.a.read(64) == frame_bytes(100 + i, 64)
    assert p.a.counters() == (7, 7) and p.b.counters() == (7, 7)


def test_tx_empty_and_tx_frames_available_follow_the_peer(lib):
    p = Pair(lib, nframes=4)
    p.establish()
    assert (p.a.tx_empty(), p.a.tx_frames_available()) == (1, 4)
    p.a.write(b"1")
    p.a.write(b"2")
    assert (p.a.tx_empty(), p.a.tx_frames_available()) == (0, 2)
    p.b.read(1)
    p.b.read(1)
    assert (p.a.tx_empty(), p.a.tx_frames_available()) == (1, 4)


# --- notifications ------------------------------------------------------------------------

@pytest.mark.parametrize("nframes", [1, 2, 4, 5])
def test_writer_notifies_on_0_to_1_and_reader_on_nframes_to_nframes_minus_1(lib, nframes):
    p = Pair(lib, nframes=nframes)
    p.establish()
    for i in range(nframes):
        p.a.write(bytes([i]))
        assert p.log == ["A"], f"after write {i}"
    for i in range(nframes):
        p.b.read(1)
        assert p.log == ["A", "B"], f"after read {i}"
    p.log.clear()
    p.a.write(b"x")                                 # empty again: 0 -> 1
    assert p.log == ["A"]


def test_notifications_against_a_model_on_random_traffic(lib):
    rng = random.Random(7)
    for nframes in (1, 3, 4):
        p = Pair(lib, nframes=nframes)
        p.establish()
        occupancy = 0
        for step in range(2000):
            before = len(p.log)
            if rng.random() < 0.5:
                rc = (p.a.write(b"w") if rng.random() < 0.5 else
                      (p.a.tx_frame()[1] or p.a.write_advance()))
                if occupancy == nframes:
                    assert rc == -errno.ENOMEM
                else:
                    occupancy += 1
                    assert p.log[before:] == (["A"] if occupancy == 1 else []), step
            else:
                rc = (p.b.read(1) if rng.random() < 0.5 else
                      (p.b.rx_frame()[1] or p.b.read_advance()))
                if occupancy == 0:
                    assert rc == -errno.ENOMEM
                else:
                    occupancy -= 1
                    assert p.log[before:] == (["B"] if occupancy == nframes - 1 else []), step


# --- counter wrap and a lying peer ------------------------------------------------------

@pytest.mark.parametrize("nframes", [4, 3])
def test_counters_wrap_at_2_32(lib, nframes):
    p = Pair(lib, nframes=nframes)
    p.establish()
    for off in (0, p.chan):
        p.mem.set_u32(off + W_COUNT, 0xFFFFFFF0)
        p.mem.set_u32(off + R_COUNT, 0xFFFFFFF0)
    assert p.a.sync() == 0 and p.b.sync() == 0
    start = 0xFFFFFFF0 % nframes
    assert (p.a.ivc.w_pos, p.a.ivc.r_pos) == (start, start)
    rng = random.Random(nframes)
    sent = got = 0
    while got < 40:
        while sent < 40 and p.a.can_write() and rng.random() < 0.7:
            assert p.a.write(sent.to_bytes(4, "little")) == 4
            sent += 1
        while got < sent and rng.random() < 0.7:
            assert p.b.read(4) == got.to_bytes(4, "little")
            got += 1
    assert p.mem.u32(p.chan + W_COUNT) == p.mem.u32(p.chan + R_COUNT) == (0xFFFFFFF0 + 40) % 2**32
    assert p.b.can_read() == 0 and p.a.tx_empty() == 1 and p.a.tx_frames_available() == nframes


def test_an_over_full_peer_reads_as_silence(lib):
    p = Pair(lib, nframes=4)
    p.establish()
    p.mem.set_u32(0 + R_COUNT, 100)                 # A's rx: as A consumed 100
    p.mem.set_u32(0 + W_COUNT, 100 + 4)             # exactly full: readable
    assert p.a.can_read() == 1 and p.a.peek(0, 1) == b"\x00"
    p.mem.set_u32(0 + W_COUNT, 100 + 4 + 1)         # over-full
    assert p.a.can_read() == 0
    assert p.a.read(1) == -errno.ENOMEM and p.a.peek(0, 1) == -errno.ENOMEM
    assert p.a.rx_frame() == (None, -errno.ENOMEM) and p.a.read_advance() == -errno.ENOMEM
    p.mem.set_u32(0 + W_COUNT, 99)                  # behind r_count: hugely over-full
    assert p.a.can_read() == 0


def test_a_peer_lying_about_r_count_blocks_the_writer(lib):
    p = Pair(lib, nframes=4)
    p.establish()
    p.a.write(b"1")
    p.mem.set_u32(p.chan + R_COUNT, 2**32 - 3)      # w - r = 4: full
    assert p.a.can_write() == 0 and p.a.write(b"x") == -errno.ENOMEM
    assert p.a.tx_frames_available() == 0
    p.mem.set_u32(p.chan + R_COUNT, 2**32 - 10)     # w - r = 11: over capacity, still full
    assert p.a.can_write() == 0 and p.a.write(b"x") == -errno.ENOMEM
    assert p.a.tx_frames_available() == (4 - 11) % 2**32   # raw arithmetic, as the reference
    assert p.a.tx_empty() == 1                      # over-full counts as empty
    p.mem.set_u32(p.chan + R_COUNT, 5)              # r ahead of w
    assert p.a.can_write() == 0 and p.a.tx_empty() == 1


def test_a_peer_scribbling_on_our_counters_never_moves_us_out_of_the_channel(lib):
    p = Pair(lib, nframes=3, fs=64)
    p.establish()
    rng = random.Random(3)
    for _ in range(500):
        for off in (0, 64, p.chan, p.chan + 64):
            if rng.random() < 0.3:
                p.mem.set_u32(off, rng.choice([0, 1, 2, 3, 4, 2**31, 2**32 - 1,
                                               rng.getrandbits(32)]))
        if rng.random() < 0.1:
            p.mem.set_u32(p.chan + STATE, rng.choice([EST, EST, GARBAGE]))
        for end in (p.a, p.b):
            end.write(b"x" * rng.randrange(65))
            end.read(rng.randrange(65))
            end.peek(0, 64)
            end.poke(b"y", 63)
            ptr, err = end.tx_frame()
            assert err or p.mem.addr + end.tx_off + HDR <= ptr < p.mem.addr + end.tx_off + p.chan
            ptr, err = end.rx_frame()
            assert err or p.mem.addr + end.rx_off + HDR <= ptr < p.mem.addr + end.rx_off + p.chan
            end.read_advance()
            end.write_advance()
            assert end.ivc.w_pos < 3 and end.ivc.r_pos < 3


def test_garbage_peer_state_does_not_stop_an_established_end(lib):
    p = Pair(lib)
    p.establish()
    p.b.state = GARBAGE
    assert p.a.notified() == 0                      # EST + garbage: nothing
    assert p.a.write(b"ok") == 2 and p.a.state == EST


# --- channel_sync -------------------------------------------------------------------------

def test_channel_sync_takes_positions_from_the_counters(lib):
    p = Pair(lib, nframes=4)
    p.mem.set_u32(p.chan + W_COUNT, 7)              # A's tx w_count
    p.mem.set_u32(0 + R_COUNT, 3)                   # A's rx r_count
    assert p.a.sync() == 0
    assert (p.a.ivc.w_pos, p.a.ivc.r_pos) == (3, 3)
    assert lib.tegra_ivc_channel_sync(None) == -errno.EINVAL


def test_channel_sync_resumes_a_queue_in_use(lib):
    p = Pair(lib, nframes=4)
    p.establish()
    for i in range(6):
        p.a.write(bytes([i]))
        p.b.read(1)
    p.a.write(b"\x06")
    # B restarts without a reset: a fresh endpoint over the same channels
    fresh = End(lib, "B", p.mem, p.chan, 0, 4, 64, p.log)
    assert (fresh.ivc.w_pos, fresh.ivc.r_pos) == (0, 0)
    assert fresh.sync() == 0 and fresh.ivc.r_pos == 6 % 4
    assert fresh.read(1) == b"\x06"


# --- the C driver: two threads -------------------------------------------------------------

@pytest.mark.parametrize("args", [("200000", "16", "128"), ("100000", "1", "64"),
                                  ("30000", "3", "4096")])
def test_two_endpoints_on_two_threads(lib, args):
    proc = subprocess.run([str(INTEROP / "build" / "ivc_stress"), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok ")


# --- C against Python ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def protocol():
    from paravm.services.ivc import protocol
    return protocol


class CSide:
    """The C endpoint behind the common interface of the interop tests:
    send/recv return 0 / bytes or a negative errno."""

    def __init__(self, end: End):
        self.end, self.fs = end, end.fs

    def reset(self):
        self.end.reset()

    def notified(self):
        return self.end.notified()

    def send(self, image: bytes, length: int, how: int) -> int:
        e = self.end
        if how == 0:
            rc = e.write(image[:length])
            return 0 if rc == length else rc
        if how == 1:
            ptr, err = e.tx_frame()
            if err:
                return err
            ctypes.memmove(ptr, image, self.fs)
            return e.write_advance()
        rc = e.poke(image, 0)
        return rc if rc < 0 else e.write_advance()

    def recv(self, how: int) -> bytes | int:
        e = self.end
        if how == 0:
            return e.read(self.fs)
        if how == 1:
            data = e.peek(0, self.fs)
            if isinstance(data, int):
                return data
            return data if e.read_advance() == 0 else -1
        if how == 2:
            ptr, err = e.rx_frame()
            if err:
                return err
            data = ctypes.string_at(ptr, self.fs)
            return data if e.read_advance() == 0 else -1
        return e.read(12)                           # short read: header only


class PySide:
    """The Python endpoint behind the same interface."""

    def __init__(self, protocol, chan):
        self.chan, self.fs, self.IvcError = chan, chan.frame_size, protocol.IvcError

    def reset(self):
        self.chan.reset()

    def notified(self):
        return self.chan.notified()

    def send(self, image: bytes, length: int, how: int) -> int:
        c = self.chan
        try:
            if how == 0:
                assert c.write(image[:length]) == length
            elif how == 1:
                c.write_get_next_frame()[:] = image
                c.write_advance()
            else:
                assert c.write_poke(image, 0) == self.fs
                c.write_advance()
        except self.IvcError as e:
            return -e.errno
        return 0

    def recv(self, how: int) -> bytes | int:
        c = self.chan
        try:
            if how == 0:
                return c.read(self.fs)
            if how == 1:
                data = c.read_peek(0, self.fs)
                c.read_advance()
                return data
            if how == 2:
                data = bytes(c.read_get_next_frame())
                c.read_advance()
                return data
            buf = bytearray(12)
            c.read_into(buf)
            return bytes(buf)
        except self.IvcError as e:
            return -e.errno


def frame_image(sender: int, epoch: int, seq: int, fs: int) -> tuple[bytes, int]:
    """Frame seq of sender: u32 seq, u32 epoch, u32 length, payload, zeros."""
    length = 12 + (seq * 2654435761) % (fs - 11)
    payload = bytes((seq * 31 + i * 7 + sender * 101) & 0xFF for i in range(length - 12))
    head = struct.pack("<III", seq, epoch, length)
    return (head + payload).ljust(fs, b"\0"), length


class Link:
    """A C endpoint and a Python endpoint over one buffer, with lazy delivery of
    notifications (each goes to the other end's notified(), in order)."""

    def __init__(self, lib, protocol, nframes, fs, c_first, variant, err):
        self.chan = lib.tegra_ivc_total_queue_size(nframes * fs)
        self.mem = Mem(2 * self.chan)
        self.pending = {0: 0, 1: 0}               # notifications waiting for side i
        self.sent_notifies = {0: 0, 1: 0}
        # side 0 = C, side 1 = Python; the rx-first end has its rx at offset 0
        c_rx, c_tx = (0, self.chan) if c_first else (self.chan, 0)
        flags = (FLAG_OE4T if variant == "oe4t" else 0) | (FLAG_ENOSPC if err == errno.ENOSPC
                                                           else 0)
        end = End(lib, "C", self.mem, c_rx, c_tx, nframes, fs, _Counter(self, 1), flags)
        py = protocol.Channel(self.mem.view[c_tx:c_tx + self.chan],
                              self.mem.view[c_rx:c_rx + self.chan], nframes, fs,
                              lambda: self._ring(0), variant=variant, empty_full_errno=err)
        self.sides = [CSide(end), PySide(protocol, py)]
        self.c, self.py = end, py

    def _ring(self, to: int) -> None:
        self.pending[to] += 1
        self.sent_notifies[1 - to] += 1

    def deliver(self, side: int) -> int | None:
        if not self.pending[side]:
            return None
        self.pending[side] -= 1
        return self.sides[side].notified()

    def pump(self) -> None:
        for _ in range(1000):
            if not any(self.pending.values()):
                return
            for side in (0, 1):
                self.deliver(side)
        raise AssertionError("notification storm")

    def states(self) -> tuple[int, int]:
        return self.c.state, self.mem.u32(self.c.rx_off + STATE)


class _Counter(list):
    """A notification log for End that rings the other side of a Link."""

    def __init__(self, link: Link, to: int):
        super().__init__()
        self.link, self.to = link, to

    def append(self, who) -> None:
        self.link._ring(self.to)


@pytest.mark.parametrize("variant", ["upstream", "oe4t"])
@pytest.mark.parametrize("c_first", [True, False], ids=["C-rx-first", "Py-rx-first"])
@pytest.mark.parametrize("resetter", [0, 1, "both"], ids=["C-resets", "Py-resets", "both"])
def test_c_and_python_handshake(lib, protocol, variant, c_first, resetter):
    link = Link(lib, protocol, 4, 64, c_first, variant, errno.ENOMEM)
    for side in ((0, 1) if resetter == "both" else (resetter,)):
        link.sides[side].reset()
    link.pump()
    assert link.states() == (EST, EST)
    assert link.sides[0].notified() == 0 and link.sides[1].notified() == 0
    if resetter != "both":
        other = 1 - resetter
        # resetter: reset + EST; other: ACK (+ EST upstream)
        assert link.sent_notifies[resetter] == 2
        assert link.sent_notifies[other] == (2 if variant == "upstream" else 1)
    for side in (0, 1):
        image, n = frame_image(side, 0, 1, 64)
        assert link.sides[side].send(image, n, 0) == 0
        assert link.sides[1 - side].recv(0) == image


@pytest.mark.parametrize("variant, err", [("upstream", errno.ENOMEM), ("oe4t", errno.ENOMEM),
                                          ("upstream", errno.ENOSPC)])
@pytest.mark.parametrize("c_first", [True, False], ids=["C-rx-first", "Py-rx-first"])
def test_c_and_python_random_traffic_with_resets(lib, protocol, c_first, variant, err):
    """2000+ frames each way through random mixes of the copying and zero-copy
    calls, lazily delivered notifications and a few resets by either side.
    Every frame received is intact; within an epoch (between resets) each
    side receives the other's frames in order with none missing; the frames
    sent after the last reset all arrive."""
    fs, nframes = 128, 5
    link = Link(lib, protocol, nframes, fs, c_first, variant, err)
    rng = random.Random(f"{c_first}/{variant}/{err}")
    epoch = 0
    seq = [0, 0]                                  # next sequence number each side sends
    last = [None, None]                           # (epoch, seq) last received by each side
    got = [0, 0]
    resets = 0

    def receive(side: int, how: int) -> bool:
        data = link.sides[side].recv(how)
        if isinstance(data, int):
            assert data in (-err, -errno.ECONNRESET), data
            return False
        rseq, repoch, length = struct.unpack_from("<III", data)
        image, _ = frame_image(1 - side, repoch, rseq, fs)
        assert data == image[:len(data)], f"side {side} got a damaged frame {rseq}"
        if last[side] is not None:
            lepoch, lseq = last[side]
            if repoch == lepoch:
                assert rseq == lseq + 1, f"side {side}: frame {rseq} after {lseq}"
            else:
                assert repoch > lepoch and rseq > lseq
        last[side] = (repoch, rseq)
        got[side] += 1
        return True

    link.sides[0].reset()
    link.pump()
    while min(seq) < 2000:
        side = rng.randrange(2)
        r = rng.random()
        if r < 0.4:
            image, n = frame_image(side, epoch, seq[side], fs)
            rc = link.sides[side].send(image, n, rng.randrange(3))
            if rc == 0:
                seq[side] += 1
            else:
                assert rc in (-err, -errno.ECONNRESET), rc
        elif r < 0.8:
            receive(side, rng.randrange(4))
        elif r < 0.997:
            link.deliver(side)
        elif resets < 8:
            resets += 1
            epoch += 1
            link.sides[side].reset()
    link.pump()
    assert link.states() == (EST, EST)
    # drain, then a final burst with no reset: all of it arrives, in order
    for side in (0, 1):
        while receive(side, rng.randrange(4)):
            pass
    for _ in range(3 * nframes):
        for side in (0, 1):
            image, n = frame_image(side, epoch + 1, seq[side], fs)
            assert link.sides[side].send(image, n, rng.randrange(3)) == 0
            seq[side] += 1
            receive(1 - side, rng.randrange(4))
    for side in (0, 1):
        assert last[side] == (epoch + 1, seq[1 - side] - 1)
        assert got[side] > 1000
    assert resets >= 1
