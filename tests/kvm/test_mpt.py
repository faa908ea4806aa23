"""The MPT services with KVM (specs/grant-mpt.md part E): page tracking,
trap areas, MSI, map_gfn_to_mfn, the OpRegion and instance life cycle
driven from the host while real guests run (tests/guests/mpt.c, one op per
argument; ``sync:N`` hands over to the host), and the example mediated GPU
(examples/mgpu) drawing the picture tests/kvm/mgpu_reference.py draws.

A device type here is :class:`RecType`: it forwards each callback to the
recording instance (:class:`Vgpu`) it was called for.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

import paravm
from paravm.arch.x86 import layout as L
from paravm.config import load_manifest
from paravm.devices.mgpu import OPREGION_TEXT, MgpuType
from paravm.services.mpt import abi as A

from guest_manifest import wait_console

pytestmark = pytest.mark.kvm

REPO = Path(__file__).resolve().parents[2]
HOLE = 0xE0000000            # a GPA in the 32-bit hole: trap areas, mapped frames
INVALID = A.INTEL_GVT_INVALID_ADDR
WAIT = 20


def pattern(n: int) -> bytes:
    """mpt.c's pattern: byte i = (i * 7 + (i >> 8) + 1) & 0xFF."""
    return bytes((i * 7 + (i >> 8) + 1) & 0xFF for i in range(n))


def mmio_value(gpa: int, width: int) -> bytes:
    """What RecType answers to a read of *width* bytes at *gpa*."""
    return ((gpa * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)).to_bytes(8, "little")[:width]


class Vgpu:
    """A recording instance: what its type was called with."""

    def __init__(self, mpt) -> None:
        self.mpt, self.handle = mpt, 0
        self.tracked: list[tuple[int, bytes]] = []   # (gpa, data) per write_protect_handler
        self.memory_then: list[bytes] = []           # guest memory at gpa during that call
        self.mmio: list[tuple] = []                  # ("r", gpa, width) / ("w", gpa, data)
        self.released = 0


class RecType:
    @staticmethod
    def emulate_mmio_read(vgpu: Vgpu, gpa: int, data: memoryview) -> None:
        vgpu.mmio.append(("r", gpa, len(data)))
        data[:] = mmio_value(gpa, len(data))

    @staticmethod
    def emulate_mmio_write(vgpu: Vgpu, gpa: int, data: memoryview) -> None:
        vgpu.mmio.append(("w", gpa, bytes(data)))

    @staticmethod
    def write_protect_handler(vgpu: Vgpu, gpa: int, data: bytes) -> int:
        now = bytearray(len(data))
        ret = vgpu.mpt.read_gpa(vgpu.handle, gpa, now)
        vgpu.memory_then.append(bytes(now) if ret == 0 else ret)
        vgpu.tracked.append((gpa, bytes(data)))
        return 0

    @staticmethod
    def release(vgpu: Vgpu) -> None:
        vgpu.released += 1


@pytest.fixture(scope="module")
def mpt_elf(test_guests):
    return test_guests / "mpt.elf"


@pytest.fixture
def hv():
    with paravm.Hypervisor(output=None) as h:
        assert h.mpt.host_init("t", RecType) == 0
        yield h


def new_guest(hv, mpt_elf, name, args, *, vcpus=1, type_name="t"):
    """A domain running mpt.c with *args* (not started) and an instance of
    *type_name* attached to it."""
    dom = hv.create_domain(name, mpt_elf, memory_mib=16, vcpus=vcpus, args=args)
    v = Vgpu(hv.mpt)
    ret, v.handle = hv.mpt.attach_vgpu(type_name, v, dom)
    assert ret == 0 and v.handle >= A.HANDLE_MIN
    return dom, v


def at_sync(dom, n: int) -> int:
    """Wait until the guest is at ``sync:n``; the GPA of its sync word."""
    return int(wait_console(dom, rf"sync {n} at (0x[0-9a-f]+)\n", WAIT).group(1), 16)


def resume(dom, gpa: int, n: int, v: Vgpu | None = None) -> None:
    """Let the guest past ``sync:n``: the host writes *n* to its sync word
    (with the MPT's write_gpa through *v*, else straight into its memory)."""
    if v is not None:
        assert v.mpt.write_gpa(v.handle, gpa, n.to_bytes(4, "little")) == 0
    else:
        dom.memory.write_u32(gpa, n)
    wait_console(dom, rf"synced {n}\n", WAIT)


def alloc(dom) -> int:
    return int(wait_console(dom, r"alloc (0x[0-9a-f]+)\n", WAIT).group(1), 16)


def finished(dom, status=0):
    res = dom.wait(WAIT)
    assert res is not None, dom.console.text
    assert res.how == "exited" and res.status == status, res.describe() + "\n" + dom.console.text
    return res


def crashed(dom):
    res = dom.wait(WAIT)
    assert res is not None, dom.console.text
    assert res.how == "crashed", res.describe() + "\n" + dom.console.text
    return res


def loads(dom, width: int) -> dict[int, int]:
    """The guest's ``r<width>`` lines: address -> value."""
    return {int(a, 16): int(v, 16)
            for a, v in re.findall(rf"r{width} (0x[0-9a-f]+) = (0x[0-9a-f]+)\n", dom.console.text)}


