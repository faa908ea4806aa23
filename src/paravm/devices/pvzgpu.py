"""A small "GPU" behind the PVZ connection: registers, an interrupt, firmware heaps per OSID.

The device a PowerVR host driver serves, reduced to what shows the PVZ
connection at work (specs/ivc-lguest-pvz.md part C; docs/pvz.md):

* **Registers** (MMIO, :data:`REGS_SIZE` bytes at the register base that
  CreateDevConfig reports, the same GPA in every guest).  Each guest sees its
  own bank, as Rogue gives each OSID its own register view: the device knows
  the OSID of the domain that touches it.  32-bit registers::

      0x00 ID           RO  "GPVZ" (0x5A565047)
      0x04 OSID         RO  the caller's OSID
      0x08 STATUS       RO  bit 0 firmware running, 1 OS online, 2 heap ready
      0x0C KICK         WO  any write: look at this OSID's command queue
      0x10 IRQ_STATUS   R/W1C  bit 0 done, bit 1 error
      0x14 IRQ_ENABLE   RW  bits as IRQ_STATUS; set bits raise the interrupt
      0x18 PRIORITY     RO  this OSID's scheduling priority
      0x1C COMPLETED    RO  commands completed (wraps at 2^32)
      0x20 HEAP_SIZE    RO  bytes of this OSID's firmware heap
      0x24 HCS_DEADLINE RO  the hard context switch deadline, ms (VMMConfigure)

  The interrupt is an MSI of vector :data:`~paravm.arch.x86.layout.VEC_PVZ_GPU`
  on vCPU 0 (an irqfd: no ``KVM_SIGNAL_MSI`` from Python).

* **Firmware heap per OSID**: guest memory the host maps when the origin is
  GUEST (MapDevPhysHeap), or the OSID's slice of a host carve-out when it is
  HOST.  Its first page holds the command queue's control block, the queue
  (a kernel CCB, as Rogue's) follows, the rest is memory the commands work
  on (offsets in the heap; a flag moves an operand into the GPU heap slice,
  when the host has a GPU carve-out)::

      struct pvz_gpu_ccb_ctl {        // heap offset 0
          uint32_t write_offset;      // guest: next slot it fills
          uint32_t read_offset;       // firmware: next slot it runs
          uint32_t wrap_mask;         // slots - 1; slots a power of 2, <= 1024
          uint32_t cmd_size;          // 64
      };
      struct pvz_gpu_cmd {            // heap offset 0x1000 + 64 * slot
          uint32_t op;                // NOP 0, FILL 1, COPY 2, CHECKSUM 3
          uint32_t flags;             // IRQ 1, DST_GPU 2, SRC_GPU 4
          uint64_t dst, src, len;     // heap offsets, bytes
          uint32_t value;             // FILL: 32-bit pattern, repeated
          uint32_t status;            // out: 0 done, 1 fault (range), 2 bad command
          uint64_t result;            // out: CHECKSUM's CRC-32
          uint64_t tag;               // the guest's, untouched
          uint64_t reserved;
      };

* **The firmware** is one thread.  It runs one command at a time from the
  online OSID with work that has the highest priority (OnVmOnline's or
  VMMConfigure's; a higher number wins, as Rogue's "higher priority number
  equals higher priority"), round robin among equals, and looks again after
  every command: a higher-priority OSID's work overtakes at the next command
  boundary.  Commands are bounded by the heap size (8 MiB at most), so no
  command runs long enough to need Rogue's hard context switch; the HCS
  deadline is recorded and shown, not enforced.

The guest owns its queue and may write anything there: the firmware copies
a command once, checks every offset and length against the heap, keeps its
own read offset, and a queue it cannot read (bad wrap mask or cmd size, an
offset past the mask) only sets the error bit for that OSID.
"""

from __future__ import annotations

import ctypes
import struct
import sys
import threading
import zlib

from ..arch.x86 import layout as L
from ..memory.frames import PAGE_SHIFT, PAGE_SIZE
from ..services.pvz import abi as A
from ..services.pvz.server import DevConfig, PvzSystem

