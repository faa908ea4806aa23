"""PvzService (pvz_call dispatch, OSID stamp, Map hardening, lifecycle, carve-outs) and the
example GPU (registers, firmware thread, CCB, commands, priority scheduling), without KVM:
fake domains over real machine memory, the hypercall handler called directly."""

from __future__ import annotations

import errno
import os
import struct
import threading
import time
import zlib
from collections import Counter
from types import SimpleNamespace

import pytest

from paravm.arch.x86 import layout as L
from paravm.config import parse_manifest
from paravm.devices import pvzgpu as G
from paravm.devices.pvzgpu import PvzGpu
from paravm.hypercall.table import HypercallTable
from paravm.memory import PAGE_SIZE, GuestMemory, Region
from paravm.memory.frames import FramePart
from paravm.services.pvz import abi as A
from paravm.services.pvz.server import DevConfig, PvzSystem
from paravm.services.pvz.service import PvzService
from paravm.vm.bus import Bus
from paravm.vm.vcpu import _dispatch

import pvz_fakes

OK = A.PVRSRV_OK
INVALID_PARAMS = A.PVRSRV_ERROR_INVALID_PARAMS
S = 64 * 1024                      # fw_heap_size of these tests
RAM_PAGES = 512                    # 2 MiB of guest RAM
RAM = RAM_PAGES * PAGE_SIZE
MSG_GPA = 0x1C0000                 # a message: writable RAM above the first MiB
HEAP_GPA = L.RESERVED_END          # where a guest-origin heap is mapped
TIMEOUT = 5.0
SENTINEL = 0xFFFFFFFF


# ------------------------------------------------------------------------------ fakes


class FakeIrqfd:
    def __init__(self, vcpu, vector):
        self.vcpu, self.vector = vcpu, vector
        self.fires = 0
        self.closed = False
        self.on_fire = None        # called at each fire (from the firmware thread)

    def fire(self):
        self.fires += 1
        if self.on_fire is not None:
            self.on_fire()

    def close(self):
        self.closed = True


class FakeConsole:
    def __init__(self):
        self.out = bytearray()

    def write(self, data):
        self.out += data

    def flush(self):
        pass


class FakeDomain:
    """What PvzService and PvzGpu use of a domain: RAM at GPA 0 (plus *regions*)."""

    def __init__(self, machine, name, domid, regions=()):
        self.name, self.domid = name, domid
        self.ram = machine.alloc(RAM_PAGES, f"{name}.ram")
        self.memory = GuestMemory()
        self.memory.add_region(Region(0, self.ram))
        for gpa, frames, readonly in regions:
            self.memory.add_region(Region(gpa, frames, readonly=readonly))
        self.hypercalls = HypercallTable()
        self.mmio_bus = Bus("MMIO", 1 << 64)
        self.console = FakeConsole()
        self.irqfds: list[FakeIrqfd] = []

    def irqfd(self, vcpu, vector):
        fd = FakeIrqfd(vcpu, vector)
        self.irqfds.append(fd)
        return fd

    # --- the guest's view -------------------------------------------------------------
    def call(self, func, dev=0, size=0, paddr=0, gpa=MSG_GPA):
        """One pvz_call: the return value and the message as written back."""
        raw = A.PVZ_MSG.pack(func, dev, SENTINEL, SENTINEL, SENTINEL, SENTINEL, 2**64 - 1,
                             size, paddr, 2**64 - 1, 2**64 - 1)
        self.memory.write(gpa, raw)
        r = self.hypercalls.handlers[A.HC_PVZ_CALL](None, gpa, 0, 0, 0, 0, 0)
        msg = dict(zip(A.MSG_FIELDS, A.PVZ_MSG.unpack(self.memory.read(gpa, 64))))
        assert msg["status"] == r
        assert (msg["func_id"], msg["dev_id"]) == (func, dev)
        return r, msg

    def map(self, gpa=HEAP_GPA, size=S):
        return self.call(A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, size=size, paddr=gpa)[0]

    def unmap(self):
        return self.call(A.PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP)[0]

    def _bank(self, off):
        found = self.mmio_bus.lookup(L.PVZ_REGS_GPA + off, 4)
        assert found is not None, "no register bank"
        return found

    def reg(self, off):
        dev, o = self._bank(off)
        buf = bytearray(4)
        dev.read(o, memoryview(buf))
        return int.from_bytes(buf, "little")

    def set_reg(self, off, value):
        dev, o = self._bank(off)
        dev.write(o, memoryview(value.to_bytes(4, "little")))

    def close(self, machine):
        self.memory.close()
        machine.free(self.ram)


def Recorder():
    """A host system layer that records its calls (the service's `device=`)."""
    return pvz_fakes.Recorder(config=DevConfig(0x99, 0x2000, 0xFE000000), record_config=False)


class DeferredGpu(PvzGpu):
    """The example GPU whose firmware starts only when the test says so."""

    hold = True

    def init_device(self):
        if self.hold:
            return OK
        return super().init_device()

    def start(self):
        self.hold = False
        return self.init_device()


deferred_gpu = DeferredGpu.for_service


# ------------------------------------------------------------------------------ fixtures

DOMAINS = (("a", 3, 10), ("b", 5, 1), ("plain", None, None))


def manifest_text(origin="guest", fw=S, gpu=0, hcs=0xFFFFFFFF, domains=DOMAINS):
    text = (f'[pvz]\norigin = "{origin}"\nfw_heap_size = {fw}\ngpu_heap_size = {gpu}\n'
            f"hcs_deadline_ms = {hcs}\n\n")
    for name, osid, prio in domains:
        text += f'[[domain]]\nname = "{name}"\nimage = "/bin/true"\n'
        if osid is not None:
            text += f"pvz = {{osid = {osid}, priority = {prio}}}\n"
        text += "\n"
    return text


class World:
    """A service from a manifest and fake domains, all closed at teardown."""

    def __init__(self, machine, tmp_path):
        self.machine, self.tmp_path = machine, tmp_path
        self.services, self.domains = [], []

    def service(self, device=PvzGpu.for_service, **kw):
        """A PvzService; *device* as its argument (default: the example GPU, as
        the hypervisor gives it)."""
        m = parse_manifest(manifest_text(**kw), self.tmp_path / "m.toml")
        svc = PvzService(self.machine, m.pvz, m.domains, device=device)
        self.services.append(svc)
        svc.specs = {s.name: s for s in m.domains}
        return svc

    def domain(self, svc, name, *, attach=True, start=True):
        spec = svc.specs[name]
        dom = FakeDomain(self.machine, name, spec.domid, svc.regions(name))
        self.domains.append(dom)
        if attach:
            svc.attach(dom)
        if start:
            svc.domain_starting(dom)
        return dom

    def close(self):
        for svc in self.services:
            svc.close()
        for dom in self.domains:
            dom.close(self.machine)