def le(value: int, width: int) -> bytes:
    return value.to_bytes(width, "little")


# --- 1. page tracking --------------------------------------------------------------------

WRITES = [(1, 0x001, 0xAB), (2, 0x012, 0xBEEF), (4, 0x024, 0xDEADBEEF),
          (8, 0x048, 0x0123456789ABCDEF)]


def test_page_tracking_reports_each_write_after_it_landed(hv, mpt_elf):
    args = ["alloc:2", "sync:1"]
    args += [f"w{w}:P+{off:#x}:{val:#x}" for w, off, val in WRITES]
    args += ["r8:P+0x48", "w8:Q+8:0x55", "sync:2", "w4:P+0x80:0x11223344", "sync:3",
             "w8:P+0x100:0x77", "w8:P+0x100:0x78"]
    mpt = hv.mpt
    dom, v = new_guest(hv, mpt_elf, "track", args)
    dom.start()
    p = alloc(dom)
    gfn, q = p >> 12, p + 4096
    s = at_sync(dom, 1)
    assert mpt.enable_page_track(v.handle, gfn) == 0
    assert mpt.enable_page_track(v.handle, gfn) == 0           # tracked already: 0
    assert mpt.disable_page_track(v.handle, gfn + 1) == 0      # Q not tracked: 0
    assert dom.ram_slots.count == 4                            # low MiB, below, P, above
    resume(dom, s, 1, v)

    s = at_sync(dom, 2)
    # exactly the four writes to P, in order, widths 1/2/4/8, little-endian data;
    # neither the load from P nor the store to Q
    want = [(p + off, le(val, w)) for w, off, val in WRITES]
    assert v.tracked == want
    # each had landed in guest memory when the handler ran
    assert v.memory_then == [data for _, data in want]
    for gpa, data in want:
        buf = bytearray(len(data))
        assert mpt.read_gpa(v.handle, gpa, buf) == 0 and bytes(buf) == data
    assert loads(dom, 8)[p + 0x48] == 0x0123456789ABCDEF
    buf = bytearray(8)
    assert mpt.read_gpa(v.handle, q + 8, buf) == 0 and bytes(buf) == le(0x55, 8)
    # host writes to a tracked page are not reported
    assert mpt.write_gpa(v.handle, p + 0x200, b"host") == 0
    assert len(v.tracked) == 4
    assert mpt.disable_page_track(v.handle, gfn) == 0
    assert mpt.disable_page_track(v.handle, gfn) == 0          # untracked now: 0
    assert dom.ram_slots.count == 2                            # merged back
    resume(dom, s, 2, v)

    s = at_sync(dom, 3)
    assert len(v.tracked) == 4                                 # not tracked: not reported
    assert dom.memory.read_u32(p + 0x80) == 0x11223344
    assert mpt.enable_page_track(v.handle, gfn) == 0
    resume(dom, s, 3, v)
    finished(dom)
    assert v.tracked[4:] == [(p + 0x100, le(0x77, 8)), (p + 0x100, le(0x78, 8))]
    # the stopped domain's instance let go of the page
    assert v.released == 1 and mpt.instance(v.handle) is None
    assert dom.ram_slots.count == 2


def test_two_instances_share_a_page_and_stores_across_its_edges(hv, mpt_elf):
    mpt = hv.mpt
    assert mpt.host_init("u", RecType) == 0
    # Q is tracked; P and the page after Q are not
    dom, v = new_guest(hv, mpt_elf, "edge", ["alloc:3", "sync:1",
                                             "w8:Q+0xffd:0x1122334455667788",
                                             "w8:P+0xffd:0x99aabbccddeeff00",
                                             "w4:Q+0x10:0x1234", "sync:2", "w4:Q+0x10:0x5678"])
    ret, h2 = mpt.attach_vgpu("u", w := Vgpu(mpt), dom)
    assert ret == 0
    w.handle = h2
    dom.start()
    p = alloc(dom)
    q = p + 4096
    s = at_sync(dom, 1)
    assert mpt.enable_page_track(v.handle, q >> 12) == 0
    assert mpt.enable_page_track(h2, q >> 12) == 0
    assert dom.ram_slots.count == 4                       # one read-only slot for both
    resume(dom, s, 1, v)
    s = at_sync(dom, 2)
    # a store across an edge of the page: the part on it is reported, at its GPA
    # (KVM's track_write gets the same split); both parts land
    want = [(q + 0xFFD, le(0x1122334455667788, 8)[:3]),
            (q, le(0x99AABBCCDDEEFF00, 8)[3:]),
            (q + 0x10, le(0x1234, 4))]
    assert v.tracked == want and w.tracked == want
    assert v.memory_then == w.memory_then == [d for _, d in want]
    assert dom.memory.read_u64(q + 0xFFD) == 0x1122334455667788
    assert dom.memory.read_u64(p + 0xFFD) == 0x99AABBCCDDEEFF00
    # one instance leaves: the other still tracks the page
    assert mpt.disable_page_track(v.handle, q >> 12) == 0
    assert dom.ram_slots.count == 4
    resume(dom, s, 2, v)
    finished(dom)
    assert v.tracked == want and w.tracked == want + [(q + 0x10, le(0x5678, 4))]
    assert dom.ram_slots.count == 2                       # the last one left at the stop