GPU_ID = 0x5A565047
REGS_SIZE = 0x1000
REG_ID, REG_OSID, REG_STATUS, REG_KICK = 0x00, 0x04, 0x08, 0x0C
REG_IRQ_STATUS, REG_IRQ_ENABLE, REG_PRIORITY, REG_COMPLETED, REG_HEAP_SIZE = (
    0x10, 0x14, 0x18, 0x1C, 0x20)
REG_HCS_DEADLINE = 0x24
STATUS_FW_RUNNING, STATUS_OS_ONLINE, STATUS_HEAP_READY = 1, 2, 4
IRQ_DONE, IRQ_ERROR = 1, 2

CCB_CTL = struct.Struct("<IIII")
CCB_OFFSET = 0x1000
CCB_MAX_SLOTS = 1024
CMD = struct.Struct("<IIQQQIIQQQ")
CMD_SIZE = CMD.size         # 64
CMD_STATUS_OFF, CMD_RESULT_OFF = 36, 40
OP_NOP, OP_FILL, OP_COPY, OP_CHECKSUM = 0, 1, 2, 3
FLAG_IRQ, FLAG_DST_GPU, FLAG_SRC_GPU = 1, 2, 4
ST_DONE, ST_FAULT, ST_BAD = 0, 1, 2
_FLAGS = FLAG_IRQ | FLAG_DST_GPU | FLAG_SRC_GPU
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class _Os:
    """The firmware's view of one OSID."""

    __slots__ = ("osid", "online", "priority", "fw", "gpu", "fw_addr", "gpu_addr", "read",
                 "kicked", "irq_status", "irq_enable", "irqfd", "completed", "errors", "broken")

    def __init__(self, osid: int) -> None:
        self.osid = osid
        self.online = False
        self.priority = 0
        self.fw: memoryview | None = None      # the firmware heap
        self.gpu: memoryview | None = None     # the GPU heap slice (host carve-out)
        self.fw_addr = self.gpu_addr = 0       # their VMM addresses, for ctypes
        self.read = 0                          # the firmware's own read offset
        self.kicked = False
        self.irq_status = 0
        self.irq_enable = 0
        self.irqfd = None
        self.completed = 0
        self.errors = 0
        self.broken = False                    # a queue it could not read, until the next kick