@pytest.fixture
def world(machine, tmp_path):
    w = World(machine, tmp_path)
    yield w
    w.close()


def wait_for(cond, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.001)


# ------------------------------------------------------------------------------ attach


def test_attach_registers_pvz_call_and_fills_the_boot_info(world):
    svc = world.service(origin="guest")
    a = world.domain(svc, "a", start=False)
    plain = world.domain(svc, "plain", start=False)
    assert a.hypercalls.names[A.HC_PVZ_CALL] == "pvz_call"
    assert a.memory.read_u32(L.BOOT_INFO + L.BI_OFF_PVZ) == 1
    assert a.memory.read_u32(L.BOOT_INFO + L.BI_OFF_PVZ_FW_ORIGIN) == \
        A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_GUEST
    assert a.memory.read_u64(L.BOOT_INFO + L.BI_OFF_PVZ_FW_HEAP_SIZE) == S
    # The device's register bank and its interrupt: vCPU 0, the GPU's vector.
    assert a.reg(G.REG_ID) == G.GPU_ID
    assert [(f.vcpu, f.vector) for f in a.irqfds] == [(0, L.VEC_PVZ_GPU)]
    # A domain without [domain.pvz] gets nothing.
    assert plain.hypercalls.handlers[A.HC_PVZ_CALL] is None
    assert plain.memory.read_u32(L.BOOT_INFO + L.BI_OFF_PVZ) == 0
    assert plain.mmio_bus.lookup(L.PVZ_REGS_GPA, 4) is None and plain.irqfds == []


def test_boot_info_says_origin_host_with_a_carveout(world):
    svc = world.service(origin="host")
    a = world.domain(svc, "a", start=False)
    assert a.memory.read_u32(L.BOOT_INFO + L.BI_OFF_PVZ_FW_ORIGIN) == \
        A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_HOST


def test_hcs_deadline_of_the_manifest_reaches_server_and_device(world):
    svc = world.service(hcs=50)
    assert svc.server.hcs_deadline_ms == 50
    a = world.domain(svc, "a")
    assert a.reg(G.REG_HCS_DEADLINE) == 50 and svc.device.stats(3)["hcs_deadline_ms"] == 50
    assert svc.vmm_configure(A.VMM_CONF_HCS_DEADLINE, 7) == OK
    assert a.reg(G.REG_HCS_DEADLINE) == 7 and svc.server.hcs_deadline_ms == 7


def test_the_services_default_device_is_the_ddk_stub(world):
    svc = world.service(device=None)
    assert type(svc.device) is PvzSystem
    a = world.domain(svc, "a")
    assert a.map() == OK
    assert svc.server.fw_mapped == {3: (a.ram.mfn * PAGE_SIZE + HEAP_GPA, S)}
    assert a.mmio_bus.lookup(L.PVZ_REGS_GPA, 4) is None       # no device to attach


# ------------------------------------------------------------------------------ the OSID


def test_each_domain_calls_with_the_osid_of_its_manifest_entry(world):
    svc = world.service()
    a, b = world.domain(svc, "a"), world.domain(svc, "b")
    assert (a.reg(G.REG_OSID), b.reg(G.REG_OSID)) == (3, 5)
    assert a.map() == OK
    assert svc.server.fw_mapped == {3: ((a.ram.mfn * PAGE_SIZE) + HEAP_GPA, S)}
    assert b.map(HEAP_GPA + S) == OK
    assert svc.server.fw_mapped == {3: ((a.ram.mfn * PAGE_SIZE) + HEAP_GPA, S),
                                    5: ((b.ram.mfn * PAGE_SIZE) + HEAP_GPA + S, S)}
    # Each bank shows its own OSID's heap.
    assert (a.reg(G.REG_HEAP_SIZE), b.reg(G.REG_HEAP_SIZE)) == (S, S)
    assert a.unmap() == OK
    assert set(svc.server.fw_mapped) == {5}
    assert (a.reg(G.REG_HEAP_SIZE), b.reg(G.REG_HEAP_SIZE)) == (0, S)


def test_calls_reach_the_system_with_the_callers_osid(world):
    rec = Recorder()
    svc = world.service(device=lambda s: rec)
    a, b = world.domain(svc, "a"), world.domain(svc, "b")
    rec.calls.clear()
    assert b.map() == OK
    assert a.map() == OK
    assert [c[:2] for c in rec.calls if c[0] == "map_fw_heap"] == [("map_fw_heap", 5),
                                                                     ("map_fw_heap", 3)]
    # the machine address of each caller's own RAM
    maps = {c[1]: c[2] for c in rec.calls if c[0] == "map_fw_heap"}
    assert maps == {5: b.ram.mfn * PAGE_SIZE + HEAP_GPA, 3: a.ram.mfn * PAGE_SIZE + HEAP_GPA}


def test_create_dev_config_answers_the_device_and_writes_the_message(world):
    svc = world.service()
    a = world.domain(svc, "a")
    r, msg = a.call(A.PVZ_BRIDGE_CREATEDEVICECONFIG)
    assert r == OK
    assert (msg["irq"], msg["regs_size"], msg["regs_pbase"]) == \
        (L.VEC_PVZ_GPU, G.REGS_SIZE, L.PVZ_REGS_GPA)
    assert (msg["heap_type"], msg["fw_size"], msg["fw_paddr"], msg["gpu_size"],
            msg["gpu_paddr"]) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize("func", [A.PVZ_BRIDGE_DESTROYDEVICECONFIG,
                                  A.PVZ_BRIDGE_DESTROYDEVICEPHYSHEAPS,
                                  A.PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP])
def test_the_no_op_calls_succeed(world, func):
    svc = world.service()
    a = world.domain(svc, "a")
    assert a.call(func)[0] == OK
    assert a.call(func, dev=1)[0] == INVALID_PARAMS


def test_guest_origin_create_dev_phys_heaps_is_uma_0_0(world):
    svc = world.service(origin="guest")
    a = world.domain(svc, "a")
    r, msg = a.call(A.PVZ_BRIDGE_CREATEDEVICEPHYSHEAPS)
    assert r == OK
    assert (msg["heap_type"], msg["fw_size"], msg["fw_paddr"], msg["gpu_size"],
            msg["gpu_paddr"]) == (A.PHYS_HEAP_TYPE_UMA, 0, 0, 0, 0)
    assert svc.regions("a") == ()


def test_calls_of_a_domain_not_started_are_offline(world):
    svc = world.service()
    a = world.domain(svc, "a", start=False)
    assert a.call(A.PVZ_BRIDGE_CREATEDEVICECONFIG)[0] == A.PVRSRV_ERROR_PVZ_OSID_IS_OFFLINE
    assert a.map() == A.PVRSRV_ERROR_PVZ_OSID_IS_OFFLINE
    assert svc.server.fw_mapped == {}


