"""The example mediated GPU (paravm.devices.mgpu) over the real MPT services,
without KVM: a real Domain over the memslot-keeping fake backend
(tests/unit/mpt_fakes.py), its registers driven through the trap area and
its GTT rewritten through the tracked pages, both as MMIO exits the way KVM
would take them; rings, GTTs and surfaces written into guest memory here.
The layouts are guest/include/paravm/mgpu.h's (checked by test_mgpu_abi.py)."""

from __future__ import annotations

import random
import zlib

import pytest

from paravm.arch.x86 import layout as L
from paravm.devices import mgpu as M
from paravm.devices.mgpu import MgpuType
from paravm.memory import PAGE_SIZE
from paravm.services.mpt.service import MptService
from paravm.vm.vcpu import GuestStop

from mpt_fakes import Guest, destroy, fires, make_domain

P = PAGE_SIZE
RAM = 4 << 20
GTT = 0x200000                     # the GTT: up to 2 pages
RING = 0x210000
FENCE = 0x211000
POOL = 0x280                       # surface pages are taken from GFNs POOL..POOL+63
REGS = L.MGPU_REGS_GPA
MSI = 0xFEE00000
SENTINEL = 0xA5A5A5A5


def cmd(op, dst=0, pitch=0, x=0, y=0, w=0, h=0, src=0, spitch=0, sx=0, sy=0, color=0,
        tag=0):
    return M.CMD.pack(op, 0, dst, pitch, src, spitch, x, y, w, h, sx, sy, color,
                      SENTINEL, SENTINEL, tag, 0)


class Rig:
    """One domain with an mgpu, and a model of what its GTT says."""

    def __init__(self, machine, tmp_path):
        self.machine = machine
        self.mpt = MptService(machine)
        self.dom = make_domain(machine, "g", RAM)
        self.png = tmp_path / "frame.png"
        self.dev = MgpuType.attach(self.mpt, self.dom, png=self.png)
        self.guest = Guest(self.dom, machine)
        self.entries: dict[int, int] = {}
        self.tail = 0
        self.slots = 0

    def close(self):
        self.mpt.close()
        destroy(self.dom)

    # registers: 4-byte MMIO accesses of the guest
    def reg(self, off):
        return self.guest.read_u32(REGS + off)

    def set_reg(self, off, value):
        self.guest.write_u32(REGS + off, value)

    @property
    def ram(self):
        return self.dom.ram.buffer

    @property
    def inst(self):
        return self.mpt._instances[self.dev.handle]

    # the GTT
    def set_entry(self, index, entry):
        """One 8-byte guest store (a tracked-page exit once the GTT is loaded)."""
        self.entries[index] = entry
        self.guest.write_u64(GTT + index * 8, entry)

    def map_scattered(self, n, seed=1):
        """Graphics pages 0..n-1 -> pool pages in a shuffled order."""
        order = list(range(64))
        random.Random(seed).shuffle(order)
        for i in range(n):
            self.set_entry(i, ((POOL + order[i]) * P) | M.GTT_PRESENT)

    def load(self, pages=1, base=GTT):
        self.set_reg(M.REG_GTT_BASE_LO, base & 0xFFFFFFFF)
        self.set_reg(M.REG_GTT_BASE_HI, base >> 32)
        self.set_reg(M.REG_GTT_PAGES, pages)

    # graphics memory as the test's model of the GTT says
    def gpa_of(self, ga):
        return (self.entries[ga >> 12] & M.GTT_ADDR_MASK) + (ga & (P - 1))

    def write_gfx(self, ga, data):
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, P - ((ga + pos) & (P - 1)))
            gpa = self.gpa_of(ga + pos)
            self.ram[gpa:gpa + n] = data[pos:pos + n]
            pos += n

    def read_gfx(self, ga, n, ram=None):
        ram = self.ram if ram is None else ram
        out = b""
        while len(out) < n:
            k = min(n - len(out), P - ((ga + len(out)) & (P - 1)))
            gpa = self.gpa_of(ga + len(out))
            out += bytes(ram[gpa:gpa + k])
        return out

    # the ring
    def ring(self, slots=8, fence=FENCE):
        self.set_reg(M.REG_RING_BASE_LO, RING)
        self.set_reg(M.REG_RING_BASE_HI, 0)
        self.set_reg(M.REG_RING_SIZE, slots)
        self.set_reg(M.REG_FENCE_LO, fence)
        self.set_reg(M.REG_FENCE_HI, 0)
        self.slots, self.tail = slots, 0

    def slot_gpa(self, n):
        return RING + (n & (self.slots - 1)) * M.CMD_SIZE

    def submit(self, *cmds):
        """Queue commands; their command numbers."""
        nums = []
        for c in cmds:
            self.dom.memory.write(self.slot_gpa(self.tail), c)
            nums.append(self.tail)
            self.tail += 1
        return nums

    def queue(self, *cmds):
        """Submit *cmds* (not kicked): guest memory as it is now, to edit
        into what it must be after the doorbell."""
        self.submit(*cmds)
        return bytearray(self.ram)

    def kick(self, tail=None):
        self.set_reg(M.REG_RING_TAIL, self.tail if tail is None else tail)

    def run(self, *cmds):
        """Submit and kick; each command's (status, result)."""
        nums = self.submit(*cmds)
        self.kick()
        return [self.status(n) for n in nums]

    def status(self, n):
        return M.FENCE.unpack(self.dom.memory.read(self.slot_gpa(n) + M.CMD_STATUS_OFF, 8))

    def fence(self):
        return M.FENCE.unpack(self.dom.memory.read(FENCE, 8))

    def expect_written_back(self, expected, results):
        """Put what the device writes besides pixels (statuses, fence) into *expected*."""
        for n, (status, result) in results.items():
            off = self.slot_gpa(n) + M.CMD_STATUS_OFF
            expected[off:off + 8] = M.FENCE.pack(status, result)
        return expected


