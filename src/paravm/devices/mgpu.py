"""The example mediated GPU: a device model built on the MPT services (docs/mpt.md).

It uses the services the way GVT-g's core does (specs/grant-mpt.md §E2):

* its registers are a **trap area** (``set_trap_area``): every access exits
  to :meth:`Mgpu.emulate_mmio_read` / :meth:`Mgpu.emulate_mmio_write`;
* the guest's **GTT** (graphics page -> guest page) is **shadowed**: loading
  it reads every entry (``read_gpa``), maps each valid page for the device
  (``is_valid_gfn``, ``dma_map_guest_page``; anything else is a fault
  entry, GVT's scratch page) and **write-tracks** the GTT pages
  (``enable_page_track``); an 8-byte store to an entry re-reads it from
  guest memory (the write has landed) and re-shadows it at once, a 4-byte
  store marks it for re-shadowing before the next command (GVT's
  post-shadow), any other width makes it a fault entry (GVT's handler
  takes only 4 and 8 bytes);
* the **command ring** is in guest RAM and read with ``read_gpa``; each
  command's status and result, then a fence, are written back with
  ``write_gpa``, then the completion **MSI** is raised through the device's
  virtual MSI capability (``inject_msi``);
* the device touches surfaces only through ``dma_view`` of pages it
  mapped, so a GTT entry pointing outside the guest's RAM can only fail
  a command (``MGPU_E_GTT_FAULT``), never reach another domain;
* an **OpRegion** (``set_opregion``) tells the guest the device's name.

The register and command layouts are ``guest/include/paravm/mgpu.h``'s;
the constants below mirror it (tests/unit check both agree).  Commands run
synchronously on the vCPU thread of the doorbell write (the simplest
order: the write returns to the guest when its commands are done; a device
thread was not built or measured against it).
"""

from __future__ import annotations

import struct
import threading
import zlib

from ..arch.x86 import layout as L
from ..memory import PAGE_SHIFT, PAGE_SIZE
from ..vm.vcpu import GuestStop

TYPE_NAME = "mgpu"
MGPU_ID = 0x5550474D
MGPU_VERSION = 1
REGS_SIZE = 0x1000

REG_ID, REG_VERSION, REG_STATUS, REG_ERROR = 0x000, 0x004, 0x008, 0x00C
REG_GTT_BASE_LO, REG_GTT_BASE_HI, REG_GTT_PAGES = 0x010, 0x014, 0x018
REG_RING_BASE_LO, REG_RING_BASE_HI, REG_RING_SIZE = 0x020, 0x024, 0x028
REG_RING_HEAD, REG_RING_TAIL, REG_SEQNO = 0x02C, 0x030, 0x034
REG_IRQ_STATUS, REG_IRQ_ENABLE = 0x038, 0x03C
REG_MSI_CONTROL, REG_MSI_ADDRESS, REG_MSI_DATA = 0x040, 0x044, 0x048
REG_FENCE_LO, REG_FENCE_HI, REG_OPREGION = 0x050, 0x054, 0x058

STATUS_GTT_VALID, STATUS_RING_VALID, STATUS_ERROR = 1, 2, 4
IRQ_COMPLETE, IRQ_ERROR = 1, 2

GTT_MAX_PAGES = 16
GTT_ENTRIES_PER_PAGE = 512
GTT_PRESENT = 1
GTT_ADDR_MASK = 0x000FFFFFFFFFF000
RING_MAX = 4096
MAX_DIM = 4096

OP_NOP, OP_FILL, OP_COPY, OP_CHECKSUM, OP_PRESENT = 0, 1, 2, 3, 4
E_OK, E_BAD_OP, E_BAD_RECT, E_GTT_FAULT, E_NO_GTT, E_BAD_RING = 0, 1, 2, 3, 4, 5

CMD_SIZE = 64
# struct mgpu_cmd: op, flags, dst, dst_pitch, src, src_pitch, x, y, w, h, sx, sy, color,
# status, result, tag, reserved
CMD = struct.Struct("<6I6HIIIQQ")
CMD_STATUS_OFF = 40
FENCE = struct.Struct("<II")

OPREGION_TEXT = b"IntelGraphicsMem" + b"paravm example mediated GPU, version 1\0"