# ------------------------------------------------------------------------------ Map hardening

HARDENING = [
    ("outside-ram", RAM + 0x100000, S),
    ("just-past-ram", RAM, S),
    ("top-of-u64", 2**64 - S, S),
    ("straddles-the-end", RAM - S + PAGE_SIZE, S),
    ("last-page", RAM - PAGE_SIZE, S),
    ("unaligned-8", HEAP_GPA + 8, S),
    ("unaligned-2048", HEAP_GPA + 2048, S),
    ("below-1mib", L.RESERVED_END - PAGE_SIZE, S),
    ("gpa-0", 0, S),
    ("boot-info", L.BOOT_INFO, S),
    ("size-smaller", HEAP_GPA, S - PAGE_SIZE),
    ("size-larger", HEAP_GPA, S + PAGE_SIZE),
    ("size-0", HEAP_GPA, 0),
    ("size-u64-max", HEAP_GPA, 2**64 - 1),
    ("size-wraps", RAM - S, 2**64 - (RAM - S) + S),
]


@pytest.mark.parametrize("why, gpa, size", HARDENING, ids=[h[0] for h in HARDENING])
def test_map_hardening_rejects_before_the_host_sees_it(world, why, gpa, size):
    rec = Recorder()
    svc = world.service(device=lambda s: rec)
    a = world.domain(svc, "a")
    rec.calls.clear()
    assert a.map(gpa, size) == INVALID_PARAMS
    assert rec.calls == [] and svc.server.fw_mapped == {}
    assert svc.heap_view("a") is None
    # and a good Map still works afterwards
    assert a.map() == OK


@pytest.mark.parametrize("gpa", [HEAP_GPA, RAM - S, HEAP_GPA + 7 * PAGE_SIZE])
def test_map_accepts_page_aligned_heaps_inside_ram_above_1mib(world, gpa):
    rec = Recorder()
    svc = world.service(device=lambda s: rec)
    a = world.domain(svc, "a")
    assert a.map(gpa) == OK
    assert svc.server.fw_mapped == {3: (a.ram.mfn * PAGE_SIZE + gpa, S)}
    view = svc.heap_view("a")
    try:
        a.memory.write(gpa, b"heap!")
        assert bytes(view[:5]) == b"heap!" and len(view) == S
    finally:
        view.release()


def test_double_map_is_already_mapped_until_unmapped(world):
    svc = world.service()
    a = world.domain(svc, "a")
    assert a.map() == OK
    assert a.map() == A.PVRSRV_ERROR_DEVICEMEM_ALREADY_MAPPED
    assert a.map(HEAP_GPA + S) == A.PVRSRV_ERROR_DEVICEMEM_ALREADY_MAPPED
    assert svc.server.fw_mapped == {3: (a.ram.mfn * PAGE_SIZE + HEAP_GPA, S)}
    assert a.unmap() == OK
    assert svc.server.fw_mapped == {}
    assert a.map(HEAP_GPA + S) == OK
    assert svc.server.fw_mapped == {3: (a.ram.mfn * PAGE_SIZE + HEAP_GPA + S, S)}


@pytest.mark.parametrize("func", [0, 7, 8, 9, 0x100, 2**31, 2**32 - 1])
def test_bad_function_ids_are_invalid_params_and_never_reach_the_host(world, func):
    rec = Recorder()
    svc = world.service(device=lambda s: rec)
    a = world.domain(svc, "a")
    before = (list(svc.server.priority), svc.server.hcs_deadline_ms, list(svc.server.online))
    rec.calls.clear()
    # Fields a VMM-only call would use (param, value) cannot reach VMMConfigure.
    r, msg = a.call(func, dev=A.VMM_CONF_HCS_DEADLINE, size=1, paddr=A.PRIORITY_MAX)
    assert r == INVALID_PARAMS
    assert rec.calls == []
    assert (list(svc.server.priority), svc.server.hcs_deadline_ms,
            list(svc.server.online)) == before


def test_bad_function_id_is_invalid_params_even_when_offline(world):
    svc = world.service()
    a = world.domain(svc, "a", start=False)
    assert a.call(7)[0] == INVALID_PARAMS
    assert a.call(A.PVZ_BRIDGE_DESTROYDEVICECONFIG)[0] == A.PVRSRV_ERROR_PVZ_OSID_IS_OFFLINE


def _guest_call(dom, gpa):
    """pvz_call(gpa) as the guest sees it: through the vCPU's dispatcher
    (which turns a GuestMemoryError into -EFAULT)."""
    runner = SimpleNamespace(domain=dom, hypercall_counts=Counter())
    return _dispatch(runner, A.HC_PVZ_CALL, gpa, 0, 0, 0, 0, 0)


@pytest.mark.parametrize("gpa", [RAM, RAM - 32, RAM - 1, 2**64 - 1, 2**64 - 32, 0xFFFF_FFFF_0000,
                                 0, 0x2000, L.BOOT_INFO, L.RESERVED_END - 64,
                                 L.RESERVED_END - 32])
def test_a_message_outside_guest_ram_or_in_the_first_mib_is_efault(world, gpa):
    rec = Recorder()
    svc = world.service(device=lambda s: rec)
    a = world.domain(svc, "a")
    rec.calls.clear()
    assert _guest_call(a, gpa) == -errno.EFAULT
    assert rec.calls == []


def test_a_message_at_the_edges_of_the_allowed_ram_is_fine(world):
    svc = world.service()
    a = world.domain(svc, "a")
    for gpa in (RAM - 64, L.RESERVED_END, L.RESERVED_END + 1):
        r, _ = a.call(A.PVZ_BRIDGE_CREATEDEVICECONFIG, gpa=gpa)
        assert r == OK


def test_a_message_in_read_only_memory_is_efault_before_the_call_runs(world, machine):
    rec = Recorder()
    svc = world.service(device=lambda s: rec)
    a = world.domain(svc, "a")
    ro = machine.alloc(1, "ro")
    try:
        ro_gpa = 0x8000_0000
        a.memory.add_region(Region(ro_gpa, ro, readonly=True))
        A.PVZ_MSG.pack_into(ro.buffer, 0, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, 0, 0, 0, 0, 0, S,
                            HEAP_GPA, 0, 0)
        rec.calls.clear()
        assert _guest_call(a, ro_gpa) == -errno.EFAULT
        assert rec.calls == [] and svc.server.fw_mapped == {}
        assert a.map() == OK                      # nothing half done
    finally:
        a.memory.remove_region(0x8000_0000)
        machine.free(ro)