@pytest.fixture
def rig(machine, tmp_path):
    r = Rig(machine, tmp_path)
    yield r
    r.close()


@pytest.fixture
def ready(rig):
    """A loaded one-page GTT over 64 scattered pages, an 8-slot ring, a fence."""
    rig.map_scattered(64)
    rig.load()
    rig.ring()
    assert rig.reg(M.REG_STATUS) == M.STATUS_GTT_VALID | M.STATUS_RING_VALID
    return rig


def rand_bytes(n, seed=7):
    return random.Random(seed).randbytes(n)


# ------------------------------------------------------------------------------ registers

def test_attach_shows_the_registers_opregion_and_boot_info(rig):
    assert rig.reg(M.REG_ID) == M.MGPU_ID and rig.reg(M.REG_VERSION) == M.MGPU_VERSION
    assert rig.reg(M.REG_STATUS) == 0 and rig.reg(M.REG_OPREGION) == L.MPT_OPREGION_GPA
    assert rig.dom.memory.read_u32(L.BOOT_INFO + L.BI_OFF_MGPU) == 1
    assert rig.dom.memory.read_u32(L.BOOT_INFO + L.BI_OFF_MGPU_OPREGION) == L.MPT_OPREGION_GPA
    assert rig.guest.read(L.MPT_OPREGION_GPA, 8) == b"IntelGra"
    assert rig.dom.memory.read(L.MPT_OPREGION_GPA, len(M.OPREGION_TEXT)) == M.OPREGION_TEXT


@pytest.mark.parametrize("off", [M.REG_ID, M.REG_VERSION, M.REG_STATUS, M.REG_ERROR,
                                 M.REG_RING_HEAD, M.REG_SEQNO, M.REG_OPREGION])
def test_read_only_registers_ignore_writes(rig, off):
    before = rig.reg(off)
    rig.set_reg(off, 0x12345678)
    assert rig.reg(off) == before


@pytest.mark.parametrize("off", [0x04C, 0x05C, 0x100, M.REGS_SIZE - 4])
def test_offsets_without_a_register_read_0_and_ignore_writes(rig, off):
    rig.set_reg(off, 0xFFFFFFFF)
    assert rig.reg(off) == 0
    assert rig.reg(M.REG_STATUS) == 0


@pytest.mark.parametrize("gpa, n", [(REGS, 1), (REGS, 2), (REGS + 2, 2), (REGS + 1, 4),
                                    (REGS + 8, 8), (REGS + 0x31, 1)])