# --- 2. writes the emulator cannot split into 1/2/4/8-byte stores -----------------------

def test_undecodable_writes_to_a_tracked_page_stop_only_that_guest(hv, mpt_elf):
    mpt = hv.mpt
    calm, _ = new_guest(hv, mpt_elf, "calm", ["sync:1"])
    bad = {op: new_guest(hv, mpt_elf, op, ["alloc:1", "sync:1", f"{op}:P+0x200"])
           for op in ("fxsave", "cmpxchg16b")}
    hv.start_all()
    calm_sync = at_sync(calm, 1)
    opcode = {"fxsave": b"\x48\x0f\xae", "cmpxchg16b": b"\xf0\x48\x0f\xc7"}
    for op, (dom, v) in bad.items():
        p = alloc(dom)
        s = at_sync(dom, 1)
        assert mpt.enable_page_track(v.handle, p >> 12) == 0
        resume(dom, s, 1, v)
        res = crashed(dom)
        assert "INTERNAL_ERROR" in res.reason and "emulation" in res.reason, res.reason
        assert f"done {op}" not in dom.console.text
        # a register dump whose rip is the instruction that wrote
        rip = res.dump["rip"]
        assert dom.memory.read(rip, len(opcode[op])) == opcode[op], (op, hex(rip))
        assert "rip=" in res.describe()
        # nothing was written or reported
        assert v.tracked == [] and dom.memory.read(p + 0x200, 512) == bytes(512)
        assert mpt.instance(v.handle) is None
    # the guest next to them was waiting all along and ends normally
    assert not calm.stopped
    resume(calm, calm_sync, 1)
    finished(calm)

    # the hypervisor goes on: a new domain, SIMD and string stores on a tracked page
    dom, v = new_guest(hv, mpt_elf, "after",
                       ["alloc:1", "sync:1", "sse16:P+0x100", "movs:P+0x300:40",
                        "xchg8:P+0x400:0x1122334455667788"])
    dom.start()
    p = alloc(dom)
    s = at_sync(dom, 1)
    assert mpt.enable_page_track(v.handle, p >> 12) == 0
    resume(dom, s, 1, v)
    finished(dom)
    for base, n in ((p + 0x100, 16), (p + 0x300, 40)):
        got = [(gpa, data) for gpa, data in v.tracked if base <= gpa < base + n]
        assert all(len(d) in (1, 2, 4, 8) for _, d in got), got
        # reported in order, contiguous, and together the whole store
        at = base
        for gpa, data in got:
            assert gpa == at
            at += len(data)
        assert b"".join(d for _, d in got) == pattern(n)
        assert dom.memory.read(base, n) == pattern(n)
    # a locked exchange on a read-only slot is one plain 8-byte write
    assert v.tracked[-1] == (p + 0x400, le(0x1122334455667788, 8))
    assert v.memory_then == [d for _, d in v.tracked]


# --- 3. trap areas ------------------------------------------------------------------------

def test_trap_areas_forward_accesses_and_release_parts(hv, mpt_elf):
    mpt = hv.mpt
    assert mpt.host_init("u", RecType) == 0
    t = HOLE
    reads = [(1, 0x001), (2, 0x012), (4, 0x024), (8, 0x048)]
    writes = [(1, 0x101, 0xAB), (2, 0x112, 0xBEEF), (4, 0x124, 0xDEADBEEF),
              (8, 0x148, 0x0123456789ABCDEF)]
    args = [f"r{w}:{t + off:#x}" for w, off in reads]
    args += [f"w{w}:{t + off:#x}:{val:#x}" for w, off, val in writes]
    args += ["sync:1", f"r4:{t + 0x10:#x}", f"r4:{t + 0x2010:#x}", f"r4:{t + 0x1800:#x}",
             f"w4:{t + 0x1000:#x}:1"]
    dom, v = new_guest(hv, mpt_elf, "trap", args)
    ret, h2 = mpt.attach_vgpu("u", w := Vgpu(mpt), dom)
    assert ret == 0 and h2 != v.handle
    w.handle = h2
    assert mpt.set_trap_area(v.handle, t, t + 0x2FFF, True) == 0
    dom.start()
    s = at_sync(dom, 1)
    # absolute GPAs, exact widths and data; reads got what the handler wrote
    assert v.mmio == ([("r", t + off, wd) for wd, off in reads]
                      + [("w", t + off, le(val, wd)) for wd, off, val in writes])
    for wd, off in reads:
        assert loads(dom, wd)[t + off] == int.from_bytes(mmio_value(t + off, wd), "little")
    assert w.mmio == []
    # errors
    assert mpt.set_trap_area(v.handle, t + 0x100, t + 0x100, True) == -A.EEXIST
    assert mpt.set_trap_area(h2, t + 0x2000, t + 0x3FFF, True) == -A.EEXIST
    assert mpt.set_trap_area(v.handle, t + 0x5000, t + 0x4FFF, True) == -A.EINVAL
    assert mpt.set_trap_area(0x7777, t + 0x5000, t + 0x5FFF, True) == -A.EINVAL
    assert mpt.set_trap_area(v.handle, t + 0x5000, t + 0x5FFF, False) == -A.ENOENT
    assert mpt.set_trap_area(h2, t, t + 0xFFF, False) == -A.ENOENT      # not its own
    assert mpt.set_trap_area(v.handle, 0x200000, 0x200FFF, True) == -A.EEXIST  # RAM
    assert mpt.set_trap_area(v.handle, dom.ram.size - 8, dom.ram.size + 7, True) == -A.EEXIST
    # release the middle page: both ends stay trapped; another instance may take part
    assert mpt.set_trap_area(v.handle, t + 0x1000, t + 0x1FFF, False) == 0
    assert mpt.set_trap_area(h2, t + 0x1800, t + 0x1FFF, True) == 0
    del v.mmio[:]
    resume(dom, s, 1, v)
    res = crashed(dom)
    assert v.mmio == [("r", t + 0x10, 4), ("r", t + 0x2010, 4)]
    assert w.mmio == [("r", t + 0x1800, 4)]
    assert loads(dom, 4)[t + 0x2010] == int.from_bytes(mmio_value(t + 0x2010, 4), "little")
    assert re.fullmatch(rf"unknown MMIO address {t + 0x1000:#x} \(write, 4 bytes\) at "
                        r"rip=0x[0-9a-f]+", res.reason), res.reason
    # the stopped domain's trap areas are gone with its instances
    assert dom.mmio_bus.lookup(t) is None and dom.mmio_bus.lookup(t + 0x1800) is None