@pytest.mark.parametrize("func, dev, start, expected", [
    (A.PVZ_BRIDGE_CREATEDEVICECONFIG, 0, True, OK),
    (A.PVZ_BRIDGE_CREATEDEVICECONFIG, 2, True, INVALID_PARAMS),
    (A.PVZ_BRIDGE_CREATEDEVICEPHYSHEAPS, 0, False, A.PVRSRV_ERROR_PVZ_OSID_IS_OFFLINE),
    (A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, True, INVALID_PARAMS),      # size 0
    (A.PVZ_BRIDGE_DEBUGDUMPCONFIG, 0, True, INVALID_PARAMS),
])
def test_status_written_back_is_the_return_value(world, func, dev, start, expected):
    svc = world.service()
    a = world.domain(svc, "a", start=start)
    r, msg = a.call(func, dev)          # FakeDomain.call asserts msg.status == r
    assert r == msg["status"] == expected


# ------------------------------------------------------------------------------ lifecycle


def test_domain_starting_puts_the_osid_online_with_its_priority(world):
    svc = world.service()
    assert svc.server.online[3] is False
    a = world.domain(svc, "a")
    assert svc.server.online[3] is True and svc.server.priority[3] == 10
    assert a.reg(G.REG_PRIORITY) == 10
    st = a.reg(G.REG_STATUS)
    assert st & G.STATUS_FW_RUNNING and st & G.STATUS_OS_ONLINE
    assert not st & G.STATUS_HEAP_READY
    assert a.map() == OK
    assert a.reg(G.REG_STATUS) & G.STATUS_HEAP_READY
    b = world.domain(svc, "b")
    assert svc.server.priority[5] == 1 and b.reg(G.REG_PRIORITY) == 1
    assert svc.device.inits == 1
    # A domain without PVZ changes nothing.
    online = list(svc.server.online)
    world.domain(svc, "plain")
    assert svc.server.online == online


def test_domain_starting_with_a_recording_system(world):
    rec = Recorder()
    svc = world.service(device=lambda s: rec)
    assert rec.calls == [("set_hcs_deadline", 0xFFFFFFFF)]
    world.domain(svc, "a")
    assert rec.calls[1:] == [("init_device",), ("set_os_state", 3, True),
                             ("set_os_priority", 3, 10)]


def test_a_failing_online_is_reported_on_the_console(world):
    svc = world.service()
    a = world.domain(svc, "a")
    svc.domain_starting(a)                  # online already
    assert b"OnVmOnline(OSID 3) failed: PVRSRV_ERROR_INVALID_PARAMS" in a.console.out
    assert svc.server.online[3] is True


def test_domain_stopped_unmaps_then_goes_offline(world):
    rec = Recorder()
    svc = world.service(device=lambda s: rec)
    a = world.domain(svc, "a")
    assert a.map() == OK
    rec.calls.clear()
    svc.domain_stopped(a)
    assert rec.calls == [("set_os_state", 3, False), ("unmap_fw_heap", 3),
                         ("set_os_state", 3, False)]
    assert svc.server.online[3] is False and svc.server.fw_mapped == {}
    assert svc.heap_view("a") is None


def test_domain_stopped_without_a_map_only_goes_offline(world):
    rec = Recorder()
    svc = world.service(device=lambda s: rec)
    a = world.domain(svc, "a")
    rec.calls.clear()
    svc.domain_stopped(a)
    assert rec.calls == [("set_os_state", 3, False)]
    assert svc.server.online[3] is False


def test_domain_stopped_of_unknown_or_never_attached_domains_does_nothing(world):
    rec = Recorder()
    svc = world.service(device=lambda s: rec)
    a = world.domain(svc, "a")
    plain = world.domain(svc, "plain")
    stranger = world.domain(svc, "a", attach=False, start=False)   # same name, not attached
    rec.calls.clear()
    svc.domain_stopped(plain)
    svc.domain_stopped(stranger)
    assert rec.calls == [] and svc.server.online[3] is True
    svc.domain_stopped(a)
    svc.domain_stopped(a)                   # twice: the second does nothing
    assert rec.calls == [("set_os_state", 3, False)]


def test_a_restarted_domain_maps_again(world):
    svc = world.service()
    a = world.domain(svc, "a")
    assert a.map() == OK
    svc.domain_stopped(a)
    assert a.irqfds[0].closed                 # the device forgot its interrupt
    assert svc.device.stats(3)["online"] is False
    a2 = world.domain(svc, "a")
    assert svc.server.online[3] is True
    assert a2.map() == OK
    assert svc.server.fw_mapped == {3: (a2.ram.mfn * PAGE_SIZE + HEAP_GPA, S)}
    assert a2.reg(G.REG_OSID) == 3 and not a2.irqfds[0].closed


def test_vmm_configure_priority_reaches_the_device(world):
    svc = world.service()
    a = world.domain(svc, "a")
    assert svc.vmm_configure(A.VMM_CONF_PRIO_OSID0 + 3, 77) == OK
    assert a.reg(G.REG_PRIORITY) == 77 and svc.server.priority[3] == 77
    assert svc.vmm_configure(A.VMM_CONF_PRIO_OSID0 + 3, A.PRIORITY_MAX + 1) == INVALID_PARAMS
    assert a.reg(G.REG_PRIORITY) == 77
    assert svc.vmm_configure(42, 1) == INVALID_PARAMS


def test_close_stops_the_firmware_and_frees_the_carveouts(machine, tmp_path):
    w = World(machine, tmp_path)
    try:
        before = machine.live_ranges
        svc = w.service(origin="host", gpu=S)
        assert machine.live_ranges == before + 2
        existing = set(threading.enumerate())
        w.domain(svc, "a")
        fw = [t for t in threading.enumerate() if t not in existing and t.name == "pvz-gpu-fw"]
        assert len(fw) == 1 and fw[0].is_alive()
        w.services.remove(svc)
        svc.close()
        fw[0].join(TIMEOUT)
        assert not fw[0].is_alive()
        assert machine.live_ranges == before + 1        # a's RAM only
    finally:
        w.close()


def test_a_failing_device_factory_frees_the_carveouts(machine, tmp_path):
    m = parse_manifest(manifest_text(origin="host", gpu=S), tmp_path / "m.toml")
    before = machine.live_ranges

    def broken(svc):
        raise OSError("no device")

    with pytest.raises(OSError):
        PvzService(machine, m.pvz, m.domains, device=broken)
    assert machine.live_ranges == before


# ------------------------------------------------------------------------------ host origin