@pytest.mark.parametrize("write", [False, True])
def test_register_accesses_other_than_aligned_32_bits_stop_the_guest(rig, gpa, n, write):
    with pytest.raises(GuestStop, match=r"^mgpu: \d-byte access at register offset"):
        if write:
            rig.guest.write(gpa, b"\1" * n)
        else:
            rig.guest.read(gpa, n)


# ------------------------------------------------------------------------------ commands

def test_fill_writes_the_rect_through_a_scattered_gtt_and_nothing_else(ready):
    pitch, x, y, w, h, color = 2400, 50, 3, 500, 20, 0x00123456   # rows cross pages
    expected = ready.queue(cmd(M.OP_FILL, 0, pitch, x, y, w, h, color=color))
    for r in range(y, y + h):
        ga = r * pitch + x * 4
        pos = 0
        while pos < w * 4:
            n = min(w * 4 - pos, P - ((ga + pos) & (P - 1)))
            gpa = ready.gpa_of(ga + pos)
            expected[gpa:gpa + n] = (color.to_bytes(4, "little") * w)[pos:pos + n]
            pos += n
    ready.kick()
    assert ready.status(0) == (M.E_OK, 0)
    ready.expect_written_back(expected, {0: (0, 0)})
    expected[FENCE:FENCE + 8] = M.FENCE.pack(1, 0)
    assert bytes(ready.ram) == bytes(expected)
    assert ready.reg(M.REG_SEQNO) == 1 and ready.reg(M.REG_RING_HEAD) == 1


def test_copy_reads_the_whole_source_before_writing_overlapping_rects(ready):
    pitch, w, h = 1200, 250, 30
    ready.write_gfx(0, rand_bytes(pitch * 40))
    src = [ready.read_gfx(r * pitch, pitch) for r in range(40)]
    sx, sy, x, y = 5, 2, 8, 4            # dst overlaps src, shifted down and right
    [res] = ready.run(cmd(M.OP_COPY, 0, pitch, x, y, w, h, src=0, spitch=pitch, sx=sx, sy=sy))
    assert res == (M.E_OK, 0)
    for r in range(40):
        want = bytearray(src[r])
        if y <= r < y + h:
            want[x * 4:(x + w) * 4] = src[r - y + sy][sx * 4:(sx + w) * 4]
        assert ready.read_gfx(r * pitch, pitch) == bytes(want), f"row {r}"


def test_copy_between_two_surfaces_with_their_own_pitches(ready):
    ready.write_gfx(0x10000, rand_bytes(64 * 12, seed=3))      # src: pitch 64, 12 rows
    [res] = ready.run(cmd(M.OP_COPY, 0x20000, 4096, 1, 2, 10, 12, src=0x10000, spitch=64,
                          sx=3, sy=0))
    assert res == (M.E_OK, 0)
    for r in range(12):
        assert ready.read_gfx(0x20000 + (2 + r) * 4096 + 4, 40) == \
            ready.read_gfx(0x10000 + r * 64 + 12, 40)


def test_checksum_is_zlibs_crc32_of_the_rows_and_writes_no_pixel(ready):
    pitch, x, y, w, h = 2400, 7, 1, 333, 9
    ready.write_gfx(0, rand_bytes(pitch * 12))
    expected = ready.queue(cmd(M.OP_CHECKSUM, 0, pitch, x, y, w, h))
    ready.kick()
    want = zlib.crc32(b"".join(ready.read_gfx(r * pitch + x * 4, w * 4)
                               for r in range(y, y + h)))
    assert ready.status(0) == (M.E_OK, want)
    ready.expect_written_back(expected, {0: (0, want)})
    expected[FENCE:FENCE + 8] = M.FENCE.pack(1, 0)
    assert bytes(ready.ram) == bytes(expected)


def test_present_writes_a_png_with_the_rects_pixels(ready):
    from PIL import Image
    pitch, w, h = 400, 37, 5
    ready.write_gfx(0x3000, rand_bytes(pitch * h, seed=11))
    assert ready.run(cmd(M.OP_PRESENT, 0x3000, pitch, 0, 0, w, h)) == [(M.E_OK, 0)]
    rgb = bytearray()
    for r in range(h):
        row = ready.read_gfx(0x3000 + r * pitch, w * 4)
        for i in range(w):
            word = int.from_bytes(row[i * 4:i * 4 + 4], "little")   # 0x00RRGGBB
            rgb += bytes((word >> 16 & 0xFF, word >> 8 & 0xFF, word & 0xFF))
    with Image.open(ready.png) as img:
        assert img.size == (w, h)
        assert img.convert("RGB").tobytes() == bytes(rgb)
    assert ready.dev.presents == 1 and ready.dev.last_frame == bytes(rgb)