class BrokenType(RecType):
    @staticmethod
    def emulate_mmio_read(vgpu, gpa, data):
        raise ZeroDivisionError("device model bug")


def test_a_failing_device_model_stops_only_its_guest(hv, mpt_elf):
    mpt = hv.mpt
    assert mpt.host_init("broken", BrokenType) == 0
    dom, v = new_guest(hv, mpt_elf, "victim", [f"r4:{HOLE:#x}"], type_name="broken")
    other, w = new_guest(hv, mpt_elf, "other", [f"r4:{HOLE:#x}"])
    for d, x in ((dom, v), (other, w)):
        assert mpt.set_trap_area(x.handle, HOLE, HOLE + 0xFFF, True) == 0
    hv.start_all()
    res = crashed(dom)
    assert res.reason == (f"mediated device broken: emulate_mmio_read at {HOLE:#x} failed: "
                          "ZeroDivisionError: device model bug"), res.reason
    finished(other)
    assert w.mmio == [("r", HOLE, 4)]


# --- 4. MSI -------------------------------------------------------------------------------

def test_msi_reaches_the_guest_once_per_injection(hv, mpt_elf):
    mpt = hv.mpt
    n = 3
    vec = L.VEC_MGPU
    args = [f"irq:{vec:#x}"]
    for i in range(1, n + 1):
        args += [f"sync:{i}", f"waitirq:{i}"]
    args += [f"sync:{n + 1}", f"waitirq:{n + 1}"]
    dom, v = new_guest(hv, mpt_elf, "msi", args)
    dom.start()
    wait_console(dom, r"done irq\n")
    for i in range(1, n + 1):
        s = at_sync(dom, i)
        assert mpt.inject_msi(v.handle, L.LAPIC_BASE, vec) == 0
        resume(dom, s, i, v)
        wait_console(dom, rf"irqs {i}\n")
    s = at_sync(dom, n + 1)
    # the virtual MSI capability: disabled -> 0 and nothing raised
    assert mpt.inject_msi_capability(v.handle, 0, L.LAPIC_BASE, vec) == 0
    assert mpt.inject_msi_capability(v.handle, 0x0002, L.LAPIC_BASE, vec) == 0  # not enabled
    # enabled with multi-message / 64-bit / masking bits -> -EINVAL
    for control in (0x0003, 0x0081, 0x0101, 0x8001):
        assert mpt.inject_msi_capability(v.handle, control, L.LAPIC_BASE, vec) == -A.EINVAL
    assert mpt.inject_msi_capability(v.handle, 1, 0xFED00000, vec) == -A.EINVAL
    assert mpt.inject_msi_capability(0x7777, 1, L.LAPIC_BASE, vec) == -A.ESRCH
    assert mpt.inject_msi(v.handle, 0xFED00000, vec) == -A.EINVAL
    assert mpt.inject_msi(v.handle, 1 << 32 | L.LAPIC_BASE, vec) == -A.EINVAL   # 32-bit
    assert mpt.inject_msi(v.handle, L.msi_address(1), vec) == -A.EINVAL   # no vCPU 1
    assert mpt.inject_msi(v.handle, L.LAPIC_BASE, 0x10) == -A.EINVAL     # vector < 0x20
    assert mpt.inject_msi(v.handle, L.LAPIC_BASE, 0x10000) == -A.EINVAL
    assert mpt.inject_msi(0x7777, L.LAPIC_BASE, vec) == -A.ESRCH
    time.sleep(0.03)   # the guest polls every 1 ms: a stray interrupt would be counted
    assert mpt.inject_msi_capability(v.handle, 1, L.LAPIC_BASE, vec) == 0
    resume(dom, s, n + 1, v)
    finished(dom)
    assert re.findall(r"irqs (\d+)\n", dom.console.text) == [str(i) for i in range(1, n + 2)]
    assert mpt.inject_msi(v.handle, L.LAPIC_BASE, vec) == -A.ESRCH      # domain gone


# --- 5. map_gfn_to_mfn ------------------------------------------------------------------------