@pytest.mark.parametrize("gpu", [0, 2 * S])
def test_host_origin_slices_per_osid(world, gpu):
    svc = world.service(origin="host", gpu=gpu)
    fw_pages, gpu_pages = S // PAGE_SIZE, gpu // PAGE_SIZE
    assert svc.fw_carveout.nframes == 8 * fw_pages
    for name, osid in (("a", 3), ("b", 5)):
        regions = svc.regions(name)
        assert len(regions) == (2 if gpu else 1)
        gpa, part, ro = regions[0]
        assert gpa == L.PVZ_FW_CARVEOUT_GPA + osid * S and ro is False
        assert isinstance(part, FramePart) and part.range is svc.fw_carveout
        assert (part.index, part.nframes) == (osid * fw_pages, fw_pages)
        assert part.mfn == svc.fw_carveout.mfn + osid * fw_pages
        if gpu:
            gpa, part, ro = regions[1]
            assert gpa == L.PVZ_GPU_CARVEOUT_GPA + osid * gpu and ro is False
            assert part.range is svc.gpu_carveout
            assert (part.index, part.nframes) == (osid * gpu_pages, gpu_pages)
        dom = world.domain(svc, name)
        r, msg = dom.call(A.PVZ_BRIDGE_CREATEDEVICEPHYSHEAPS)
        assert r == OK
        assert (msg["heap_type"], msg["fw_size"], msg["fw_paddr"]) == \
            (A.PHYS_HEAP_TYPE_UMA, S, L.PVZ_FW_CARVEOUT_GPA + osid * S)
        assert (msg["gpu_size"], msg["gpu_paddr"]) == \
            ((gpu, L.PVZ_GPU_CARVEOUT_GPA + osid * gpu) if gpu else (0, 0))
        # Map is refused: the host's origin is HOST.
        assert dom.map() == A.PVRSRV_ERROR_INVALID_PVZ_CONFIG
    assert svc.regions("plain") == ()
    assert svc.regions("nobody") == ()


def test_host_origin_heap_view_is_the_guests_slice(world):
    svc = world.service(origin="host")
    a = world.domain(svc, "a")
    a.memory.write(L.PVZ_FW_CARVEOUT_GPA + 3 * S + 100, b"slice of 3")
    view = svc.heap_view("a")
    try:
        assert len(view) == S and bytes(view[100:110]) == b"slice of 3"
    finally:
        view.release()
    assert bytes(svc.fw_carveout.buffer[3 * S + 100:3 * S + 110]) == b"slice of 3"
    assert svc.heap_view("plain") is None


# ------------------------------------------------------------------------------ the firmware


class Queue:
    """A guest's command queue in its firmware heap at *base* (a GPA)."""

    def __init__(self, dom, base, slots=16):
        self.dom, self.base, self.slots = dom, base, slots
        self.write = 0
        dom.memory.write(base, G.CCB_CTL.pack(0, 0, slots - 1, G.CMD_SIZE))

    def slot_gpa(self, slot):
        return self.base + G.CCB_OFFSET + slot * G.CMD_SIZE

    def submit(self, op, flags=0, dst=0, src=0, length=0, value=0, tag=0):
        slot = self.write
        self.dom.memory.write(self.slot_gpa(slot), G.CMD.pack(op, flags, dst, src, length, value,
                                                              SENTINEL, 0, tag, 0))
        self.write = (self.write + 1) % self.slots
        return slot

    def kick(self):
        self.dom.memory.write_u32(self.base, self.write)
        self.dom.set_reg(G.REG_KICK, 1)

    def read_offset(self):
        return self.dom.memory.read_u32(self.base + 4)

    def wait(self, device):
        wait_for(lambda: self.read_offset() == self.write, "the firmware to drain the queue")
        device.stats(0)         # the firmware's step (and its interrupt) is over

    def status(self, slot):
        return self.dom.memory.read_u32(self.slot_gpa(slot) + G.CMD_STATUS_OFF)

    def result(self, slot):
        return self.dom.memory.read_u64(self.slot_gpa(slot) + G.CMD_RESULT_OFF)

    def cmd(self, slot):
        return G.CMD.unpack(self.dom.memory.read(self.slot_gpa(slot), G.CMD_SIZE))

    def heap(self, off, n):
        return self.dom.memory.read(self.base + off, n)

    def put(self, off, data):
        self.dom.memory.write(self.base + off, data)


@pytest.fixture
def guest_gpu(world):
    """Domain a (OSID 3), online, with its heap mapped at HEAP_GPA and a queue."""
    svc = world.service(origin="guest")
    a = world.domain(svc, "a")
    assert a.map() == OK
    return svc, a, Queue(a, HEAP_GPA)