def test_a_png_that_cannot_be_written_is_reported_not_a_guest_error(ready, tmp_path):
    ready.dev.png = tmp_path / "no such dir" / "frame.png"
    assert ready.run(cmd(M.OP_PRESENT, 0, 400, 0, 0, 4, 4)) == [(M.E_OK, 0)]
    assert "frame.png" in ready.dev.png_error and ready.dev.presents == 1


@pytest.mark.parametrize("x, y", [(1, 0), (0, 1)])
def test_present_of_a_rect_not_at_the_origin_is_bad_rect(ready, x, y):
    assert ready.run(cmd(M.OP_PRESENT, 0, 400, x, y, 4, 4)) == [(M.E_BAD_RECT, 0)]
    assert not ready.png.exists() and ready.dev.presents == 0


@pytest.mark.parametrize("c, status", [
    (cmd(M.OP_NOP), M.E_OK),
    (cmd(9), M.E_BAD_OP),
    (cmd(M.OP_PRESENT + 1, 0, 64, 0, 0, 1, 1), M.E_BAD_OP),
    (cmd(M.OP_FILL, 0, 64, 0, 0, 0, 1), M.E_BAD_RECT),
    (cmd(M.OP_FILL, 0, 64, 0, 0, 1, 0), M.E_BAD_RECT),
    (cmd(M.OP_FILL, 0, 62, 0, 0, 1, 1), M.E_BAD_RECT),
    (cmd(M.OP_FILL, 0, 64, 10, 0, 7, 1), M.E_BAD_RECT),
    (cmd(M.OP_FILL, 0, 0, 0, 0, 1, 1), M.E_BAD_RECT),
    (cmd(M.OP_FILL, 0, 1 << 20, 4000, 0, 97, 1), M.E_BAD_RECT),
    (cmd(M.OP_FILL, 0, 64, 0, 4095, 1, 2), M.E_BAD_RECT),
    (cmd(M.OP_COPY, 0, 64, 0, 0, 4, 1, src=0, spitch=8), M.E_BAD_RECT),
    (cmd(M.OP_FILL, 64 * P - 4, 64, 0, 0, 2, 1), M.E_GTT_FAULT),
    (cmd(M.OP_FILL, 0, 4096, 0, 512, 1, 1), M.E_GTT_FAULT),
    (cmd(M.OP_COPY, 0, 64, 0, 0, 1, 1, src=2 << 20, spitch=64), M.E_GTT_FAULT),
], ids=["nop", "op 9", "op 5", "w 0", "h 0", "pitch not a multiple of 4",
        "row wider than the pitch", "pitch 0", "x + w > 4096", "y + h > 4096",
        "src row wider than its pitch", "runs past the mapped pages", "past the GTT's 2 MiB",
        "src past the GTT"])
def test_each_commands_status_is_written_back_into_its_slot(ready, c, status):
    expected = ready.queue(c)
    ready.kick()
    assert ready.status(0) == (status, 0)
    assert ready.fence() == (1, status)
    assert ready.reg(M.REG_ERROR) == status
    assert bool(ready.reg(M.REG_STATUS) & M.STATUS_ERROR) == bool(status)
    # Nothing but the status and the fence was written.
    ready.expect_written_back(expected, {0: (status, 0)})
    expected[FENCE:FENCE + 8] = M.FENCE.pack(1, status)
    assert bytes(ready.ram) == bytes(expected)


def test_commands_before_a_gtt_is_loaded_are_no_gtt(rig):
    rig.ring()
    assert rig.run(cmd(M.OP_FILL, 0, 64, 0, 0, 1, 1), cmd(M.OP_NOP)) == \
        [(M.E_NO_GTT, 0), (M.E_OK, 0)]
    assert rig.fence() == (2, M.E_NO_GTT)