def test_map_gfn_to_mfn_shows_host_frames_to_the_guest(hv, mpt_elf):
    mpt = hv.mpt
    fr = hv.machine.alloc(3, "aperture")
    data = bytes((i * 131 + (i >> 12) * 17) & 0xFF for i in range(fr.size))
    fr.buffer[:] = data
    g, g2 = HOLE >> 12, (HOLE >> 12) + 0x10
    dom, v = new_guest(hv, mpt_elf, "map",
                       [f"sum:{HOLE:#x}:{fr.size}", f"sum:{g2 << 12:#x}:4096", "sync:1",
                        f"r8:{HOLE:#x}"])
    assert mpt.map_gfn_to_mfn(v.handle, g, fr.mfn, 3, True) == 0
    assert mpt.map_gfn_to_mfn(v.handle, g2, fr.mfn + 1, 1, True) == 0    # one frame of it
    dom.start()
    s = at_sync(dom, 1)
    sums = re.findall(r"sum (0x[0-9a-f]+)\n", dom.console.text)
    assert [int(x, 16) for x in sums] == [zlib.crc32(data), zlib.crc32(data[4096:8192])]
    assert [mpt.gfn_to_mfn(v.handle, g + i) for i in range(4)] == \
        [fr.mfn, fr.mfn + 1, fr.mfn + 2, INVALID]
    assert mpt.gfn_to_mfn(v.handle, g2) == fr.mfn + 1
    assert mpt.gfn_to_mfn(v.handle, 0x200) == dom.ram.mfn + 0x200
    assert mpt.gfn_to_mfn(v.handle, dom.ram.nframes) == INVALID
    assert mpt.gfn_to_mfn(v.handle, -1) == INVALID
    assert mpt.virt_to_mfn(fr.hva) == fr.mfn and mpt.virt_to_mfn(fr.hva + 4096 + 5) == fr.mfn + 1
    assert mpt.virt_to_mfn(1) == INVALID
    assert not mpt.is_valid_gfn(v.handle, g)             # device frames are not RAM
    # errors
    assert mpt.map_gfn_to_mfn(v.handle, g, fr.mfn, 1, True) == -A.EEXIST
    assert mpt.map_gfn_to_mfn(v.handle, g - 1, fr.mfn, 2, True) == -A.EEXIST
    assert mpt.map_gfn_to_mfn(v.handle, g + 0x100, 1 << 39, 1, True) == -A.EINVAL  # no such mfn
    assert mpt.map_gfn_to_mfn(v.handle, g + 0x100, fr.mfn + 2, 2, True) == -A.EINVAL  # past it
    assert mpt.map_gfn_to_mfn(v.handle, 0x300, fr.mfn, 1, True) == -A.EINVAL    # in RAM
    assert mpt.map_gfn_to_mfn(v.handle, g + 0x100, fr.mfn, 1, False) == -A.EINVAL  # nothing
    assert mpt.map_gfn_to_mfn(v.handle, g, fr.mfn, 2, False) == -A.EINVAL   # not that size
    assert mpt.set_trap_area(v.handle, HOLE + 0x1000, HOLE + 0x1FFF, True) == -A.EEXIST
    # unmap: gone for the guest too
    assert mpt.map_gfn_to_mfn(v.handle, g, fr.mfn, 3, False) == 0
    assert mpt.gfn_to_mfn(v.handle, g) == INVALID
    resume(dom, s, 1, v)
    res = crashed(dom)
    assert res.reason.startswith(f"unknown MMIO address {HOLE:#x} (read, 8 bytes)"), res.reason
    assert fr.buffer[:] == data                          # the frames are the host's still
    assert not dom.memory.contains(g2 << 12, 1)          # the other mapping went at stop


# --- 6. OpRegion ------------------------------------------------------------------------------

def test_opregion_is_read_only_to_the_guest(hv, mpt_elf):
    mpt = hv.mpt
    op = L.MPT_OPREGION_GPA
    dom, v = new_guest(hv, mpt_elf, "opr", ["opregion", f"w4:{op:#x}:0x41414141", f"r4:{op:#x}",
                                             f"r8:{op + 8:#x}", "sync:1", f"r8:{op + 16:#x}"])
    assert mpt.set_opregion(v.handle, OPREGION_TEXT) == 0
    dom.memory.write_u32(L.BOOT_INFO + L.BI_OFF_MGPU_OPREGION, op)    # where the SDK looks
    dom.start()
    s = at_sync(dom, 1)
    assert f"opregion {op:#x} IntelGraphicsMem\n" in dom.console.text
    # the store was dropped: the guest reads the original back
    assert loads(dom, 4)[op] == int.from_bytes(OPREGION_TEXT[:4], "little")
    assert loads(dom, 8)[op + 8] == int.from_bytes(OPREGION_TEXT[8:16], "little")
    assert mpt.opregion_writes(v.handle) == 1
    buf = bytearray(len(OPREGION_TEXT))
    assert mpt.read_gpa(v.handle, op, buf) == 0 and bytes(buf) == OPREGION_TEXT
    assert mpt.write_gpa(v.handle, op, b"x") == -A.EFAULT
    assert mpt.read_gpa(v.handle, op, buf) == 0 and bytes(buf) == OPREGION_TEXT
    # bad ones change nothing
    assert mpt.set_opregion(v.handle, b"NotIntelGraphics" + bytes(16)) == -A.EINVAL
    assert mpt.set_opregion(v.handle, A.OPREGION_SIGNATURE + bytes(A.OPREGION_SIZE)) == -A.EINVAL
    assert mpt.set_opregion(v.handle, None) == -A.ENOMEM
    assert mpt.set_opregion(0x7777, OPREGION_TEXT) == -A.EINVAL
    # a second one replaces the first, under the running guest
    second = A.OPREGION_SIGNATURE + b"second OpRegion!"
    assert mpt.set_opregion(v.handle, second) == 0
    resume(dom, s, 1, v)
    finished(dom)
    assert loads(dom, 8)[op + 16] == int.from_bytes(b"second O", "little")
    assert not dom.memory.contains(op, 1)                  # gone with the instance