def test_fill_copy_checksum(guest_gpu):
    svc, a, q = guest_gpu
    q.put(0x4000, b"\x55" * 0x200)
    n = 0x102                       # not a multiple of 4: the pattern is cut
    s0 = q.submit(G.OP_FILL, dst=0x4000, length=n, value=0xA1B2C3D4)
    s1 = q.submit(G.OP_COPY, dst=0x8000, src=0x4000, length=n)
    s2 = q.submit(G.OP_CHECKSUM, src=0x8000, length=n)
    s3 = q.submit(G.OP_NOP, tag=0x1122334455667788)
    q.kick()
    q.wait(svc.device)
    pattern = (struct.pack("<I", 0xA1B2C3D4) * (n // 4 + 1))[:n]
    assert q.heap(0x4000, n) == pattern
    assert q.heap(0x4000 + n, 0x200 - n) == b"\x55" * (0x200 - n)     # not one byte more
    assert q.heap(0x8000, n) == pattern and q.heap(0x8000 + n, 4) == b"\0" * 4
    assert [q.status(s) for s in (s0, s1, s2, s3)] == [G.ST_DONE] * 4
    assert q.result(s2) == zlib.crc32(pattern)
    assert q.cmd(s3)[8] == 0x1122334455667788          # the guest's tag, untouched
    assert a.reg(G.REG_COMPLETED) == 4
    assert svc.device.stats(3)["completed"] == 4 and svc.device.stats(3)["errors"] == 0
    assert a.reg(G.REG_IRQ_STATUS) == G.IRQ_DONE


def test_checksum_of_guest_data_and_overlapping_copy(guest_gpu):
    svc, a, q = guest_gpu
    data = os.urandom(3000)
    q.put(0x3000, data)
    s0 = q.submit(G.OP_CHECKSUM, src=0x3000, length=len(data))
    s1 = q.submit(G.OP_COPY, dst=0x3004, src=0x3000, length=64)      # overlapping: memmove
    s2 = q.submit(G.OP_CHECKSUM, src=0, length=0)
    q.kick()
    q.wait(svc.device)
    assert q.result(s0) == zlib.crc32(data)
    assert q.heap(0x3004, 64) == data[:64]
    assert (q.status(s1), q.status(s2), q.result(s2)) == (G.ST_DONE, G.ST_DONE, 0)


@pytest.mark.parametrize("op, flags, dst, src, length", [
    (G.OP_FILL, 0, S - 4, 0, 8),                  # runs past the heap
    (G.OP_FILL, 0, S + 1, 0, 0),                  # starts past the heap
    (G.OP_FILL, 0, 2**64 - 1, 0, 2),
    (G.OP_FILL, 0, 0x4000, 0, 2**64 - 1),
    (G.OP_COPY, 0, 0x4000, S - 8, 16),            # source past the heap
    (G.OP_COPY, 0, S - 8, 0x4000, 16),
    (G.OP_CHECKSUM, 0, 0, 0x4000, 2**64 - 0x4000),
    (G.OP_FILL, G.FLAG_DST_GPU, 0x4000, 0, 4),    # no GPU heap without a carve-out
    (G.OP_COPY, G.FLAG_SRC_GPU, 0x4000, 0x4000, 4),
])
def test_out_of_range_operands_fault_and_touch_nothing(guest_gpu, op, flags, dst, src, length):
    svc, a, q = guest_gpu
    before = q.heap(0x2000, S - 0x2000)
    s = q.submit(op, flags, dst, src, length, value=0xFFFFFFFF)
    q.kick()
    q.wait(svc.device)
    assert q.status(s) == G.ST_FAULT
    assert q.heap(0x2000, S - 0x2000) == before
    assert a.reg(G.REG_IRQ_STATUS) & G.IRQ_ERROR
    assert svc.device.stats(3)["errors"] == 1


def test_operands_ending_exactly_at_the_heap_end_are_fine(guest_gpu):
    svc, a, q = guest_gpu
    s0 = q.submit(G.OP_FILL, dst=S - 4, length=4, value=0x01020304)
    s1 = q.submit(G.OP_FILL, dst=S, length=0)
    q.kick()
    q.wait(svc.device)
    assert (q.status(s0), q.status(s1)) == (G.ST_DONE, G.ST_DONE)
    assert q.heap(S - 4, 4) == bytes([4, 3, 2, 1])


@pytest.mark.parametrize("op, flags", [(4, 0), (99, 0), (2**32 - 1, 0), (G.OP_NOP, 8),
                                       (G.OP_FILL, 0x80000000), (G.OP_CHECKSUM, 16)])
def test_unknown_op_or_flags_is_bad(guest_gpu, op, flags):
    svc, a, q = guest_gpu
    q.put(0x4000, b"\x77" * 16)
    s = q.submit(op, flags, dst=0x4000, src=0x4000, length=16, value=0)
    q.kick()
    q.wait(svc.device)
    assert q.status(s) == G.ST_BAD
    assert q.heap(0x4000, 16) == b"\x77" * 16
    assert a.reg(G.REG_IRQ_STATUS) & G.IRQ_ERROR


@pytest.mark.parametrize("why, ctl", [
    ("mask-not-2^n-1", (1, 0, 5, G.CMD_SIZE)),
    ("too-many-slots", (1, 0, 2047, G.CMD_SIZE)),
    ("queue-past-the-heap", (1, 0, 1023, G.CMD_SIZE)),     # 0x1000 + 1024*64 > 64 KiB
    ("cmd-size", (1, 0, 15, 32)),
    ("write-past-mask", (16, 0, 15, G.CMD_SIZE)),
])
def test_a_queue_the_firmware_cannot_read_sets_the_error_bit(guest_gpu, why, ctl):
    svc, a, q = guest_gpu
    s = q.submit(G.OP_FILL, dst=0x4000, length=4, value=0xDEADBEEF)
    a.set_reg(G.REG_IRQ_ENABLE, G.IRQ_ERROR)
    q.put(0, G.CCB_CTL.pack(*ctl))
    a.set_reg(G.REG_KICK, 1)
    wait_for(lambda: a.reg(G.REG_IRQ_STATUS) & G.IRQ_ERROR, "the error bit")
    svc.device.stats(0)
    assert a.irqfds[0].fires == 1
    assert q.read_offset() == 0 and q.status(s) == SENTINEL
    assert q.heap(0x4000, 4) == b"\0" * 4
    assert svc.device.stats(3)["errors"] == 1 and a.reg(G.REG_COMPLETED) == 0
    # A good control block and a new kick: the queue runs.
    q.put(0, G.CCB_CTL.pack(0, 0, q.slots - 1, G.CMD_SIZE))
    q.kick()
    q.wait(svc.device)
    assert q.status(s) == G.ST_DONE and q.heap(0x4000, 4) == struct.pack("<I", 0xDEADBEEF)


def test_the_queue_wraps(guest_gpu):
    svc, a, q0 = guest_gpu
    q = Queue(a, HEAP_GPA, slots=4)
    for round_ in range(3):
        slots = [q.submit(G.OP_FILL, dst=0x4000 + 4 * i, length=4, value=round_ * 10 + i)
                 for i in range(3)]
        q.kick()
        q.wait(svc.device)
        assert [q.status(s) for s in slots] == [G.ST_DONE] * 3
        assert q.heap(0x4000, 12) == struct.pack("<III", round_ * 10, round_ * 10 + 1,
                                                 round_ * 10 + 2)
    assert q.read_offset() == 9 % 4
    assert a.reg(G.REG_COMPLETED) == 9


def test_one_interrupt_when_the_queue_drains_without_flag_irq(guest_gpu):
    svc, a, q = guest_gpu
    irq = a.irqfds[0]
    a.set_reg(G.REG_IRQ_ENABLE, G.IRQ_DONE | G.IRQ_ERROR)
    for _ in range(3):
        q.submit(G.OP_NOP)
    q.kick()
    q.wait(svc.device)
    assert irq.fires == 1
    assert a.reg(G.REG_IRQ_STATUS) == G.IRQ_DONE
    a.set_reg(G.REG_IRQ_STATUS, G.IRQ_DONE)          # write 1 to clear
    assert a.reg(G.REG_IRQ_STATUS) == 0


def test_flag_irq_interrupts_after_each_command(guest_gpu):
    svc, a, q = guest_gpu
    irq = a.irqfds[0]
    a.set_reg(G.REG_IRQ_ENABLE, G.IRQ_DONE)
    for _ in range(3):
        q.submit(G.OP_NOP, G.FLAG_IRQ)
    q.kick()
    q.wait(svc.device)
    assert irq.fires == 3


def test_no_interrupt_unless_enabled_then_enabling_a_pending_bit_fires(guest_gpu):
    svc, a, q = guest_gpu
    irq = a.irqfds[0]
    q.submit(G.OP_NOP, G.FLAG_IRQ)
    q.kick()
    q.wait(svc.device)
    assert irq.fires == 0 and a.reg(G.REG_IRQ_STATUS) == G.IRQ_DONE
    a.set_reg(G.REG_IRQ_ENABLE, G.IRQ_ERROR)         # not the pending bit
    assert irq.fires == 0
    a.set_reg(G.REG_IRQ_ENABLE, G.IRQ_DONE | 0xF0)   # unknown bits are dropped
    assert irq.fires == 1
    assert a.reg(G.REG_IRQ_ENABLE) == G.IRQ_DONE


def test_an_error_interrupt_for_a_faulting_command(guest_gpu):
    svc, a, q = guest_gpu
    irq = a.irqfds[0]
    a.set_reg(G.REG_IRQ_ENABLE, G.IRQ_ERROR)
    q.submit(G.OP_NOP)
    q.submit(G.OP_NOP)
    q.kick()
    q.wait(svc.device)
    assert irq.fires == 0                            # DONE is not enabled
    assert a.reg(G.REG_IRQ_STATUS) == G.IRQ_DONE
    q.submit(G.OP_FILL, dst=S, length=4)
    q.kick()
    q.wait(svc.device)
    assert irq.fires == 1
    assert a.reg(G.REG_IRQ_STATUS) == G.IRQ_DONE | G.IRQ_ERROR


def test_after_unmap_the_heap_is_gone_and_a_kick_does_nothing(guest_gpu):
    svc, a, q = guest_gpu
    q.submit(G.OP_FILL, dst=0x4000, length=4, value=0x12345678)
    assert a.unmap() == OK
    assert a.reg(G.REG_HEAP_SIZE) == 0 and not a.reg(G.REG_STATUS) & G.STATUS_HEAP_READY
    q.kick()
    time.sleep(0.05)
    svc.device.stats(0)
    assert q.read_offset() == 0 and q.heap(0x4000, 4) == b"\0" * 4
    assert a.reg(G.REG_COMPLETED) == 0


def test_host_origin_firmware_with_gpu_heap(world):
    svc = world.service(origin="host", gpu=S)
    a = world.domain(svc, "a")
    fw_gpa = L.PVZ_FW_CARVEOUT_GPA + 3 * S
    gpu_gpa = L.PVZ_GPU_CARVEOUT_GPA + 3 * S
    q = Queue(a, fw_gpa)
    data = os.urandom(256)
    q.put(0x3000, data)
    s0 = q.submit(G.OP_COPY, G.FLAG_DST_GPU, dst=0x100, src=0x3000, length=256)
    s1 = q.submit(G.OP_FILL, G.FLAG_DST_GPU, dst=0x1000, length=8, value=0xCAFEF00D)
    s2 = q.submit(G.OP_CHECKSUM, G.FLAG_SRC_GPU, src=0x100, length=256)
    s3 = q.submit(G.OP_COPY, G.FLAG_SRC_GPU, dst=0x5000, src=0x1000, length=8)
    s4 = q.submit(G.OP_FILL, G.FLAG_DST_GPU, dst=S - 2, length=4)        # past the GPU slice
    q.kick()
    q.wait(svc.device)
    assert [q.status(s) for s in (s0, s1, s2, s3, s4)] == [G.ST_DONE] * 4 + [G.ST_FAULT]
    assert a.memory.read(gpu_gpa + 0x100, 256) == data
    assert q.result(s2) == zlib.crc32(data)
    assert q.heap(0x5000, 8) == struct.pack("<II", 0xCAFEF00D, 0xCAFEF00D)
    # The host sees the same slice.
    view = svc.heap_view("a")
    try:
        assert bytes(view[0x3000:0x3100]) == data
    finally:
        view.release()
    # Another guest's slices are untouched.
    assert bytes(svc.gpu_carveout.buffer[5 * S:6 * S]) == b"\0" * S


def test_host_slice_is_wiped_when_its_guest_stops(world):
    svc = world.service(origin="host", gpu=S)
    a = world.domain(svc, "a")
    a.memory.write(L.PVZ_FW_CARVEOUT_GPA + 3 * S + 0x100, b"secret")
    a.memory.write(L.PVZ_GPU_CARVEOUT_GPA + 3 * S + 0x100, b"secret")
    svc.domain_stopped(a)
    assert bytes(svc.fw_carveout.buffer[3 * S:4 * S]) == b"\0" * S
    assert bytes(svc.gpu_carveout.buffer[3 * S:4 * S]) == b"\0" * S


# ------------------------------------------------------------------------------ scheduling


def _record_completions(doms, order):
    """Each command with FLAG_IRQ fires its domain's irqfd: record who, in order."""
    for dom in doms:
        dom.set_reg(G.REG_IRQ_ENABLE, G.IRQ_DONE)
        dom.irqfds[0].on_fire = (lambda name=dom.name: order.append(name))


def _host_queue(dom, osid):
    return Queue(dom, L.PVZ_FW_CARVEOUT_GPA + osid * S)


@pytest.mark.parametrize("prio_a, prio_b", [(10, 1), (1, 10)])
def test_the_higher_priority_queue_runs_first(world, prio_a, prio_b):
    svc = world.service(origin="host", device=deferred_gpu,
                        domains=(("a", 3, prio_a), ("b", 5, prio_b)))
    a, b = world.domain(svc, "a"), world.domain(svc, "b")
    (hi, hi_osid), (lo, lo_osid) = ((a, 3), (b, 5)) if prio_a > prio_b else ((b, 5), (a, 3))
    qhi, qlo = _host_queue(hi, hi_osid), _host_queue(lo, lo_osid)
    seen = []       # (who, the other's COMPLETED at that moment)
    for dom, other in ((a, b), (b, a)):
        dom.set_reg(G.REG_IRQ_ENABLE, G.IRQ_DONE)
        dom.irqfds[0].on_fire = (lambda d=dom, o=other: seen.append((d.name,
                                                                     o.reg(G.REG_COMPLETED))))
    for _ in range(5):
        qlo.submit(G.OP_NOP, G.FLAG_IRQ)       # the low one is kicked first
    qlo.kick()
    for _ in range(5):
        qhi.submit(G.OP_NOP, G.FLAG_IRQ)
    qhi.kick()
    assert svc.device.start() == OK
    qhi.wait(svc.device)
    qlo.wait(svc.device)
    assert seen == [(hi.name, 0)] * 5 + [(lo.name, 5)] * 5


def test_vmm_configure_changes_who_goes_first(world):
    svc = world.service(origin="host", device=deferred_gpu)
    a, b = world.domain(svc, "a"), world.domain(svc, "b")
    assert svc.vmm_configure(A.VMM_CONF_PRIO_OSID0 + 5, 11) == OK      # b above a's 10
    qa, qb = _host_queue(a, 3), _host_queue(b, 5)
    order = []
    _record_completions((a, b), order)
    for q in (qa, qb):
        for _ in range(3):
            q.submit(G.OP_NOP, G.FLAG_IRQ)
        q.kick()
    svc.device.start()
    qa.wait(svc.device)
    qb.wait(svc.device)
    assert order == ["b"] * 3 + ["a"] * 3


def test_equal_priorities_take_turns(world):
    svc = world.service(origin="host", device=deferred_gpu,
                        domains=(("a", 3, 4), ("b", 5, 4)))
    a, b = world.domain(svc, "a"), world.domain(svc, "b")
    qa, qb = _host_queue(a, 3), _host_queue(b, 5)
    order = []
    _record_completions((a, b), order)
    for q in (qa, qb):
        for _ in range(4):
            q.submit(G.OP_NOP, G.FLAG_IRQ)
        q.kick()
    svc.device.start()
    qa.wait(svc.device)
    qb.wait(svc.device)
    assert sorted(order) == ["a"] * 4 + ["b"] * 4
    assert all(x != y for x, y in zip(order, order[1:])), order


def test_higher_priority_work_overtakes_at_the_next_command(world):
    svc = world.service(origin="host", device=deferred_gpu)     # a: 10, b: 1
    a, b = world.domain(svc, "a"), world.domain(svc, "b")
    qa, qb = _host_queue(a, 3), _host_queue(b, 5)
    order = []
    _record_completions((a, b), order)
    for _ in range(3):
        qa.submit(G.OP_NOP, G.FLAG_IRQ)
    qa.dom.memory.write_u32(qa.base, qa.write)       # queued, not kicked yet
    for _ in range(4):
        qb.submit(G.OP_NOP, G.FLAG_IRQ)
    kicked = []

    def b_fired():
        order.append("b")
        if not kicked:                                # a's kick lands while b runs
            kicked.append(1)
            a.set_reg(G.REG_KICK, 1)

    b.irqfds[0].on_fire = b_fired
    qb.kick()
    svc.device.start()
    qa.wait(svc.device)
    qb.wait(svc.device)
    assert order == ["b"] + ["a"] * 3 + ["b"] * 3


def test_an_offline_osid_is_not_scheduled(world):
    svc = world.service(origin="host", device=deferred_gpu)
    a, b = world.domain(svc, "a"), world.domain(svc, "b")
    qa, qb = _host_queue(a, 3), _host_queue(b, 5)
    qa.submit(G.OP_FILL, dst=0x4000, length=4, value=1)
    qa.kick()
    assert svc.server.on_vm_offline(3) == OK          # the VMM takes a offline
    qb.submit(G.OP_NOP)
    qb.kick()
    svc.device.start()
    qb.wait(svc.device)
    time.sleep(0.05)
    svc.device.stats(0)
    assert qa.read_offset() == 0 and a.reg(G.REG_COMPLETED) == 0


# ------------------------------------------------------------------------------ more


def test_guest_origin_with_a_gpu_carveout(world):
    svc = world.service(origin="guest", gpu=S)
    assert svc.fw_carveout is None
    ((gpa, part, ro),) = svc.regions("a")
    assert gpa == L.PVZ_GPU_CARVEOUT_GPA + 3 * S and part.range is svc.gpu_carveout
    a = world.domain(svc, "a")
    r, msg = a.call(A.PVZ_BRIDGE_CREATEDEVICEPHYSHEAPS)
    assert r == OK
    assert (msg["fw_size"], msg["fw_paddr"], msg["gpu_size"], msg["gpu_paddr"]) == \
        (0, 0, S, L.PVZ_GPU_CARVEOUT_GPA + 3 * S)
    assert a.map() == OK
    q = Queue(a, HEAP_GPA)
    s = q.submit(G.OP_FILL, G.FLAG_DST_GPU, dst=0x10, length=4, value=0x0BADF00D)
    q.kick()
    q.wait(svc.device)
    assert q.status(s) == G.ST_DONE
    assert a.memory.read_u32(L.PVZ_GPU_CARVEOUT_GPA + 3 * S + 0x10) == 0x0BADF00D


def test_a_gpu_slice_is_wiped_when_its_guest_stops_with_origin_guest(world):
    svc = world.service(origin="guest", gpu=S)
    a = world.domain(svc, "a")
    gpu_gpa = L.PVZ_GPU_CARVEOUT_GPA + 3 * S
    assert a.map() == OK
    a.memory.write(gpu_gpa + 0x100, b"secret")
    svc.domain_stopped(a)
    a2 = world.domain(svc, "a")
    assert a2.memory.read(gpu_gpa + 0x100, 6) == b"\0" * 6


class SlowRecorder(pvz_fakes.Recorder):
    def __init__(self):
        super().__init__(config=DevConfig(0x99, 0x2000, 0xFE000000), record_config=False)
        self.inside = self.max_inside = 0
        self._lock = threading.Lock()

    def map_fw_heap(self, osid, paddr, size):
        with self._lock:
            self.inside += 1
            self.max_inside = max(self.max_inside, self.inside)
        time.sleep(0.05)
        with self._lock:
            self.inside -= 1
        return super().map_fw_heap(osid, paddr, size)


def _concurrently(*fns):
    barrier = threading.Barrier(len(fns))
    out, errors = [None] * len(fns), []

    def run(i, fn):
        try:
            barrier.wait(TIMEOUT)
            out[i] = fn()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 2)
    assert not any(t.is_alive() for t in threads) and errors == []
    return out


def test_two_vcpus_of_one_guest_mapping_at_once_get_one_map(world):
    rec = SlowRecorder()
    svc = world.service(device=lambda s: rec)
    a = world.domain(svc, "a")

    def map_from(msg_gpa, heap_gpa):
        def go():
            a.memory.write(msg_gpa, A.PVZ_MSG.pack(A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, 0, 0, 0, 0,
                                                   0, S, heap_gpa, 0, 0))
            return a.hypercalls.handlers[A.HC_PVZ_CALL](None, msg_gpa, 0, 0, 0, 0, 0)
        return go

    results = _concurrently(map_from(MSG_GPA + 0x1000, HEAP_GPA),
                            map_from(MSG_GPA + 0x1100, HEAP_GPA + S))
    assert sorted(results) == [OK, A.PVRSRV_ERROR_DEVICEMEM_ALREADY_MAPPED]
    assert [c[0] for c in rec.calls].count("map_fw_heap") == 1 and rec.max_inside == 1


def test_two_guests_mapping_at_once_are_served_one_at_a_time(world):
    rec = SlowRecorder()
    svc = world.service(device=lambda s: rec)
    a, b = world.domain(svc, "a"), world.domain(svc, "b")
    results = _concurrently(lambda: a.map(), lambda: b.map())
    assert results == [OK, OK] and rec.max_inside == 1
    assert set(svc.server.fw_mapped) == {3, 5}