def test_the_fence_carries_the_first_error_and_error_the_last(ready):
    res = ready.run(cmd(M.OP_NOP), cmd(9), cmd(M.OP_FILL, 0, 64, 0, 0, 0, 1),
                    cmd(M.OP_CHECKSUM, 0, 64, 0, 0, 1, 1))
    assert [s for s, _ in res] == [M.E_OK, M.E_BAD_OP, M.E_BAD_RECT, M.E_OK]
    assert ready.fence() == (4, M.E_BAD_OP)
    assert ready.reg(M.REG_ERROR) == M.E_BAD_RECT
    assert ready.dev.commands == 4


def test_without_a_fence_address_no_fence_is_written(rig):
    rig.map_scattered(1)
    rig.load()
    rig.ring(fence=0)
    expected = rig.queue(cmd(M.OP_NOP))
    rig.kick()
    assert rig.status(0) == (0, 0)
    rig.expect_written_back(expected, {0: (0, 0)})
    assert bytes(rig.ram) == bytes(expected)


# ------------------------------------------------------------------------------ the GTT shadow

@pytest.mark.parametrize("bad", [
    RAM | M.GTT_PRESENT,                           # past the guest's RAM
    0x7FFFFFF000 | M.GTT_PRESENT,
    L.MPT_OPREGION_GPA | M.GTT_PRESENT,            # device memory, not RAM
    (POOL * P) | M.GTT_PRESENT | 1 << 52,          # bits outside the address
    (POOL * P) | M.GTT_PRESENT | 2,
    POOL * P,                                      # not present
    0x20000 | M.GTT_PRESENT,                       # the VMM's stub stacks, reserved MiB
    L.PML4 | M.GTT_PRESENT,                        # the guest's page tables
])
def test_a_gtt_entry_that_is_not_guest_ram_faults_and_nothing_is_written(rig, bad):
    rig.map_scattered(4)
    rig.set_entry(2, bad)
    rig.load()
    rig.ring()
    # Graphics pages 0..3, page 2 bad: not even pages 0 and 1 are written.
    expected = rig.queue(cmd(M.OP_FILL, 0, 4096, 0, 0, 1024, 4, color=0xFFFFFF))
    rig.kick()
    assert rig.status(0) == (M.E_GTT_FAULT, 0)
    rig.expect_written_back(expected, {0: (M.E_GTT_FAULT, 0)})
    expected[FENCE:FENCE + 8] = M.FENCE.pack(1, M.E_GTT_FAULT)
    assert bytes(rig.ram) == bytes(expected)
    assert rig.dev.faults == 1
    # A COPY out of it faults too, and the other pages still work.
    assert rig.run(cmd(M.OP_COPY, 0, 4096, 0, 0, 4, 1, src=2 * P, spitch=4096),
                   cmd(M.OP_FILL, 3 * P, 4096, 0, 0, 4, 1, color=1)) == \
        [(M.E_GTT_FAULT, 0), (M.E_OK, 0)]