# --- 7. life cycle and errors ---------------------------------------------------------------

def test_instance_life_cycle_and_invalid_handles(hv, mpt_elf):
    mpt = hv.mpt
    assert mpt.host_init("t", RecType) == -A.EEXIST
    assert mpt.host_init("", RecType) == -A.EINVAL
    assert mpt.host_init("x", object()) == -A.EINVAL
    dom, v = new_guest(hv, mpt_elf, "life", ["alloc:1", "sync:1", "w8:P+8:0x1234", "sync:2",
                                             "w8:P+8:0x5678", "sync:3"])
    h = v.handle
    assert mpt.attach_vgpu("t", Vgpu(mpt), dom) == (-A.EEXIST, 0)       # one per domain
    assert mpt.attach_vgpu("nope", Vgpu(mpt), dom) == (-A.ENODEV, 0)
    assert mpt.host_exit("t") == -A.EBUSY
    assert mpt.host_exit("nope") == -A.ENODEV
    assert mpt.instance(h) is v
    dom.start()
    p = alloc(dom)
    gfn = p >> 12
    s = at_sync(dom, 1)
    # guest memory reads and writes, checked whole before anything moves
    end = dom.ram.size
    dom.memory.write(end - 8, b"ramtail!")
    buf = bytearray(b"\xEE" * 16)
    assert mpt.read_gpa(h, end - 8, buf) == -A.EFAULT and buf == bytearray(b"\xEE" * 16)
    assert mpt.write_gpa(h, end - 8, b"Z" * 16) == -A.EFAULT
    assert dom.memory.read(end - 8, 8) == b"ramtail!"
    assert mpt.read_gpa(h, -1, bytearray(1)) == -A.EFAULT
    assert mpt.read_gpa(h, end - 8, buf := bytearray(8)) == 0 and buf == b"ramtail!"
    # page tracking outside trackable RAM
    for bad in (0, 0x10, (L.RESERVED_END >> 12) - 1, dom.ram.nframes, -1):
        assert mpt.enable_page_track(h, bad) == -A.EINVAL, hex(bad)
    assert mpt.disable_page_track(h, dom.ram.nframes) == -A.EINVAL
    first = L.RESERVED_END >> 12                 # the VMM's page tables etc. are below
    assert mpt.is_valid_gfn(h, gfn) and mpt.is_valid_gfn(h, first)
    assert not any(mpt.is_valid_gfn(h, g) for g in (0, first - 1, dom.ram.nframes, -1))
    assert mpt.write_gpa(h, L.RESERVED_END - 4, b"12345678") == -A.EFAULT
    assert mpt.dma_map_guest_page(h, first - 1, 4096) == (-A.EFAULT, 0)
    # the DMA cache over the guest's own pages: refcounted, device views of guest RAM
    ret, dma = mpt.dma_map_guest_page(h, gfn, 4096)
    assert ret == 0 and dma == (dom.ram.mfn + gfn) << 12
    assert mpt.dma_map_guest_page(h, gfn, 4096) == (0, dma)
    assert mpt.dma_map_guest_page(h, gfn, 100) == (-A.EINVAL, 0)
    assert mpt.dma_map_guest_page(h, dom.ram.nframes, 4096) == (-A.EFAULT, 0)
    mpt.dma_unmap_guest_page(h, dma)
    view = mpt.dma_view(h, dma + 8, 8)
    assert view is not None
    # hold the instance: the device is exported (tracking and a trap area with it)
    assert mpt.enable_page_track(h, gfn) == 0
    assert mpt.set_trap_area(h, HOLE, HOLE + 0xFFF, True) == 0
    assert mpt.inject_msi(h, L.LAPIC_BASE, 0xE3) == 0
    assert mpt.get_vfio_device(h) == 0
    assert mpt.detach_vgpu(h) == -A.EBUSY
    resume(dom, s, 1, v)
    s = at_sync(dom, 2)
    assert v.tracked == [(p + 8, le(0x1234, 8))]
    assert bytes(view) == le(0x1234, 8)                  # the device sees the guest's write
    mpt.put_vfio_device(h)
    assert mpt.detach_vgpu(h) == 0
    assert mpt.detach_vgpu(h) == -A.ESRCH
    with pytest.raises(ValueError):                      # its DMA views went with it
        bytes(view)
    # everything it held is gone
    assert dom.ram_slots.count == 2 and dom.mmio_bus.lookup(HOLE) is None
    assert mpt.instance(h) is None and v.released == 0    # detach is not a release
    # every operation on the stale handle: its invalid-handle result
    assert mpt.enable_page_track(h, gfn) == -A.ESRCH
    assert mpt.disable_page_track(h, gfn) == 0
    assert mpt.inject_msi(h, L.LAPIC_BASE, 0xE3) == -A.ESRCH
    assert mpt.read_gpa(h, p, bytearray(8)) == -A.ESRCH
    assert mpt.write_gpa(h, p, b"12345678") == -A.ESRCH
    assert mpt.dma_map_guest_page(h, gfn, 4096) == (-A.EINVAL, 0)
    assert mpt.dma_unmap_guest_page(h, dma) is None
    assert mpt.dma_view(h, dma, 8) is None
    assert mpt.gfn_to_mfn(h, gfn) == INVALID
    assert mpt.is_valid_gfn(h, gfn) is False
    assert mpt.set_trap_area(h, HOLE, HOLE + 0xFFF, True) == -A.EINVAL
    assert mpt.map_gfn_to_mfn(h, HOLE >> 12, dom.ram.mfn, 1, True) == -A.EINVAL
    assert mpt.set_opregion(h, OPREGION_TEXT) == -A.EINVAL
    assert mpt.get_vfio_device(h) == -A.ENODEV
    assert mpt.opregion_writes(h) == 0
    # a new instance on the live domain: new handle, tracking and a trap area again
    v2 = Vgpu(mpt)
    ret, v2.handle = mpt.attach_vgpu("t", v2, dom)
    assert ret == 0 and v2.handle != h
    assert mpt.enable_page_track(v2.handle, gfn) == 0
    assert mpt.set_trap_area(v2.handle, HOLE, HOLE + 0xFFF, True) == 0
    assert mpt.get_vfio_device(v2.handle) == 0          # held: the stop drops it anyway
    resume(dom, s, 2, v2)
    s = at_sync(dom, 3)
    assert v.tracked == [(p + 8, le(0x1234, 8))] and v2.tracked == [(p + 8, le(0x5678, 8))]
    resume(dom, s, 3, v2)
    finished(dom)
    # the domain stopped: its instance was released and dropped
    assert v2.released == 1 and mpt.instance(v2.handle) is None
    assert dom.ram_slots.count == 2 and dom.mmio_bus.lookup(HOLE) is None
    assert mpt.attach_vgpu("t", Vgpu(mpt), dom) == (-A.ESRCH, 0)
    assert mpt.host_exit("t") == 0
    assert mpt.host_exit("t") == -A.ENODEV


