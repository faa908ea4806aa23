"""lguest BIND_DMA / SEND_DMA, the launcher and its devices on plain memory (no KVM).

The cases of specs §B.4: bind limits, unbind, private vs shared keys, the most
recent binder, no free buffer, truncation, used_len on both sides, bad
sections (who is killed), GETDMA / IRQ / BREAK errors, and the block, console
and net devices.
"""

from __future__ import annotations

import errno
import os
import struct
from types import SimpleNamespace

import pytest

from paravm.arch.x86 import layout as L
from paravm.config import BlockSpec, ConsoleSpec, NetSpec
from paravm.hypercall.table import HypercallTable
from paravm.memory.guest import GuestMemory, Region
from paravm.services.lguest import abi
from paravm.services.lguest.pcap import read_pcap
from paravm.services.lguest.service import LguestService
from paravm.vm.vcpu import GuestStop

MiB = 1 << 20


class FakeConsole:
    def __init__(self):
        self.data = bytearray()

    def write(self, data, now_ns=0):
        self.data += data


class FakeDomain:
    """What the lguest service uses of a Domain: memory, hypercalls, MSIs, crash."""

    def __init__(self, machine, name, domid, memory_bytes, regions):
        self.name, self.domid = name, domid
        self.ram = machine.alloc(memory_bytes // 4096, name)
        self.memory = GuestMemory()
        self.memory.add_region(Region(0, self.ram))
        for gpa, frames, ro in regions:
            self.memory.add_region(Region(gpa, frames, readonly=ro))
        self.hypercalls = HypercallTable()
        self.console = FakeConsole()
        self.crashed = None
        self.stopped = False
        self.paused = None
        self._irqfds = {}            # vector -> eventfd, as Domain.irqfd makes them
        self._msis = []

    def crash(self, reason, vcpu=None, dump=None):
        self.crashed = reason

    def irqfd(self, vcpu, vector):
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._irqfds[vector] = fd
        return SimpleNamespace(fileno=lambda: fd, fire=lambda: os.eventfd_write(fd, 1))

    @property
    def msis(self):
        """Vectors raised so far (each eventfd write once), by vector."""
        for vector, fd in self._irqfds.items():
            try:
                self._msis += [vector] * os.eventfd_read(fd)
            except BlockingIOError:
                pass
        return sorted(self._msis)

    def __del__(self):
        for fd in self._irqfds.values():
            os.close(fd)

    def pause(self, timeout=5.0):
        self.paused = True
        return True

    def resume(self):
        self.paused = False

    def call(self, nr, *args):
        args = args + (0,) * (6 - len(args))
        return self.hypercalls.handlers[nr](None, *args)


def spec(name, domid, mib, devices=()):
    return SimpleNamespace(name=name, domid=domid, memory_bytes=mib * MiB,
                           devices=tuple(devices))


def world(machine, specs):
    svc = LguestService(machine, specs)
    doms = {}
    for s in specs:
        d = FakeDomain(machine, s.name, s.domid, s.memory_bytes, svc.regions(s.name))
        svc.attach(d)
        doms[s.name] = d
    return svc, doms


def put_dma(d, gpa, sections, used=0):
    addrs = [a for a, _ in sections] + [0] * (16 - len(sections))
    lens = [n for _, n in sections] + [0] * (16 - len(sections))
    d.memory.write(gpa, abi.DMA.pack(used, 0, *addrs, *lens))


def used(d, gpa):
    return d.memory.read_u32(gpa)


BUF = 0x200000          # scratch area in guest RAM (above the reserved 1 MiB)


# --- layout ----------------------------------------------------------------------------
def test_layouts_are_the_lp64_reference_ones():
    assert abi.DMA_SIZE == 168 and abi.DESC_SIZE == 12 and abi.BLOCK_SIZE == 32
    raw = abi.DMA.pack(7, 0, *range(1, 17), *range(101, 117))
    assert struct.unpack_from("<I", raw, 0)[0] == 7
    assert struct.unpack_from("<Q", raw, 8)[0] == 1 and struct.unpack_from("<H", raw, 136)[0] == 101
    assert abi.net_mac(0x1234) == bytes((2, 0, 0x34, 0x12, 0, 0))
    assert abi.NET_SLOTS == 682


# --- BIND_DMA --------------------------------------------------------------------------
def test_bind_limits_and_unbind(machine):
    svc, d = world(machine, [spec("a", 1, 4, [ConsoleSpec()])])
    a = d["a"]
    put_dma(a, BUF, [(BUF + 0x1000, 100)])
    assert a.call(abi.HC_BIND_DMA, 0x300000, BUF, 1, 32) == 0        # irq >= 32
    assert all(a.call(abi.HC_BIND_DMA, 0x300000 + 4 * i, BUF, 1, 3) == 1 for i in range(32))
    assert a.call(abi.HC_BIND_DMA, 0x300100, BUF, 1, 3) == 0          # the 33rd
    assert a.call(abi.HC_BIND_DMA, 0x300000, BUF, 0, 0) == 1          # unbind
    assert a.call(abi.HC_BIND_DMA, 0x300000, BUF, 0, 0) == 0          # not bound any more
    assert a.call(abi.HC_BIND_DMA, 0x300004, BUF + 8, 0, 0) == 0      # other dmas: not found
    assert a.call(abi.HC_BIND_DMA, 0x300000, BUF, 1, 3) == 1          # the slot is free again
    assert a.call(abi.HC_BIND_DMA, 0x300200, BUF, 0, 3) == 0          # num 0
    svc.close()


@pytest.mark.parametrize("key", [0x1002, 64 * MiB + 0x10000, -4 & (2**64 - 1)])
def test_a_bad_key_kills_the_caller(machine, key):
    svc, d = world(machine, [spec("a", 1, 4, [ConsoleSpec()])])
    with pytest.raises(GuestStop, match="bad dma key"):
        d["a"].call(abi.HC_BIND_DMA, key, BUF, 1, 3)
    with pytest.raises(GuestStop, match="bad dma key"):
        d["a"].call(abi.HC_SEND_DMA, key, BUF)
    svc.close()


# --- private keys: the launcher ---------------------------------------------------------
def test_a_private_key_goes_to_the_watching_device(machine):
    svc, d = world(machine, [spec("a", 1, 4, [ConsoleSpec()])])
    a = d["a"]
    a.memory.write(BUF + 0x1000, b"hello, ")
    a.memory.write(BUF + 0x2000, b"world\n")
    put_dma(a, BUF, [(BUF + 0x1000, 7), (BUF + 0x2000, 6)])
    a.call(abi.HC_SEND_DMA, abi.CONSOLE_KEY, BUF)
    assert bytes(a.console.data) == b"hello, world\n" and used(a, BUF) == 13
    seen = []
    svc.launcher("a").watch(0x300000, lambda k, g, s: seen.append((k, g, s)) or 42)
    a.call(abi.HC_SEND_DMA, 0x300000, BUF)
    assert seen == [(0x300000, BUF, [(BUF + 0x1000, 7), (BUF + 0x2000, 6)])]
    assert used(a, BUF) == 42
    a.memory.write_u32(BUF, 0)
    a.call(abi.HC_SEND_DMA, 0x300008, BUF)                 # nobody watches: stays 0
    assert used(a, BUF) == 0
    svc.close()


def test_private_keys_never_reach_another_guest(machine):
    """Two guests bind the same private GPA: a send stays with the launcher."""
    svc, d = world(machine, [spec("a", 1, 4, [ConsoleSpec()]), spec("b", 2, 4, [ConsoleSpec()])])
    a, b = d["a"], d["b"]
    put_dma(b, BUF, [(BUF + 0x1000, 64)])
    assert b.call(abi.HC_BIND_DMA, 0x300000, BUF, 1, 5) == 1
    a.memory.write(BUF + 0x1000, b"x" * 10)
    put_dma(a, BUF, [(BUF + 0x1000, 10)])
    a.call(abi.HC_SEND_DMA, 0x300000, BUF)
    assert used(b, BUF) == 0 and used(a, BUF) == 0 and b.msis == []
    svc.close()


# --- shared keys: guest to guest ----------------------------------------------------------
def lan_world(machine, n=3, sizes=(4, 8, 6)):
    specs = [spec(chr(ord("a") + i), i + 1, sizes[i], [NetSpec("lan0")]) for i in range(n)]
    svc, d = world(machine, specs)
    keys = {name: svc.guests[name].device_gpa[0] for name in d}    # the LAN page, per guest
    return svc, d, keys


def test_the_lan_page_is_shared_at_different_gpas(machine):
    svc, d, keys = lan_world(machine)
    assert len(set(keys.values())) == 3                # RAM sizes differ, so do the GPAs
    for name, dom in d.items():
        slot = svc.lans["lan0"].slots[name]
        assert dom.memory.read(keys[name] + 6 * slot, 6) == abi.net_mac(dom.domid)
        assert dom.memory.read_u64(L.BOOT_INFO + L.BI_OFF_LGUEST_DESCS) == dom.ram.size
        desc = abi.DESC.unpack(dom.memory.read(dom.ram.size, 12))
        assert desc == (abi.T_NET, slot | abi.NET_F_NOCSUM, 0, 1, keys[name] >> 12)
    d["a"].memory.write(keys["a"] + 4000, b"seen by all")
    assert d["c"].memory.read(keys["c"] + 4000, 11) == b"seen by all"
    svc.close()


def test_guest_to_guest_rotation_no_free_buffer_and_restock(machine):
    svc, d, keys = lan_world(machine)
    a, b = d["a"], d["b"]
    kb, ka = keys["b"] + 4, keys["a"] + 4               # the key of slot 1, in b and in a
    for i in range(3):
        put_dma(b, BUF + i * abi.DMA_SIZE, [(BUF + 0x1000 * (i + 1), 100)])
    assert b.call(abi.HC_BIND_DMA, kb, BUF, 3, 7) == 1
    for i in range(4):
        a.memory.write(BUF + 0x1000, bytes([i]) * 50)
        put_dma(a, BUF, [(BUF + 0x1000, 50)])
        a.call(abi.HC_SEND_DMA, ka, BUF)
        assert used(a, BUF) == (50 if i < 3 else 0)
    assert [used(b, BUF + i * abi.DMA_SIZE) for i in range(3)] == [50, 50, 50]
    assert [b.memory.read(BUF + 0x1000 * (i + 1), 1)[0] for i in range(3)] == [0, 1, 2]
    # 3 deliveries + the full case (raised, then raised again on the retry)
    assert b.msis == [abi.VECTOR_BASE + 7] * 5
    b.memory.write_u32(BUF + abi.DMA_SIZE, 0)           # b frees entry 1
    a.memory.write(BUF + 0x1000, b"\x09" * 50)
    a.call(abi.HC_SEND_DMA, ka, BUF)
    assert used(a, BUF) == 50 and b.memory.read(BUF + 0x2000, 1) == b"\x09"
    svc.close()


def test_truncation_and_an_empty_ping(machine):
    svc, d, keys = lan_world(machine)
    a, b = d["a"], d["b"]
    put_dma(b, BUF, [(BUF + 0x1000, 30), (BUF + 0x2000, 10)])
    b.call(abi.HC_BIND_DMA, keys["b"] + 4, BUF, 1, 2)
    a.memory.write(BUF + 0x1000, bytes(range(100)))
    put_dma(a, BUF, [(BUF + 0x1000, 100)])
    a.call(abi.HC_SEND_DMA, keys["a"] + 4, BUF)
    assert used(a, BUF) == used(b, BUF) == 40
    assert b.memory.read(BUF + 0x1000, 30) + b.memory.read(BUF + 0x2000, 10) == bytes(range(40))
    b.memory.write_u32(BUF, 0)
    put_dma(a, BUF, [])                                 # len[0] == 0: a ping
    a.call(abi.HC_SEND_DMA, keys["a"] + 4, BUF)
    assert used(a, BUF) == 0 and used(b, BUF) == 0 and len(b.msis) == 2
    svc.close()


def test_most_recent_other_binder_wins_and_never_the_sender(machine):
    svc, d, keys = lan_world(machine)
    a, b, c = d["a"], d["b"], d["c"]
    for dom in (a, b, c):
        put_dma(dom, BUF + 0x8000, [(BUF + 0x9000, 64)])
    a.call(abi.HC_BIND_DMA, keys["a"], BUF + 0x8000, 1, 1)      # the sender binds too
    b.call(abi.HC_BIND_DMA, keys["b"], BUF + 0x8000, 1, 1)
    c.call(abi.HC_BIND_DMA, keys["c"], BUF + 0x8000, 1, 1)      # most recent
    a.memory.write(BUF + 0x1000, b"frame")
    put_dma(a, BUF, [(BUF + 0x1000, 5)])
    a.call(abi.HC_SEND_DMA, keys["a"], BUF)
    assert used(c, BUF + 0x8000) == 5 and used(b, BUF + 0x8000) == 0
    assert used(a, BUF + 0x8000) == 0                   # not to itself
    # c's buffer is busy: the next send tries c, then (retry) c again; b gets nothing
    a.memory.write_u32(BUF, 0)                        # as lguest_send_dma does
    a.call(abi.HC_SEND_DMA, keys["a"], BUF)
    assert used(a, BUF) == 0 and used(b, BUF + 0x8000) == 0
    # c unbinds: b is now the most recent binder
    c.call(abi.HC_BIND_DMA, keys["c"], BUF + 0x8000, 0, 0)
    a.call(abi.HC_SEND_DMA, keys["a"], BUF)
    assert used(b, BUF + 0x8000) == 5
    svc.close()


def test_no_binder_means_nothing_happens(machine):
    svc, d, keys = lan_world(machine)
    a = d["a"]
    put_dma(a, BUF, [(BUF + 0x1000, 5)])
    a.call(abi.HC_SEND_DMA, keys["a"] + 8, BUF)
    assert used(a, BUF) == 0 and not any(x.msis for x in d.values())
    svc.close()


def test_oversize_frames_on_a_lan_are_dropped(machine):
    svc, d, keys = lan_world(machine)
    a, b = d["a"], d["b"]
    put_dma(b, BUF, [(BUF + 0x1000, 4096)])
    b.call(abi.HC_BIND_DMA, keys["b"] + 4, BUF, 1, 2)
    put_dma(a, BUF, [(BUF + 0x1000, 1000), (BUF + 0x2000, 515)])   # 1515 bytes
    a.call(abi.HC_SEND_DMA, keys["a"] + 4, BUF)
    assert used(a, BUF) == 0 and used(b, BUF) == 0 and svc.lans["lan0"].dropped == 1
    put_dma(a, BUF, [(BUF + 0x1000, 1000), (BUF + 0x2000, 514)])   # 1514: fine
    a.call(abi.HC_SEND_DMA, keys["a"] + 4, BUF)
    assert used(a, BUF) == used(b, BUF) == 1514
    svc.close()


def test_capture_writes_each_delivered_frame(machine, tmp_path):
    svc, d, keys = lan_world(machine)
    a, b = d["a"], d["b"]
    svc.capture("lan0", tmp_path / "lan0.pcap")
    put_dma(b, BUF, [(BUF + 0x1000, 2000)])
    b.call(abi.HC_BIND_DMA, keys["b"] + 4, BUF, 1, 2)
    frame = bytes(range(60))
    a.memory.write(BUF + 0x1000, frame)
    put_dma(a, BUF, [(BUF + 0x1000, 60)])
    a.call(abi.HC_SEND_DMA, keys["a"] + 4, BUF)
    svc.close()
    assert read_pcap(tmp_path / "lan0.pcap") == [frame]


# --- bad sections: who is killed ----------------------------------------------------------
@pytest.mark.parametrize("section", [
    (BUF + 0xF00, 0x200),                        # crosses a page
    (BUF, 4097),                                 # longer than a page
    (0x1000, 16),                                # the reserved low 1 MiB
])
def test_a_bad_source_section_kills_the_sender(machine, section):
    svc, d, keys = lan_world(machine)
    a, b = d["a"], d["b"]
    put_dma(b, BUF, [(BUF + 0x1000, 4096)])
    b.call(abi.HC_BIND_DMA, keys["b"] + 4, BUF, 1, 2)
    put_dma(a, BUF + 0x8000, [section])
    with pytest.raises(GuestStop, match="bad dma section"):
        a.call(abi.HC_SEND_DMA, keys["a"] + 4, BUF + 0x8000)
    assert b.crashed is None and used(b, BUF) == 0
    svc.close()


def test_a_section_at_the_end_of_ram_is_fine(machine):
    """The last bytes of RAM are below pfn_limit (the device pages follow)."""
    svc, d, keys = lan_world(machine)
    a, b = d["a"], d["b"]
    put_dma(b, BUF, [(BUF + 0x1000, 4096)])
    b.call(abi.HC_BIND_DMA, keys["b"] + 4, BUF, 1, 2)
    put_dma(a, BUF + 0x8000, [(4 * MiB - 16, 16)])
    a.call(abi.HC_SEND_DMA, keys["a"] + 4, BUF + 0x8000)
    assert used(a, BUF + 0x8000) == used(b, BUF) == 16
    svc.close()


def test_a_section_ending_at_pfn_limit_is_refused_as_the_reference(machine):
    svc, d, keys = lan_world(machine, n=2, sizes=(4, 4))
    a, b = d["a"], d["b"]
    top = svc.guests["a"].top                        # RAM + descriptor page + the LAN page
    put_dma(b, BUF, [(BUF + 0x1000, 4096)])
    b.call(abi.HC_BIND_DMA, keys["b"] + 4, BUF, 1, 2)
    put_dma(a, BUF + 0x8000, [(top - 16, 16)])       # (addr+len)/4096 == pfn_limit
    with pytest.raises(GuestStop):
        a.call(abi.HC_SEND_DMA, keys["a"] + 4, BUF + 0x8000)
    svc.close()


def test_a_bad_receiver_list_kills_the_receiver_only(machine):
    svc, d, keys = lan_world(machine)
    a, b = d["a"], d["b"]
    put_dma(b, BUF, [(BUF + 0xF00, 0x200)])          # crosses a page
    b.call(abi.HC_BIND_DMA, keys["b"] + 4, BUF, 1, 2)
    put_dma(a, BUF, [(BUF + 0x1000, 8)])
    a.call(abi.HC_SEND_DMA, keys["a"] + 4, BUF)
    assert "bad dma section" in b.crashed and a.crashed is None and used(a, BUF) == 0
    # its bindings are gone: the next send finds no binder
    a.call(abi.HC_SEND_DMA, keys["a"] + 4, BUF)
    assert used(a, BUF) == 0
    svc.close()



def test_a_receiver_list_in_a_readonly_region_kills_the_receiver_not_its_senders(machine):
    """A DMA array the VMM could read but not write back (a read-only grant
    window, the IVC info page) is refused like any array outside RAM."""
    from paravm.memory import Region
    svc, d, keys = lan_world(machine)
    a, b = d["a"], d["b"]
    ro = machine.alloc(1, "ro-window")
    b.memory.add_region(Region(0xF2000000, ro, readonly=True))
    ro.buffer[:abi.DMA_SIZE] = abi.DMA.pack(0, 0, *([BUF + 0x1000] + [0] * 15),
                                            *([64] + [0] * 15))
    b.call(abi.HC_BIND_DMA, keys["b"] + 4, 0xF2000000, 1, 2)
    put_dma(a, BUF, [(BUF + 0x1000, 8)])
    a.call(abi.HC_SEND_DMA, keys["a"] + 4, BUF)
    assert b.crashed and a.crashed is None
    a.call(abi.HC_SEND_DMA, keys["a"] + 4, BUF)     # its binding is gone
    assert a.crashed is None
    svc.close()

# --- the launcher API ---------------------------------------------------------------------
def test_launcher_requests_and_errors(machine):
    svc, d = world(machine, [spec("a", 1, 4, [ConsoleSpec()])])
    a, la = d["a"], svc.launcher("a")
    with pytest.raises(OSError) as e:
        la.initialize()
    assert e.value.errno == errno.EBUSY
    with pytest.raises(OSError) as e:
        la.getdma(0x300000)
    assert e.value.errno == errno.ENOENT                         # nothing bound
    for i in range(2):
        put_dma(a, BUF + i * abi.DMA_SIZE, [(BUF + 0x1000, 256)])
    a.call(abi.HC_BIND_DMA, 0x300000, BUF, 2, 9)
    assert la.getdma(0x300000) == (BUF, 9) and used(a, BUF) == 9   # busy: holds the irq
    assert la.getdma(0x300000) == (BUF + abi.DMA_SIZE, 9)
    with pytest.raises(OSError) as e:
        la.getdma(0x300000)
    assert e.value.errno == errno.ENOENT                         # all busy (the reference: a busy one)
    assert la.write_dma(BUF, b"input") == 5 and used(a, BUF) == 5
    assert a.memory.read(BUF + 0x1000, 5) == b"input"
    la.irq(9)
    assert a.msis == [abi.VECTOR_BASE + 9]
    with pytest.raises(OSError) as e:
        la.irq(32)
    assert e.value.errno == errno.EINVAL
    assert la.break_(True) and a.paused is True
    la.break_(False)
    assert a.paused is False
    svc.domain_stopped(a)
    with pytest.raises(OSError) as e:
        la.irq(1)
    assert e.value.errno == errno.ENOENT                         # the guest is gone
    svc.close()


def test_device_status_and_removal(machine):
    svc, d = world(machine, [spec("a", 1, 4, [ConsoleSpec(), NetSpec("x")])])
    a, la = d["a"], svc.launcher("a")
    desc = a.ram.size
    a.memory.write(desc + 12 + 4, struct.pack("<H", 7))     # the guest: ACK|DRIVER|DRIVER_OK
    assert la.device_status(1) == 7 and la.device_status(0) == 0
    la.remove_device(1)
    assert la.device_status(1) == 7 | abi.S_REMOVED and a.msis == [abi.VECTOR_BASE + 2]
    svc.close()


# --- console --------------------------------------------------------------------------------
def test_console_input_waits_for_a_buffer_then_fills_it(machine):
    svc, d = world(machine, [spec("a", 1, 4, [ConsoleSpec()])])
    a, la = d["a"], svc.launcher("a")
    con = la.devices[0]
    con.feed(b"typed before any buffer\n")               # kept, not discarded
    assert bytes(con.pending) == b"typed before any buffer\n"
    put_dma(a, BUF, [(BUF + 0x1000, 10)])
    a.call(abi.HC_BIND_DMA, 0, BUF, 1, 1)
    con.pump()
    assert used(a, BUF) == 10 and a.memory.read(BUF + 0x1000, 10) == b"typed befo"
    assert a.msis == [abi.VECTOR_BASE + 1]
    a.memory.write_u32(BUF, 0)                          # the guest consumed it
    con.pump()
    assert a.memory.read(BUF + 0x1000, 10) == b"re any buf"
    svc.close()


# --- block ------------------------------------------------------------------------------------
def block_world(machine, tmp_path, content: bytes, readonly=False):
    img = tmp_path / "disk.img"
    img.write_bytes(content)
    svc, d = world(machine, [spec("a", 1, 4, [BlockSpec(path=img, readonly=readonly)])])
    a = d["a"]
    page = svc.guests["a"].device_gpa[0]
    put_dma(a, BUF, [(BUF + 0x1000, 4096), (BUF + 0x2000, 4096)])   # the reply buffer
    assert a.call(abi.HC_BIND_DMA, page, BUF, 1, 1) == 1
    return svc, a, page, img


def request(a, page, kind, sector, nbytes, data_sections=()):
    a.memory.write(page, struct.pack("<iIIi", kind, sector, nbytes, 0))
    put_dma(a, BUF + 0x8000, list(data_sections))
    a.call(abi.HC_SEND_DMA, page, BUF + 0x8000)
    return struct.unpack("<iIIiIIQ", a.memory.read(page, abi.BLOCK_SIZE))


def test_block_read_matches_the_file_and_odd_sizes(machine, tmp_path):
    content = os.urandom(3 * 4096 + 700)                # not a multiple of 512
    svc, a, page, _img = block_world(machine, tmp_path, content)
    info = struct.unpack("<iIIiIIQ", a.memory.read(page, abi.BLOCK_SIZE))
    assert info[4] == (len(content) + 511) // 512 and info[6] == len(content)
    r = request(a, page, abi.BLOCK_READ, 8, 8192)
    assert r[3] == abi.BLOCK_DONE and used(a, BUF) == 8192
    assert a.memory.read(BUF + 0x1000, 4096) + a.memory.read(BUF + 0x2000, 4096) == \
        content[4096:12288]
    a.memory.write_u32(BUF, 0)
    r = request(a, page, abi.BLOCK_READ, 24, 1024)       # the partial last sector and beyond
    assert r[3] == abi.BLOCK_DONE and used(a, BUF) == 1024
    assert a.memory.read(BUF + 0x1000, 1024) == content[12288:] + bytes(1024 - 700)
    a.memory.write_u32(BUF, 0)
    r = request(a, page, abi.BLOCK_READ, 26, 512)        # past num_sectors
    assert r[3] == abi.BLOCK_ERROR
    assert a.msis.count(abi.VECTOR_BASE + 1) == 3
    svc.close()


def test_block_write_reaches_the_file_flush_and_limits(machine, tmp_path):
    svc, a, page, img = block_world(machine, tmp_path, bytes(8192))
    a.memory.write(BUF + 0x3000, b"\xAB" * 1024)
    r = request(a, page, abi.BLOCK_WRITE, 2, 1024, [(BUF + 0x3000, 1024)])
    assert r[3] == abi.BLOCK_DONE
    assert request(a, page, abi.BLOCK_FLUSH, 0, 0)[3] == abi.BLOCK_DONE
    assert img.read_bytes()[1024:2048] == b"\xAB" * 1024
    r = request(a, page, abi.BLOCK_WRITE, 15, 1024, [(BUF + 0x3000, 1024)])   # would grow it
    assert r[3] == abi.BLOCK_ERROR and img.stat().st_size == 8192
    assert request(a, page, 7, 0, 0)[3] == abi.BLOCK_ERROR                    # unknown type
    svc.close()


def test_a_read_only_disk_refuses_writes(machine, tmp_path):
    svc, a, page, img = block_world(machine, tmp_path, b"\x01" * 4096, readonly=True)
    a.memory.write(BUF + 0x3000, b"\xFF" * 512)
    assert request(a, page, abi.BLOCK_WRITE, 0, 512, [(BUF + 0x3000, 512)])[3] == abi.BLOCK_ERROR
    assert img.read_bytes() == b"\x01" * 4096
    svc.close()


def test_a_read_without_a_reply_buffer_is_an_error_not_a_kill(machine, tmp_path):
    svc, a, page, _img = block_world(machine, tmp_path, bytes(4096))
    a.memory.write_u32(BUF, 1)                           # the reply buffer is busy
    assert request(a, page, abi.BLOCK_READ, 0, 512)[3] == abi.BLOCK_ERROR
    assert a.crashed is None
    svc.close()


def test_a_stopped_guest_leaves_its_lan_slot_empty(machine):
    svc, d, keys = lan_world(machine)
    b = d["b"]
    slot = svc.lans["lan0"].slots["b"]
    assert b.memory.read(keys["b"] + 6 * slot, 6) == abi.net_mac(2)
    svc.domain_stopped(b)
    assert d["a"].memory.read(keys["a"] + 6 * slot, 6) == bytes(6)    # others see it gone
    svc.close()


def test_a_block_write_shorter_than_announced_writes_nothing(machine, tmp_path):
    svc, a, page, img = block_world(machine, tmp_path, bytes(4096))
    a.memory.write(BUF + 0x3000, b"\xEE" * 512)
    r = request(a, page, abi.BLOCK_WRITE, 0, 1024, [(BUF + 0x3000, 512)])
    assert r[3] == abi.BLOCK_ERROR and img.read_bytes() == bytes(4096)
    svc.close()


def test_console_input_is_written_before_used_len(machine):
    """deliver() fills the data, then used_len: never the irq as a busy mark."""
    svc, d = world(machine, [spec("a", 1, 4, [ConsoleSpec()])])
    a, la = d["a"], svc.launcher("a")
    put_dma(a, BUF, [(BUF + 0x1000, 16)])
    a.call(abi.HC_BIND_DMA, 0, BUF, 1, 1)
    writes = []
    real = a.memory.write_u32
    a.memory.write_u32 = lambda gpa, v: (writes.append((gpa, v, a.memory.read(BUF + 0x1000, 2))),
                                          real(gpa, v))
    assert la.deliver(0, b"hi") == (2, 1)
    assert writes == [(BUF, 2, b"hi")]                # one store of used_len, data already there
    svc.close()


def test_a_restarted_guest_gets_fresh_pages_and_launcher(machine, tmp_path):
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(4096))
    specs = [spec("a", 1, 4, [NetSpec("lan0"), BlockSpec(path=img)]), spec("b", 2, 4, [NetSpec("lan0")])]
    svc, d = world(machine, specs)
    a = d["a"]
    old = svc.launcher("a")
    a.memory.write(a.ram.size + 4, struct.pack("<H", 7))          # status set by the guest
    svc.domain_stopped(a)
    key = svc.guests["a"].device_gpa[0]
    assert a.memory.read(key, 6) == bytes(6)                       # slot 0 emptied
    a2 = FakeDomain(machine, "a", 1, 4 * MiB, svc.regions("a"))
    svc.attach(a2)
    assert svc.launcher("a") is not old and old.devices[1].fd == -1   # the old one closed
    assert a2.memory.read(key, 6) == abi.net_mac(1)                # the slot is back
    assert svc.launcher("a").device_status(0) == 0                 # statuses start over
    svc.close()