def test_a_gtt_entry_rewritten_with_an_8_byte_store_takes_effect_at_once(ready):
    new = (POOL + 63) * P + P     # a page outside the pool: GFN POOL+64
    before = ready.guest.exits
    ready.set_entry(0, new | M.GTT_PRESENT)
    assert ready.guest.exits == before + 1 and ready.inst.track_errors == 0
    old_shadow = ready.dev.shadow[0]
    assert old_shadow is not None and old_shadow[0] == ready.mpt.gfn_to_mfn(
        ready.dev.handle, new // P) * P
    assert ready.run(cmd(M.OP_FILL, 0, 64, 0, 0, 2, 1, color=0xABCDEF)) == [(0, 0)]
    assert ready.dom.memory.read(new, 8) == (0xABCDEF).to_bytes(4, "little") * 2


def test_a_2_byte_gtt_store_faults_the_entry_until_a_proper_8_byte_store(ready):
    target = ready.gpa_of(0)
    ready.guest.write(GTT + 2, b"\0\0")                  # a torn store: rejected
    assert ready.inst.track_errors == 1
    fill = cmd(M.OP_FILL, 0, 64, 0, 0, 1, 1, color=0x111111)
    assert ready.run(fill) == [(M.E_GTT_FAULT, 0)]
    assert ready.dom.memory.read_u32(target) == 0
    ready.set_entry(0, target | M.GTT_PRESENT)
    assert ready.run(fill) == [(M.E_OK, 0)]
    assert ready.dom.memory.read_u32(target) == 0x111111


def test_4_byte_gtt_stores_are_reshadowed_before_the_next_command(ready):
    old = ready.gpa_of(0)
    new = (POOL + 64) * P
    # Two 4-byte stores (low half, then high half), as a 32-bit driver writes.
    ready.guest.write_u32(GTT, new | M.GTT_PRESENT)
    ready.guest.write_u32(GTT + 4, 0)
    ready.entries[0] = new | M.GTT_PRESENT
    assert ready.inst.track_errors == 0
    assert ready.run(cmd(M.OP_FILL, 0, 64, 0, 0, 1, 1, color=0x222222)) == [(0, 0)]
    assert ready.dom.memory.read_u32(new) == 0x222222
    assert ready.dom.memory.read_u32(old) == 0
    # The old page's DMA mapping went (only the GTT pointed at it).
    assert ready.mpt.dma_view(ready.dev.handle, ready.mpt.gfn_to_mfn(ready.dev.handle,
                                                                     old // P) * P, 1) is None


def test_a_single_4_byte_store_is_enough_below_4_gib(ready):
    new = (POOL + 65) * P
    ready.guest.write_u32(GTT + 8, new | M.GTT_PRESENT)
    ready.entries[1] = new | M.GTT_PRESENT
    assert ready.run(cmd(M.OP_FILL, P, 64, 0, 0, 1, 1, color=0x333333)) == [(0, 0)]
    assert ready.dom.memory.read_u32(new) == 0x333333


@pytest.mark.parametrize("at, n", [(GTT + 4, 8), (GTT + 6, 4), (GTT + 7, 2)])
def test_a_misaligned_store_faults_every_entry_it_touched(ready, at, n):
    old0, old1 = ready.gpa_of(0), ready.gpa_of(P)
    new1 = (POOL + 64) * P
    # A store across entry 0's high half and entry 1's low half.
    raw = bytearray(ready.dom.memory.read(GTT, 16))
    raw[8:12] = (new1 | M.GTT_PRESENT).to_bytes(4, "little")
    ready.guest.write(at, bytes(raw[at - GTT:at - GTT + n]))
    assert ready.mpt.track_errors(ready.dev.handle) == 1
    fill = [cmd(M.OP_FILL, 0, 64, 0, 0, 1, 1, color=0x444444),
            cmd(M.OP_FILL, P, 64, 0, 0, 1, 1, color=0x444444)]
    assert ready.run(*fill) == [(M.E_GTT_FAULT, 0)] * 2
    for gpa in (old0, old1, new1):
        assert ready.dom.memory.read_u32(gpa) == 0
    # Proper 8-byte stores bring both back.
    ready.set_entry(0, old0 | M.GTT_PRESENT)
    ready.set_entry(1, new1 | M.GTT_PRESENT)
    assert ready.run(*fill) == [(M.E_OK, 0)] * 2
    assert ready.dom.memory.read_u32(new1) == 0x444444 and ready.dom.memory.read_u32(old1) == 0


def test_stores_to_the_gtt_before_it_is_loaded_do_not_exit(rig):
    rig.map_scattered(4)
    assert rig.guest.exits == 0
    rig.load()
    exits = rig.guest.exits
    rig.set_entry(5, (POOL * P) | M.GTT_PRESENT)
    assert rig.guest.exits == exits + 1


def test_unloading_the_gtt_releases_every_dma_mapping_and_tracked_page(ready):
    h = ready.dev.handle
    assert len(ready.inst.dma_by_gfn) == 64 and len(ready.inst.tracked) == 1
    ready.set_reg(M.REG_GTT_PAGES, 0)
    assert ready.inst.dma_by_gfn == {} and ready.inst.tracked == set()
    assert ready.dom.ram_slots.count == 2
    assert ready.reg(M.REG_STATUS) == M.STATUS_RING_VALID
    assert ready.run(cmd(M.OP_FILL, 0, 64, 0, 0, 1, 1)) == [(M.E_NO_GTT, 0)]
    exits = ready.guest.exits
    ready.guest.write_u64(GTT, 0)                        # not tracked any more
    assert ready.guest.exits == exits
    # Loading again maps them again; a two-page GTT tracks two pages.
    ready.map_scattered(64)
    ready.load(pages=2)
    assert len(ready.inst.dma_by_gfn) == 64 and len(ready.inst.tracked) == 2
    assert ready.dom.ram_slots.count == 5
    ready.set_reg(M.REG_GTT_PAGES, 1)                     # a reload drops the old one first
    assert len(ready.inst.tracked) == 1 and ready.dom.ram_slots.count == 4
    assert ready.mpt.is_valid_gfn(h, POOL)


def test_entries_sharing_a_page_share_its_mapping(rig):
    for i in range(3):
        rig.set_entry(i, (POOL * P) | M.GTT_PRESENT)
    rig.load()
    (entry,) = rig.inst.dma_by_gfn.values()
    assert entry.refs == 3
    rig.set_entry(1, 0)
    assert entry.refs == 2
    rig.set_reg(M.REG_GTT_PAGES, 0)
    assert rig.inst.dma_by_gfn == {}


@pytest.mark.parametrize("base, pages", [
    (GTT, M.GTT_MAX_PAGES + 1),
    (GTT + 8, 1),                 # not page aligned
    (RAM - P, 2),                 # runs past RAM
    (1 << 32, 1),
    (0x1000, 1),                  # the reserved MiB: cannot be tracked
])
def test_a_gtt_that_cannot_be_read_or_tracked_is_not_loaded(rig, base, pages):
    rig.map_scattered(4)
    if base < RAM:
        rig.dom.memory.write_u64(base, (POOL * P) | M.GTT_PRESENT)
    rig.load(pages, base)
    assert rig.reg(M.REG_STATUS) & M.STATUS_GTT_VALID == 0
    assert rig.inst.dma_by_gfn == {} and rig.inst.tracked == set()
    assert rig.dom.ram_slots.count == 2


# ------------------------------------------------------------------------------ the ring

def test_tail_more_than_a_ring_ahead_runs_nothing_and_fences_bad_ring(ready):
    ready.submit(*[cmd(M.OP_NOP)] * 8)
    ready.kick(tail=9)                                    # TAIL - HEAD = 9 > 8
    assert ready.fence() == (0, M.E_BAD_RING)
    assert all(ready.status(n) == (SENTINEL, SENTINEL) for n in range(8))
    assert ready.reg(M.REG_RING_HEAD) == 0 and ready.reg(M.REG_SEQNO) == 0
    assert ready.reg(M.REG_IRQ_STATUS) == M.IRQ_COMPLETE | M.IRQ_ERROR
    assert ready.dev.commands == 0
    ready.kick(tail=8)                                    # a full ring is fine
    assert ready.fence() == (8, M.E_OK) and ready.reg(M.REG_RING_HEAD) == 8


def test_a_doorbell_without_a_ring_fences_bad_ring(rig):
    rig.set_reg(M.REG_FENCE_LO, FENCE)
    rig.set_reg(M.REG_RING_TAIL, 1)
    assert M.FENCE.unpack(rig.dom.memory.read(FENCE, 8)) == (0, M.E_BAD_RING)


@pytest.mark.parametrize("size", [0, 3, 6, M.RING_MAX * 2])
def test_a_ring_size_that_is_not_a_power_of_two_up_to_4096_is_no_ring(rig, size):
    rig.set_reg(M.REG_RING_BASE_LO, RING)
    rig.set_reg(M.REG_RING_SIZE, size)
    assert rig.reg(M.REG_STATUS) & M.STATUS_RING_VALID == 0


def test_head_and_tail_run_free_around_the_ring(ready):
    ready.ring(slots=4)
    for round_ in range(3):
        nums = ready.submit(*[cmd(M.OP_NOP, tag=round_)] * 3)
        ready.kick()
        assert [ready.status(n) for n in nums] == [(0, 0)] * 3
    assert ready.reg(M.REG_RING_HEAD) == 9 and ready.reg(M.REG_SEQNO) == 9
    assert ready.fence() == (9, 0)


def test_setting_the_ring_again_resets_head_tail_and_the_error_bit(ready):
    ready.run(cmd(9))
    assert ready.reg(M.REG_STATUS) & M.STATUS_ERROR
    ready.ring()
    assert ready.reg(M.REG_RING_HEAD) == 0
    assert ready.reg(M.REG_STATUS) & M.STATUS_ERROR == 0
    assert ready.reg(M.REG_SEQNO) == 1                    # completed commands stay counted


# ------------------------------------------------------------------------------ interrupts

def test_irq_status_is_write_1_to_clear(ready):
    ready.run(cmd(M.OP_NOP))
    assert ready.reg(M.REG_IRQ_STATUS) == M.IRQ_COMPLETE
    ready.set_reg(M.REG_IRQ_STATUS, M.IRQ_ERROR)
    assert ready.reg(M.REG_IRQ_STATUS) == M.IRQ_COMPLETE
    ready.set_reg(M.REG_IRQ_STATUS, 0)
    assert ready.reg(M.REG_IRQ_STATUS) == M.IRQ_COMPLETE
    ready.run(cmd(9))
    assert ready.reg(M.REG_IRQ_STATUS) == M.IRQ_COMPLETE | M.IRQ_ERROR
    ready.set_reg(M.REG_IRQ_STATUS, M.IRQ_COMPLETE)
    assert ready.reg(M.REG_IRQ_STATUS) == M.IRQ_ERROR
    ready.set_reg(M.REG_IRQ_STATUS, 0xFFFFFFFF)
    assert ready.reg(M.REG_IRQ_STATUS) == 0


def _msi(rig, control=1, enable=M.IRQ_COMPLETE, address=MSI, data=L.VEC_MGPU):
    rig.set_reg(M.REG_MSI_ADDRESS, address)
    rig.set_reg(M.REG_MSI_DATA, data)
    rig.set_reg(M.REG_IRQ_ENABLE, enable)
    rig.set_reg(M.REG_MSI_CONTROL, control)


def _fired(rig):
    return sum(fires(irq) for irq in rig.inst.irqfds.values())


def test_the_completion_msi_is_raised_when_enabled(ready):
    _msi(ready)
    ready.run(cmd(M.OP_NOP))
    assert [v[:2] for v in ready.dom.vm.irqfds.values()] == [(MSI, L.VEC_MGPU)]
    assert _fired(ready) == 1 and ready.dev.irqs == 1
    ready.set_reg(M.REG_IRQ_STATUS, M.IRQ_COMPLETE)
    ready.run(cmd(M.OP_NOP))
    assert _fired(ready) == 1 and ready.dev.irqs == 2


@pytest.mark.parametrize("control, enable", [
    (0, M.IRQ_COMPLETE),          # MSI disabled in the capability
    (1, 0),                       # the device's interrupt disabled
    (3, M.IRQ_COMPLETE),          # multi-message: the MPT refuses it
    (1 | 1 << 7, M.IRQ_COMPLETE), # 64-bit
])
def test_no_msi_unless_enabled_in_both_places(ready, control, enable):
    _msi(ready, control, enable)
    ready.run(cmd(M.OP_NOP))
    assert _fired(ready) == 0 and ready.dev.irqs == 0
    assert ready.reg(M.REG_IRQ_STATUS) == M.IRQ_COMPLETE      # the status is still set


def test_an_error_only_interrupt_fires_on_errors(ready):
    _msi(ready, enable=M.IRQ_ERROR)
    ready.run(cmd(M.OP_NOP))
    assert _fired(ready) == 0
    ready.run(cmd(9))
    assert _fired(ready) == 1


# ------------------------------------------------------------------------------ lifetime

def test_the_domain_stopping_releases_the_device(ready):
    ranges = ready.machine.live_ranges
    dom = ready.dom
    dom.stop("test")
    ready.mpt.domain_stopped(dom)
    assert ready.mpt.instance(ready.dev.handle) is None
    assert dom.ram_slots.count == 2 and len(dom.mmio_bus) == 0
    assert [s[3] for s in dom.vm.table()] == [False, False]
    assert ready.machine.live_ranges == ranges - 1          # the OpRegion's frames
    assert ready.dev.shadow == [] and ready.dev.gtt_pages == 0


def test_stats_count_commands_faults_and_track_errors(ready):
    ready.set_entry(1, 0)
    ready.guest.write(GTT + 16, b"\1")
    ready.run(cmd(M.OP_NOP), cmd(M.OP_FILL, P, 64, 0, 0, 1, 1))
    assert ready.dev.stats() == {"commands": 2, "faults": 1, "presents": 0, "irqs": 0,
                                 "gtt_pages": 1, "track_errors": 1, "png_error": ""}