# --- 8. tracking changed under a running multi-vCPU guest --------------------------------------

def test_tracking_toggled_while_a_two_vcpu_guest_writes(hv, mpt_elf):
    mpt = hv.mpt
    n = 150
    args = ["alloc:4", "sync:1"] + [f"w8:P+{8 * i}:{i + 1}" for i in range(n)] + ["sync:2"]
    dom, v = new_guest(hv, mpt_elf, "smp", args, vcpus=2)
    dom.start()
    p = alloc(dom)
    gfn = p >> 12
    s = at_sync(dom, 1)
    # toggled while the guest idles (the other vCPU too) ...
    for _ in range(3):
        assert mpt.enable_page_track(v.handle, gfn) == 0
        assert mpt.enable_page_track(v.handle, gfn + 2) == 0
        assert dom.ram_slots.count == 6
        assert mpt.disable_page_track(v.handle, gfn) == 0
        assert mpt.disable_page_track(v.handle, gfn + 2) == 0
        assert dom.ram_slots.count == 2
    # ... and while it writes the page
    assert mpt.enable_page_track(v.handle, gfn) == 0
    assert mpt.write_gpa(v.handle, s, (1).to_bytes(4, "little")) == 0
    toggles = 0
    deadline = time.monotonic() + 20
    while "sync 2 at" not in dom.console.text:
        # Back to back: each hold lets the vCPUs run to their next exit (at
        # most 1 ms) first, so the guest is not starved by the changes.
        assert not dom.stopped, dom.console.text
        assert time.monotonic() < deadline, f"starved after {toggles} toggles"
        assert mpt.disable_page_track(v.handle, gfn) == 0
        assert mpt.enable_page_track(v.handle, gfn) == 0
        toggles += 1
    s = at_sync(dom, 2)
    assert mpt.disable_page_track(v.handle, gfn) == 0
    assert dom.ram_slots.count == 2
    resume(dom, s, 2, v)
    finished(dom)
    assert toggles > 0
    # every write landed, tracked or not; those reported were reported right, in order
    assert [dom.memory.read_u64(p + 8 * i) for i in range(n)] == list(range(1, n + 1))
    want = [(p + 8 * i, le(i + 1, 8)) for i in range(n)]
    it = iter(want)
    assert all(w in it for w in v.tracked), v.tracked
    # (how many were reported depends on timing; each one reported is right)
    assert v.memory_then == [d for _, d in v.tracked]


# --- 9, 10. the example mediated GPU -------------------------------------------------------------

@pytest.fixture(scope="module")
def mgpu_elf(test_guests):
    subprocess.run(["make", "-s", "-C", str(REPO / "examples")], check=True)
    elf = REPO / "examples" / "mgpu" / "mgpu.elf"
    assert elf.is_file()
    return elf