_NO_PAGE = None      # a fault entry: not present, invalid, or badly written


class Mgpu:
    """One instance bound to one domain (a "vGPU").  *png*: path the PRESENT
    command writes (None: count only).  Use :meth:`MgpuType.attach`."""

    def __init__(self, mpt, png=None) -> None:
        self.mpt, self.png = mpt, png
        self.handle = 0
        self._lock = threading.RLock()
        self.regs = dict.fromkeys((REG_ID, REG_VERSION, REG_STATUS, REG_ERROR, REG_GTT_BASE_LO,
                                   REG_GTT_BASE_HI, REG_GTT_PAGES, REG_RING_BASE_LO,
                                   REG_RING_BASE_HI, REG_RING_SIZE, REG_RING_TAIL,
                                   REG_IRQ_STATUS, REG_IRQ_ENABLE, REG_MSI_CONTROL,
                                   REG_MSI_ADDRESS, REG_MSI_DATA, REG_FENCE_LO, REG_FENCE_HI,
                                   REG_OPREGION), 0)
        self.regs[REG_ID], self.regs[REG_VERSION] = MGPU_ID, MGPU_VERSION
        self.gtt_gpa = 0
        self.gtt_pages = 0
        self.shadow: list = []           # graphics page -> (dma_addr, view) or None
        self.dirty: set[int] = set()     # entries to re-shadow (4-byte stores)
        self.ring_gpa = 0
        self.ring_size = 0
        self.head = self.seqno = 0
        self.commands = 0                # run, whatever their status
        self.faults = 0                  # commands failed with GTT_FAULT
        self.presents = 0
        self.irqs = 0
        self.last_frame: bytes | None = None   # RGB bytes of the last present
        self.png_error = ""              # the last PNG that could not be written
        self.last_size = (0, 0)

    # --- registers (the trap area) -----------------------------------------------------
    def emulate_mmio_read(self, gpa: int, data: memoryview) -> None:
        off = self._reg(gpa, data)
        with self._lock:
            if off == REG_STATUS:
                v = (STATUS_GTT_VALID if self.shadow else 0) | \
                    (STATUS_RING_VALID if self.ring_size else 0) | \
                    (self.regs[REG_STATUS] & STATUS_ERROR)
            elif off == REG_RING_HEAD:
                v = self.head
            elif off == REG_SEQNO:
                v = self.seqno
            else:
                v = self.regs.get(off, 0)
        data[:] = (v & 0xFFFFFFFF).to_bytes(4, "little")

    def emulate_mmio_write(self, gpa: int, data: memoryview) -> None:
        off = self._reg(gpa, data)
        v = int.from_bytes(data, "little")
        with self._lock:
            if off in (REG_ID, REG_VERSION, REG_STATUS, REG_ERROR, REG_RING_HEAD, REG_SEQNO,
                       REG_OPREGION):
                return                                   # read-only: ignored
            if off == REG_IRQ_STATUS:
                self.regs[off] &= ~v
                return
            if off not in self.regs:
                return                                   # no register there
            self.regs[off] = v
            if off == REG_GTT_PAGES:
                self._load_gtt()
            elif off == REG_RING_SIZE:
                self._set_ring()
            elif off == REG_RING_TAIL:
                self._doorbell()

    def _reg(self, gpa: int, data: memoryview) -> int:
        off = gpa - L.MGPU_REGS_GPA
        if len(data) != 4 or off & 3:
            raise GuestStop(f"mgpu: {len(data)}-byte access at register offset {off:#x} "
                            "(registers are 32-bit, 4-byte aligned)")
        return off

    # --- the GTT shadow ------------------------------------------------------------------
    def _load_gtt(self) -> None:
        self._unload_gtt()
        n = self.regs[REG_GTT_PAGES]
        base = self.regs[REG_GTT_BASE_LO] | self.regs[REG_GTT_BASE_HI] << 32
        if n == 0 or n > GTT_MAX_PAGES or base % PAGE_SIZE:
            return
        # Track first, then read (GVT's order): a store another vCPU makes
        # meanwhile is either in what is read or reported afterwards.
        self.gtt_gpa = base
        for i in range(n):
            if self.mpt.enable_page_track(self.handle, (base >> PAGE_SHIFT) + i) < 0:
                # A GTT the device cannot track is not loaded (its entries
                # could change behind the shadow).
                self.gtt_pages = i
                self._unload_gtt()
                return
            self.gtt_pages = i + 1
        raw = bytearray(n * PAGE_SIZE)
        if self.mpt.read_gpa(self.handle, base, raw) < 0:
            self._unload_gtt()
            return
        entries = struct.unpack(f"<{n * GTT_ENTRIES_PER_PAGE}Q", raw)
        self.shadow = [self._map_entry(e) for e in entries]

    def _unload_gtt(self) -> None:
        for i in range(self.gtt_pages):
            self.mpt.disable_page_track(self.handle, (self.gtt_gpa >> PAGE_SHIFT) + i)
        for ent in self.shadow:
            self._unmap_entry(ent)
        self.shadow, self.gtt_pages, self.gtt_gpa = [], 0, 0
        self.dirty.clear()

    def _map_entry(self, entry: int):
        if not entry & GTT_PRESENT or entry & ~(GTT_ADDR_MASK | GTT_PRESENT):
            return _NO_PAGE
        gfn = (entry & GTT_ADDR_MASK) >> PAGE_SHIFT
        if not self.mpt.is_valid_gfn(self.handle, gfn):
            return _NO_PAGE                      # GVT points it at the scratch page
        ret, dma = self.mpt.dma_map_guest_page(self.handle, gfn, PAGE_SIZE)
        if ret < 0:
            return _NO_PAGE
        view = self.mpt.dma_view(self.handle, dma, PAGE_SIZE)
        if view is None:
            self.mpt.dma_unmap_guest_page(self.handle, dma)
            return _NO_PAGE
        return dma, view

    def _unmap_entry(self, ent) -> None:
        if ent is not _NO_PAGE:
            ent[1].release()
            self.mpt.dma_unmap_guest_page(self.handle, ent[0])

    def _reshadow(self, index: int) -> None:
        raw = bytearray(8)
        entry = 0
        if self.mpt.read_gpa(self.handle, self.gtt_gpa + index * 8, raw) == 0:
            entry = int.from_bytes(raw, "little")
        # The new mapping is made before the old one goes (GVT's order).
        new = self._map_entry(entry)
        old, self.shadow[index] = self.shadow[index], new
        self._unmap_entry(old)

    def write_protect_handler(self, gpa: int, data: bytes) -> int:
        """A guest store to a GTT page, after it landed (KVM's order)."""
        with self._lock:
            n = len(data)
            first, last = (gpa - self.gtt_gpa) // 8, (gpa + n - 1 - self.gtt_gpa) // 8
            if not self.shadow or first < 0 or last >= len(self.shadow):
                return 0                         # not the loaded GTT (or loading)
            if n == 8 and gpa % 8 == 0:
                self._reshadow(first)
                self.dirty.discard(first)
                return 0
            if n == 4 and gpa % 4 == 0:
                self.dirty.add(first)            # the other half may follow
                return 0
            # GVT's handler takes aligned 4- and 8-byte writes only: every
            # entry the store touched is unusable until written properly.
            for index in range(first, last + 1):
                old, self.shadow[index] = self.shadow[index], _NO_PAGE
                self._unmap_entry(old)
                self.dirty.discard(index)
            return -22

    # --- the ring ------------------------------------------------------------------------------
    def _set_ring(self) -> None:
        size = self.regs[REG_RING_SIZE]
        base = self.regs[REG_RING_BASE_LO] | self.regs[REG_RING_BASE_HI] << 32
        self.head = self.regs[REG_RING_TAIL] = 0
        self.regs[REG_STATUS] &= ~STATUS_ERROR
        ok = 1 <= size <= RING_MAX and size & (size - 1) == 0 and base % PAGE_SIZE == 0
        self.ring_gpa, self.ring_size = (base, size) if ok else (0, 0)

    def _doorbell(self) -> None:
        count = (self.regs[REG_RING_TAIL] - self.head) & 0xFFFFFFFF
        first_error = E_OK
        if not self.ring_size or count > self.ring_size:
            first_error = E_BAD_RING
            count = 0
        for index in sorted(self.dirty):
            self._reshadow(index)
        self.dirty.clear()
        raw = bytearray(CMD_SIZE)
        for _ in range(count):
            slot = self.ring_gpa + (self.head & (self.ring_size - 1)) * CMD_SIZE
            if self.mpt.read_gpa(self.handle, slot, raw) < 0:
                first_error = first_error or E_BAD_RING
                break
            status, result = self._run(CMD.unpack(raw))
            self.commands += 1
            if status:
                self.faults += status == E_GTT_FAULT
                first_error = first_error or status
                self.regs[REG_ERROR] = status
                self.regs[REG_STATUS] |= STATUS_ERROR
            self.mpt.write_gpa(self.handle, slot + CMD_STATUS_OFF, FENCE.pack(status, result))
            self.head = (self.head + 1) & 0xFFFFFFFF
            self.seqno = (self.seqno + 1) & 0xFFFFFFFF
        fence = self.regs[REG_FENCE_LO] | self.regs[REG_FENCE_HI] << 32
        if fence:
            self.mpt.write_gpa(self.handle, fence, FENCE.pack(self.seqno, first_error))
        self.regs[REG_IRQ_STATUS] |= IRQ_COMPLETE | (IRQ_ERROR if first_error else 0)
        if self.regs[REG_IRQ_STATUS] & self.regs[REG_IRQ_ENABLE]:
            if self.mpt.inject_msi_capability(self.handle, self.regs[REG_MSI_CONTROL],
                                              self.regs[REG_MSI_ADDRESS],
                                              self.regs[REG_MSI_DATA]) == 0 and \
                    self.regs[REG_MSI_CONTROL] & 1:
                self.irqs += 1

    # --- commands -------------------------------------------------------------------------------
    def _run(self, cmd: tuple) -> tuple[int, int]:
        op, _flags, dst, dpitch, src, spitch, x, y, w, h, sx, sy, color = cmd[:13]
        if op == OP_NOP:
            return E_OK, 0
        if op > OP_PRESENT:
            return E_BAD_OP, 0
        if not self.shadow:
            return E_NO_GTT, 0
        if op == OP_PRESENT and (x or y):
            return E_BAD_RECT, 0
        drows = self._rows(dst, dpitch, x, y, w, h)
        if isinstance(drows, int):
            return drows, 0
        if op == OP_FILL:
            line = (color & 0xFFFFFFFF).to_bytes(4, "little") * w
            for row in drows:
                pos = 0
                for view, a, b in row:
                    view[a:b] = line[pos:pos + b - a]
                    pos += b - a
            return E_OK, 0
        if op == OP_COPY:
            srows = self._rows(src, spitch, sx, sy, w, h)
            if isinstance(srows, int):
                return srows, 0
            pixels = [_gather(row) for row in srows]   # all read before any write
            for row, line in zip(drows, pixels):
                pos = 0
                for view, a, b in row:
                    view[a:b] = line[pos:pos + b - a]
                    pos += b - a
            return E_OK, 0
        if op == OP_CHECKSUM:
            crc = 0
            for row in drows:
                for view, a, b in row:
                    crc = zlib.crc32(view[a:b], crc)
            return E_OK, crc
        self._present(b"".join(_gather(row) for row in drows), w, h)
        return E_OK, 0

    def _rows(self, base: int, pitch: int, x: int, y: int, w: int, h: int):
        """Each row of the rect as [(page view, start, end)], or an MGPU_E_*."""
        if not w or not h or x + w > MAX_DIM or y + h > MAX_DIM or pitch % 4 \
                or (x + w) * 4 > pitch:
            return E_BAD_RECT
        shadow = self.shadow
        limit = len(shadow) * PAGE_SIZE
        if base + (y + h - 1) * pitch + (x + w) * 4 > limit:
            return E_GTT_FAULT
        rows = []
        for r in range(y, y + h):
            start = base + r * pitch + x * 4
            end = start + w * 4
            row = []
            while start < end:
                ent = shadow[start >> PAGE_SHIFT]
                if ent is _NO_PAGE:
                    return E_GTT_FAULT
                off = start & (PAGE_SIZE - 1)
                n = min(end - start, PAGE_SIZE - off)
                row.append((ent[1], off, off + n))
                start += n
            rows.append(row)
        return rows

    def _present(self, xrgb: bytes, w: int, h: int) -> None:
        from PIL import Image
        img = Image.frombytes("RGB", (w, h), xrgb, "raw", "BGRX")
        self.last_frame, self.last_size = img.tobytes(), (w, h)
        self.presents += 1
        if self.png is not None:
            try:
                img.save(self.png, format="PNG")
            except OSError as e:      # the host's disk, not the guest's fault
                self.png_error = f"{self.png}: {e.strerror or e}"

    # --- lifetime ----------------------------------------------------------------------------------
    def release(self) -> None:
        """The domain went away: let go of every mapping and tracked page."""
        with self._lock:
            self._unload_gtt()

    def stats(self) -> dict:
        return {"commands": self.commands, "faults": self.faults, "presents": self.presents,
                "irqs": self.irqs, "gtt_pages": self.gtt_pages,
                "track_errors": self.mpt.track_errors(self.handle),
                "png_error": self.png_error}