class PvzGpu(PvzSystem):
    """The device and its firmware, as the host driver's system layer.

    *machine*: the :class:`~paravm.memory.MachineMemory` whose addresses
    Map's physical addresses are; *fw_carveout* / *gpu_carveout*: host
    carve-outs (:class:`~paravm.memory.FrameRange`, ``num_os`` slices of
    *fw_heap_size* / *gpu_heap_size* bytes) or ``None``.  The firmware thread
    starts at :meth:`init_device` (the server's first OnVmOnline) and stops
    at :meth:`close`."""

    def __init__(self, machine, *, fw_heap_size: int, fw_carveout=None, gpu_carveout=None,
                 gpu_heap_size: int = 0, num_os: int = A.RGXFW_NUM_OS,
                 regs_pbase: int = L.PVZ_REGS_GPA, vector: int = L.VEC_PVZ_GPU) -> None:
        self.machine = machine
        self.fw_heap_size, self.gpu_heap_size = fw_heap_size, gpu_heap_size
        self.fw_carveout, self.gpu_carveout = fw_carveout, gpu_carveout
        self.regs_pbase, self.vector = regs_pbase, vector
        self.hcs_deadline_ms = 0xFFFFFFFF
        self._os = [_Os(i) for i in range(num_os)]
        # _lock: the OSIDs' state; the firmware holds it while it runs one
        # command (so an unmap waits for the command), and lets go between
        # commands.  _irq_lock: the interrupt bits only, never held for long,
        # so a vCPU acking an interrupt never waits for a command.  _wake:
        # the idle firmware sleeps on it; a kick sets it without a lock.
        self._lock = threading.Lock()
        self._irq_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._last = 0                 # the OSID served last, for round robin
        self.inits = 0                 # times init_device ran (once)
        for os_ in self._os[1:]:
            if fw_carveout is not None:
                os_.fw = fw_carveout.buffer[os_.osid * fw_heap_size:(os_.osid + 1) * fw_heap_size]
                os_.fw_addr = fw_carveout.hva + os_.osid * fw_heap_size
            if gpu_carveout is not None:
                os_.gpu = gpu_carveout.buffer[os_.osid * gpu_heap_size:
                                              (os_.osid + 1) * gpu_heap_size]
                os_.gpu_addr = gpu_carveout.hva + os_.osid * gpu_heap_size

    @classmethod
    def for_service(cls, svc) -> "PvzGpu":
        """The device for a :class:`~paravm.services.pvz.service.PvzService`
        (its heap sizes and carve-outs): ``create_from_manifest``'s default."""
        return cls(svc.machine, fw_heap_size=svc.fw_heap_size, fw_carveout=svc.fw_carveout,
                   gpu_carveout=svc.gpu_carveout, gpu_heap_size=svc.gpu_heap_size)

    # --- PvzSystem ----------------------------------------------------------------------
    def dev_config(self) -> DevConfig:
        return DevConfig(self.vector, REGS_SIZE, self.regs_pbase)

    def init_device(self) -> int:
        with self._lock:
            if self._thread is None and not self._closing:
                self.inits += 1
                self._thread = threading.Thread(target=self._firmware, name="pvz-gpu-fw",
                                                daemon=True)
                self._thread.start()
        return A.PVRSRV_OK

    def set_os_state(self, osid: int, online: bool) -> None:
        with self._lock:
            os_ = self._os[osid]
            if online and not os_.online:
                os_.read, os_.broken, os_.kicked = 0, False, False
            if not online and os_.online:
                # A host slice outlives the guest: the next one starts clean.
                if self.fw_carveout is not None:
                    os_.fw[:] = bytes(len(os_.fw))
                if os_.gpu is not None:
                    os_.gpu[:] = bytes(len(os_.gpu))
            os_.online = online
        self._wake.set()

    def set_os_priority(self, osid: int, priority: int) -> None:
        with self._lock:
            self._os[osid].priority = priority

    def set_hcs_deadline(self, deadline_ms: int) -> None:
        self.hcs_deadline_ms = deadline_ms

    def map_fw_heap(self, osid: int, paddr: int, size: int) -> int:
        """Map [paddr, paddr+size) of machine memory as *osid*'s firmware heap:
        ``INVALID_PARAMS`` unless it lies inside one live frame range."""
        found = self.machine.lookup(paddr >> PAGE_SHIFT) if paddr >= 0 else None
        if found is None or size != self.fw_heap_size:
            return A.PVRSRV_ERROR_INVALID_PARAMS
        fr, index = found
        off = index * PAGE_SIZE + (paddr & (PAGE_SIZE - 1))
        if off + size > fr.size:
            return A.PVRSRV_ERROR_INVALID_PARAMS
        with self._lock:
            os_ = self._os[osid]
            if os_.fw is not None:
                return A.PVRSRV_ERROR_DEVICEMEM_ALREADY_MAPPED
            os_.fw = fr.buffer[off:off + size]
            os_.fw_addr = fr.hva + off
            os_.read, os_.broken = 0, False
        return A.PVRSRV_OK

    def unmap_fw_heap(self, osid: int) -> None:
        # The firmware holds _lock while it runs a command: this waits for it.
        with self._lock:
            os_ = self._os[osid]
            if os_.fw is not None and self.fw_carveout is None:
                os_.fw.release()
                os_.fw, os_.fw_addr = None, 0

    # --- domains ----------------------------------------------------------------------------
    def attach(self, domain, osid: int) -> None:
        """Give *domain* (running as *osid*) its register bank and interrupt."""
        domain.mmio_bus.insert(self.regs_pbase, REGS_SIZE, _Bank(self, osid), "pvz-gpu")
        irqfd = domain.irqfd(0, self.vector)
        with self._irq_lock:
            os_ = self._os[osid]
            os_.irqfd, os_.irq_status, os_.irq_enable = irqfd, 0, 0

    def detach(self, osid: int) -> None:
        """Forget the stopped domain's interrupt (its irqfd is closed)."""
        with self._irq_lock:
            irqfd, self._os[osid].irqfd = self._os[osid].irqfd, None
        if irqfd is not None:
            irqfd.close()

    def stats(self, osid: int) -> dict:
        """``{"completed": n, "errors": n, "priority": p, "online": bool,
        "hcs_deadline_ms": ms}``."""
        with self._lock:
            o = self._os[osid]
            return {"completed": o.completed, "errors": o.errors, "priority": o.priority,
                    "online": o.online, "hcs_deadline_ms": self.hcs_deadline_ms}

    def close(self) -> None:
        """Stop the firmware thread and drop every heap view."""
        with self._lock:
            self._closing = True
            t = self._thread
        self._wake.set()
        if t is not None:
            t.join(5.0)
        with self._lock:
            for o in self._os:
                for v in (o.fw, o.gpu):
                    if v is not None:
                        v.release()
                o.fw = o.gpu = None

    # --- registers (vCPU threads) ---------------------------------------------------------
    def reg_read(self, osid: int, offset: int) -> int:
        o = self._os[osid]
        if offset == REG_ID:
            return GPU_ID
        if offset == REG_OSID:
            return osid
        if offset == REG_STATUS:
            return ((STATUS_FW_RUNNING if self._thread is not None else 0)
                    | (STATUS_OS_ONLINE if o.online else 0)
                    | (STATUS_HEAP_READY if o.fw is not None else 0))
        if offset == REG_IRQ_STATUS:
            return o.irq_status
        if offset == REG_IRQ_ENABLE:
            return o.irq_enable
        if offset == REG_PRIORITY:
            return o.priority & 0xFFFFFFFF
        if offset == REG_COMPLETED:
            return o.completed & 0xFFFFFFFF
        if offset == REG_HEAP_SIZE:     # no len(o.fw): an unmap may release it meanwhile
            return self.fw_heap_size if o.fw is not None else 0
        if offset == REG_HCS_DEADLINE:
            return self.hcs_deadline_ms & 0xFFFFFFFF
        return 0

    def reg_write(self, osid: int, offset: int, value: int) -> None:
        o = self._os[osid]
        if offset == REG_KICK:
            o.kicked, o.broken = True, False
            self._wake.set()
        elif offset == REG_IRQ_STATUS:
            with self._irq_lock:
                o.irq_status &= ~value
        elif offset == REG_IRQ_ENABLE:
            with self._irq_lock:
                o.irq_enable = value & (IRQ_DONE | IRQ_ERROR)
            self._raise(o, 0)

    # --- the firmware -----------------------------------------------------------------------
    def _firmware(self) -> None:
        while True:
            self._wake.clear()
            with self._lock:
                if self._closing:
                    return
                o = self._pick()
                if o is not None:
                    try:
                        self._step(o)
                    except Exception as e:  # noqa: BLE001 - one OSID's queue, not the device
                        o.broken = True
                        o.errors += 1
                        sys.stderr.write(f"paravm: pvz-gpu: OSID {o.osid}: {type(e).__name__}: "
                                         f"{e}\n")
            if o is None:
                self._wake.wait()

    def _pick(self) -> _Os | None:
        """The ready OSID of highest priority; round robin after the last
        one served among equals."""
        best = None
        n = len(self._os)
        for i in range(1, n + 1):
            o = self._os[(self._last + i) % n]
            if o.kicked and o.online and o.fw is not None and not o.broken:
                if best is None or o.priority > best.priority:
                    best = o
        return best

    def _step(self, o: _Os) -> None:
        """Run one command of *o*'s queue (or find it empty)."""
        fw = o.fw
        write, _, mask, cmd_size = CCB_CTL.unpack_from(fw, 0)
        slots = mask + 1
        if (slots & mask or slots > CCB_MAX_SLOTS or cmd_size != CMD_SIZE
                or write > mask or CCB_OFFSET + slots * CMD_SIZE > len(fw)):
            o.broken = True
            o.errors += 1
            self._raise(o, IRQ_ERROR)
            return
        read = o.read & mask
        if read == write:
            # A kick always follows the guest's write_offset store: one that
            # raced with the read above is seen by this second read.
            o.kicked = _U32.unpack_from(fw, 0)[0] != write
            return
        at = CCB_OFFSET + read * CMD_SIZE
        op, flags, dst, src, length, value, _, _, _, _ = CMD.unpack_from(fw, at)
        status, result = self._run(o, op, flags, dst, src, length, value)
        _U32.pack_into(fw, at + CMD_STATUS_OFF, status)
        _U64.pack_into(fw, at + CMD_RESULT_OFF, result)
        o.read = (read + 1) & mask
        _U32.pack_into(fw, 4, o.read)
        o.completed += 1
        self._last = o.osid
        bits = 0
        if status != ST_DONE:
            o.errors += 1
            bits |= IRQ_ERROR
        if flags & FLAG_IRQ or o.read == write:
            bits |= IRQ_DONE
        if bits:
            self._raise(o, bits)

    @staticmethod
    def _operand(o: _Os, gpu: bool, off: int, length: int) -> tuple[memoryview, int] | None:
        """The heap (FW, or GPU with *gpu*) and the VMM address of its byte
        0, if [off, off+length) lies inside it (overflow-safe: Python ints);
        else None."""
        heap, addr = (o.gpu, o.gpu_addr) if gpu else (o.fw, o.fw_addr)
        if heap is None or off > len(heap) or length > len(heap) - off:
            return None
        return heap, addr

    def _run(self, o: _Os, op: int, flags: int, dst: int, src: int, length: int,
             value: int) -> tuple[int, int]:
        if flags & ~_FLAGS:
            return ST_BAD, 0
        if op == OP_NOP:
            return ST_DONE, 0
        # Bulk work goes through ctypes.memmove and zlib, which let go of
        # the GIL: vCPU threads handle their exits meanwhile.
        d = self._operand(o, bool(flags & FLAG_DST_GPU), dst, length)
        s = self._operand(o, bool(flags & FLAG_SRC_GPU), src, length)
        if op == OP_FILL:
            if d is None:
                return ST_FAULT, 0
            ctypes.memmove(d[1] + dst, _U32.pack(value) * (length // 4 + 1), length)
            return ST_DONE, 0
        if op == OP_COPY:
            if d is None or s is None:
                return ST_FAULT, 0
            ctypes.memmove(d[1] + dst, s[1] + src, length)     # overlap allowed
            return ST_DONE, 0
        if op == OP_CHECKSUM:
            if s is None:
                return ST_FAULT, 0
            return ST_DONE, zlib.crc32(s[0][src:src + length])
        return ST_BAD, 0

    def _raise(self, o: _Os, bits: int) -> None:
        with self._irq_lock:
            o.irq_status |= bits
            if o.irq_status & o.irq_enable and o.irqfd is not None:
                o.irqfd.fire()


class _Bank:
    """One OSID's register bank on its domain's MMIO bus."""

    __slots__ = ("gpu", "osid")

    def __init__(self, gpu: PvzGpu, osid: int) -> None:
        self.gpu, self.osid = gpu, osid

    def read(self, offset: int, data: memoryview) -> None:
        value = self.gpu.reg_read(self.osid, offset & ~3) if offset % 4 == 0 else 0
        data[:] = value.to_bytes(8, "little")[:len(data)]

    def write(self, offset: int, data: memoryview) -> None:
        if offset % 4 == 0 and len(data) in (4, 8):
            self.gpu.reg_write(self.osid, offset, int.from_bytes(data[:4], "little"))