@pytest.fixture(scope="module")
def reference():
    from mgpu_reference import reference_image
    return {(): reference_image(()).tobytes(),
            ("variant", "1"): reference_image(("variant", "1")).tobytes()}


def example_manifest(tmp_path, mgpu_elf, domains=None) -> Path:
    """examples/mgpu/mgpu.toml copied into *tmp_path* (its PNGs land there),
    its image absolute; *domains*: ``{name: args}`` to replace its domains."""
    text = (REPO / "examples" / "mgpu" / "mgpu.toml").read_text()
    text = text.replace('image = "mgpu.elf"', f'image = "{mgpu_elf}"')
    if domains is not None:
        text = ""
        for name, args in domains.items():
            quoted = ", ".join(f'"{a}"' for a in args)
            text += (f'[[domain]]\nname = "{name}"\nimage = "{mgpu_elf}"\nmemory = 32\n'
                     f'args = [{quoted}]\nmgpu = {{ png = "{name}.png" }}\n\n')
    path = tmp_path / "mgpu.toml"
    path.write_text(text)
    return path


class CountingMgpuType:
    """The example's device type, counting each tracked write and its result."""

    def __init__(self) -> None:
        self.writes: dict = {}           # Mgpu -> [(gpa, width, result)]

    def emulate_mmio_read(self, vgpu, gpa, data):
        MgpuType.emulate_mmio_read(vgpu, gpa, data)

    def emulate_mmio_write(self, vgpu, gpa, data):
        MgpuType.emulate_mmio_write(vgpu, gpa, data)

    def write_protect_handler(self, vgpu, gpa, data):
        ret = MgpuType.write_protect_handler(vgpu, gpa, data)
        self.writes.setdefault(vgpu, []).append((gpa, len(data), ret))
        return ret

    def release(self, vgpu):
        MgpuType.release(vgpu)


def run_example(path):
    with paravm.Hypervisor(output=None) as hv:
        counting = CountingMgpuType()
        assert hv.mpt.host_init("mgpu", counting) == 0      # MgpuType.attach finds it
        doms = hv.create_from_manifest(load_manifest(path))
        hv.start_all()
        assert hv.wait_all(60) is not None, [d.console.text for d in doms]
        texts = {d.name: d.console.text for d in doms}
        results = {d.name: d.result for d in doms}
        devices = dict(hv.mgpus)
        stats = {name: dev.stats() for name, dev in devices.items()}
        writes = {name: counting.writes.get(dev, []) for name, dev in devices.items()}
    return texts, results, stats, writes


def png_bytes(path: Path) -> bytes:
    from PIL import Image
    with Image.open(path) as img:
        return img.convert("RGB").tobytes()


def test_the_example_draws_the_reference_picture(tmp_path, mgpu_elf, reference):
    path = example_manifest(tmp_path, mgpu_elf)
    texts, results, stats, writes = run_example(path)
    for name, args in (("left", ()), ("right", ("variant", "1"))):
        text = texts[name]
        assert results[name].how == "exited" and results[name].status == 0, text
        assert "checksum ok" in text, text
        assert png_bytes(tmp_path / f"{name}.png") == reference[args], name
        cmds, kicks, irqs = map(int, re.search(
            r"(\d+) commands in (\d+) doorbells, (\d+) completion interrupts", text).groups())
        st = stats[name]
        assert st["presents"] == 1 and st["faults"] == 0
        assert st["commands"] == cmds and st["irqs"] == irqs == kicks > 0
        # GTT stores the host saw: the 75 display entries and the sprite's at
        # set-up (mgpu_init tracks the GTT already), then the 5 remapped ones,
        # each one aligned 8-byte store the device took
        w = writes[name]
        base = w[0][0]
        want = [base + 8 * i for i in [*range(75), 96, *range(55, 60)]]
        assert [gpa for gpa, _, _ in w] == want
        assert all(width == 8 and ret == 0 for _, width, ret in w)
        assert st["gtt_pages"] == 0                      # released at the domain's stop


def test_the_example_through_the_cli(tmp_path, mgpu_elf, reference):
    path = example_manifest(tmp_path, mgpu_elf)
    p = subprocess.run([sys.executable, "-m", "paravm", "run", str(path)], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("checksum ok") == 2, p.stdout
    assert png_bytes(tmp_path / "left.png") == reference[()]
    assert png_bytes(tmp_path / "right.png") == reference[("variant", "1")]


def test_isolation_faults_stay_with_their_guest(tmp_path, mgpu_elf, reference):
    path = example_manifest(tmp_path, mgpu_elf, {"evil": ["isolation"], "plain": []})
    texts, results, stats, writes = run_example(path)
    assert results["evil"].how == "exited" and results["evil"].status == 0, texts["evil"]
    assert "isolation ok" in texts["evil"], texts["evil"]
    assert stats["evil"]["faults"] > 0
    # the torn (2-byte) GTT store reached the device, which refused it
    assert any(width == 2 and ret == -A.EINVAL for _, width, ret in writes["evil"])
    assert results["plain"].how == "exited" and results["plain"].status == 0, texts["plain"]
    assert stats["plain"]["faults"] == 0
    assert png_bytes(tmp_path / "plain.png") == reference[()]
    assert stats["evil"]["presents"] == 0 and not (tmp_path / "evil.png").exists()