def _gather(row) -> bytes:
    return b"".join(view[a:b] for view, a, b in row)


class MgpuType:
    """The device type given to ``host_init``: routes the MPT's callbacks to
    the instance (GVT's ``intel_gvt_ops``)."""

    @staticmethod
    def emulate_mmio_read(vgpu: Mgpu, gpa: int, data: memoryview) -> None:
        vgpu.emulate_mmio_read(gpa, data)

    @staticmethod
    def emulate_mmio_write(vgpu: Mgpu, gpa: int, data: memoryview) -> None:
        vgpu.emulate_mmio_write(gpa, data)

    @staticmethod
    def write_protect_handler(vgpu: Mgpu, gpa: int, data: bytes) -> int:
        return vgpu.write_protect_handler(gpa, data)

    @staticmethod
    def release(vgpu: Mgpu) -> None:
        vgpu.release()

    @classmethod
    def attach(cls, mpt, domain, png=None) -> Mgpu:
        """Register the type (once) and give *domain* an instance: its
        registers trapped at ``MGPU_REGS_GPA``, its OpRegion, the boot info
        fields.  ``RuntimeError`` naming the MPT error if a step fails."""
        ret = mpt.host_init(TYPE_NAME, cls)
        if ret < 0 and ret != -17:               # -EEXIST: registered already
            raise RuntimeError(f"mgpu: host_init failed ({ret})")
        dev = Mgpu(mpt, png)
        ret, dev.handle = mpt.attach_vgpu(TYPE_NAME, dev, domain)
        if ret < 0:
            raise RuntimeError(f"mgpu: attach_vgpu to {domain.name} failed ({ret})")
        steps = (("set_trap_area", lambda: mpt.set_trap_area(
                    dev.handle, L.MGPU_REGS_GPA, L.MGPU_REGS_GPA + REGS_SIZE - 1, True)),
                 ("set_opregion", lambda: mpt.set_opregion(dev.handle, OPREGION_TEXT)))
        for name, step in steps:
            ret = step()
            if ret < 0:
                mpt.detach_vgpu(dev.handle)
                raise RuntimeError(f"mgpu: {name} for {domain.name} failed ({ret})")
        dev.regs[REG_OPREGION] = L.MPT_OPREGION_GPA
        domain.memory.write_u32(L.BOOT_INFO + L.BI_OFF_MGPU, 1)
        domain.memory.write_u32(L.BOOT_INFO + L.BI_OFF_MGPU_OPREGION, L.MPT_OPREGION_GPA)
        return dev

    @classmethod
    def for_manifest(cls, mpt, specs) -> dict:
        """Give each domain of *specs* with ``[domain.mgpu]`` an instance at
        every create and restart; returns name -> the current :class:`Mgpu`
        (updated on restart)."""
        current: dict = {}
        for spec in specs:
            if spec.mgpu is None:
                continue

            def attach(domain, png=spec.mgpu.png):
                current[domain.name] = cls.attach(mpt, domain, png)
            mpt.on_domain(spec.name, attach)
        return current
