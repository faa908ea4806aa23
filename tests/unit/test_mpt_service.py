"""MptService, GVT-g's MPT ops over KVM (specs/grant-mpt.md part E), without KVM.

The domains are real :class:`paravm.vm.domain.Domain` objects over a fake
VmBackend that keeps the memslot table (tests/unit/mpt_fakes.py); guest
accesses are played the way KVM serves them: from memory through a
read-write memslot, or as an MMIO exit through the real ``handle_exit``
(a write to a read-only memslot, any access where no memslot is).  Error
returns follow the docstrings and kvmgt (§E2; the cases of §E4)."""

from __future__ import annotations

import threading

import pytest

from paravm.arch.x86 import layout as L
from paravm.memory import PAGE_SIZE
from paravm.services.mpt import abi as A
from paravm.services.mpt.service import MptService
from paravm.vm.vcpu import GuestStop

from mpt_fakes import Guest, destroy, fires, make_domain

P = PAGE_SIZE
RAM = 4 << 20
NFRAMES = RAM // P
GFN = 0x200                        # a trackable page (2 MiB), nothing of the boot there
FIRST = L.RESERVED_END // P        # the first page that is the guest's own
GPA = GFN * P
TRAP = 0xE0000000                  # in the 32-bit hole, below the OpRegion
MSI = 0xFEE00000
OPREGION = A.OPREGION_SIGNATURE + b"paravm unit test opregion\0"
INVALID = A.INTEL_GVT_INVALID_ADDR


# ------------------------------------------------------------------------------ fakes

class Vgpu:
    """The device model's instance: knows its domain (to look at memory)."""

    def __init__(self, dom):
        self.dom = dom


class RecType:
    """A device type that records every callback.  Reads answer with bytes
    of 0x8877665544332211; ``track_ret`` is what write_protect_handler
    returns; ``fail`` names a callback that raises."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.track_ret = 0
        self.fail: str | None = None
        self.on_release = None

    def emulate_mmio_read(self, vgpu, gpa, data):
        if self.fail == "read":
            raise RuntimeError("read boom")
        data[:] = (0x8877665544332211).to_bytes(8, "little")[:len(data)]
        self.calls.append(("read", vgpu, gpa, len(data)))

    def emulate_mmio_write(self, vgpu, gpa, data):
        if self.fail == "write":
            raise RuntimeError("write boom")
        self.calls.append(("write", vgpu, gpa, bytes(data)))

    def write_protect_handler(self, vgpu, gpa, data):
        # What guest memory holds while the handler runs (GVT re-reads it).
        seen = vgpu.dom.memory.read(gpa, len(data))
        self.calls.append(("track", vgpu, gpa, bytes(data), seen))
        if self.fail == "track":
            raise KeyError("track boom")
        return self.track_ret

    def release(self, vgpu):
        self.calls.append(("release", vgpu))
        if self.on_release is not None:
            self.on_release(vgpu)

    def tracks(self):
        return [c[1:] for c in self.calls if c[0] == "track"]


class World:
    def __init__(self, machine):
        self.machine = machine
        self.mpt = MptService(machine)
        self.doms = []

    def domain(self, name="d", nr_vcpus=1):
        dom = make_domain(self.machine, name, RAM, nr_vcpus)
        self.doms.append(dom)
        return dom

    def attach(self, dom, type_name="rec", ops=None):
        """(ops, vgpu, handle) of a new instance of *type_name* (registered if new)."""
        ops = ops or RecType()
        ret = self.mpt.host_init(type_name, ops)
        if ret == -A.EEXIST:
            ops = self.mpt._types[type_name]
        vgpu = Vgpu(dom)
        ret, h = self.mpt.attach_vgpu(type_name, vgpu, dom)
        assert ret == 0 and h >= A.HANDLE_MIN
        return ops, vgpu, h

    def close(self):
        self.mpt.close()
        for d in self.doms:
            destroy(d)


@pytest.fixture
def world(machine):
    w = World(machine)
    yield w
    w.close()


@pytest.fixture
def one(world):
    """A domain with one instance of "rec": (world, dom, ops, vgpu, handle, guest)."""
    dom = world.domain()
    ops, vgpu, h = world.attach(dom)
    return world, dom, ops, vgpu, h, Guest(dom, world.machine)


def initial_slots():
    return [(0, L.RESERVED_END, False), (L.RESERVED_END, RAM - L.RESERVED_END, False)]


def slots(dom):
    """The domain's memslots as (gpa, size, readonly)."""
    return [(g, s, ro) for g, s, _, ro in dom.vm.table()]


# ------------------------------------------------------------------------------ host_init / host_exit

def test_host_init_registers_a_type_name_once(world):
    assert world.mpt.host_init("rec", RecType()) == 0
    assert world.mpt.host_init("rec", RecType()) == -A.EEXIST
    assert world.mpt.host_init("other", RecType()) == 0


class _NoTrack:
    def emulate_mmio_read(self, vgpu, gpa, data): ...
    def emulate_mmio_write(self, vgpu, gpa, data): ...


class _NotCallable(_NoTrack):
    write_protect_handler = 3


@pytest.mark.parametrize("name, ops", [("", RecType()), (None, RecType()), ("t", _NoTrack()),
                                       ("t", _NotCallable()), ("t", object())])
def test_host_init_refuses_no_name_or_ops_without_the_callbacks(world, name, ops):
    assert world.mpt.host_init(name, ops) == -A.EINVAL
    assert world.mpt.host_init("t", RecType()) == 0       # nothing was registered


def test_host_exit_unknown_busy_then_gone(world):
    mpt = world.mpt
    assert mpt.host_exit("rec") == -A.ENODEV
    _, _, h = world.attach(world.domain())
    assert mpt.host_exit("rec") == -A.EBUSY
    assert mpt.detach_vgpu(h) == 0
    assert mpt.host_exit("rec") == 0
    assert mpt.host_exit("rec") == -A.ENODEV
    assert mpt.attach_vgpu("rec", Vgpu(None), world.doms[0]) == (-A.ENODEV, 0)


# ------------------------------------------------------------------------------ attach / detach

def test_attach_unknown_type_is_enodev(world):
    assert world.mpt.attach_vgpu("nope", object(), world.domain()) == (-A.ENODEV, 0)


def test_one_instance_per_domain_and_type(world):
    a, b = world.domain("a"), world.domain("b")
    _, va, ha = world.attach(a, "rec")
    assert world.mpt.attach_vgpu("rec", Vgpu(a), a) == (-A.EEXIST, 0)
    _, vb, hb = world.attach(b, "rec")                    # the same type elsewhere
    _, vo, ho = world.attach(a, "other")                  # another type, same domain
    assert len({ha, hb, ho}) == 3
    assert [world.mpt.instance(h) for h in (ha, hb, ho)] == [va, vb, vo]


def test_attach_to_a_stopped_domain_is_esrch(world):
    dom = world.domain()
    world.mpt.host_init("rec", RecType())
    dom.stop("test")
    assert dom.stopped
    assert world.mpt.attach_vgpu("rec", Vgpu(dom), dom) == (-A.ESRCH, 0)


def test_detach_unknown_busy_with_a_vfio_reference_then_done(one):
    world, dom, _, vgpu, h, _ = one
    mpt = world.mpt
    assert mpt.detach_vgpu(0x7777777) == -A.ESRCH
    assert mpt.get_vfio_device(h) == 0 and mpt.get_vfio_device(h) == 0
    assert mpt.detach_vgpu(h) == -A.EBUSY
    mpt.put_vfio_device(h)
    assert mpt.detach_vgpu(h) == -A.EBUSY                # one reference left
    mpt.put_vfio_device(h)
    mpt.put_vfio_device(h)                               # none held: ignored
    mpt.put_vfio_device(0x7777777)
    assert mpt.instance(h) is vgpu
    assert mpt.detach_vgpu(h) == 0
    assert mpt.instance(h) is None
    assert mpt.detach_vgpu(h) == -A.ESRCH
    # The domain may have an instance of that type again, with a new handle.
    _, _, h2 = world.attach(dom)
    assert h2 != h


def test_get_vfio_device_of_an_unknown_handle_is_enodev(world):
    assert world.mpt.get_vfio_device(0x100) == -A.ENODEV


def test_on_domain_callbacks_run_at_attach_for_their_domain_only(world):
    seen = []
    world.mpt.on_domain("a", seen.append)
    a, b = world.domain("a"), world.domain("b")
    world.mpt.attach(b)
    world.mpt.attach(a)
    assert seen == [a]


# ------------------------------------------------------------------------------ unknown handles

def _detached(world):
    _, _, h = world.attach(world.domain("gone"))
    assert world.mpt.detach_vgpu(h) == 0
    return h


@pytest.mark.parametrize("which", ["zero", "below-min", "never-issued", "detached"])
def test_every_op_on_an_unknown_handle_returns_kvmgts_answer(one, which):
    world, dom, ops, _, _, _ = one
    mpt = world.mpt
    h = _detached(world) if which == "detached" else \
        {"zero": 0, "below-min": 0xFF, "never-issued": 0x123456}[which]
    before, fr = slots(dom), world.machine.alloc(1, "host")
    buf = bytearray(b"\xAA" * 8)
    assert mpt.enable_page_track(h, GFN) == -A.ESRCH
    assert mpt.disable_page_track(h, GFN) == 0
    assert mpt.inject_msi(h, MSI, 0xE2) == -A.ESRCH
    assert mpt.inject_msi_capability(h, 1, MSI, 0xE2) == -A.ESRCH
    assert mpt.read_gpa(h, GPA, buf) == -A.ESRCH and buf == b"\xAA" * 8
    assert mpt.write_gpa(h, GPA, b"x") == -A.ESRCH
    assert mpt.dma_map_guest_page(h, GFN, P) == (-A.EINVAL, 0)
    assert mpt.dma_unmap_guest_page(h, (dom.ram.mfn + GFN) * P) is None
    assert mpt.dma_view(h, (dom.ram.mfn + GFN) * P, 8) is None
    assert mpt.gfn_to_mfn(h, GFN) == INVALID
    assert mpt.is_valid_gfn(h, GFN) is False
    assert mpt.set_trap_area(h, TRAP, TRAP + 0xFFF, True) == -A.EINVAL
    assert mpt.map_gfn_to_mfn(h, NFRAMES + 16, fr.mfn, 1, True) == -A.EINVAL
    assert mpt.set_opregion(h, OPREGION) == -A.EINVAL
    assert mpt.opregion_writes(h) == 0
    assert mpt.get_vfio_device(h) == -A.ENODEV
    assert mpt.detach_vgpu(h) == -A.ESRCH
    assert mpt.instance(h) is None
    # Nothing reached the domain.
    assert slots(dom) == before and len(dom.mmio_bus) == 0
    assert dom.vm.irqfds == {} and ops.calls == []
    assert dom.memory.read(GPA, 1) == b"\0"


# ------------------------------------------------------------------------------ page tracking

def test_tracking_makes_the_page_read_only_and_reads_are_not_trapped(one):
    world, dom, ops, _, h, guest = one
    dom.memory.write(GPA, b"12345678")
    assert world.mpt.enable_page_track(h, GFN) == 0
    assert (GPA, P, True) in slots(dom)
    assert dom.ram_slots.count == 4
    assert guest.read(GPA, 8) == b"12345678"
    assert guest.exits == 0 and ops.calls == []


@pytest.mark.parametrize("width", [1, 2, 4, 8])
def test_a_guest_write_lands_in_memory_before_the_handler_sees_it(one, width):
    world, dom, ops, vgpu, h, guest = one
    assert world.mpt.enable_page_track(h, GFN) == 0
    at = GPA + 0x7F8
    data = bytes(range(0xA1, 0xA1 + width))
    guest.write(at, data)
    assert guest.exits == 1
    assert ops.tracks() == [(vgpu, at, data, data)]       # memory held it already
    assert dom.memory.read(at, width) == data


def test_enable_twice_is_one_tracking_and_one_report_per_write(one):
    world, dom, ops, _, h, guest = one
    assert world.mpt.enable_page_track(h, GFN) == 0
    n = len(dom.vm.calls)
    assert world.mpt.enable_page_track(h, GFN) == 0
    assert len(dom.vm.calls) == n                         # no memslot change
    guest.write_u64(GPA, 7)
    assert len(ops.tracks()) == 1


@pytest.mark.parametrize("gfn", [0, 1, L.RESERVED_END // P - 1, NFRAMES, NFRAMES + 1, 1 << 52,
                                 -1, "512", 512.0])
def test_enable_outside_trackable_ram_is_einval(one, gfn):
    world, dom, _, _, h, _ = one
    assert world.mpt.enable_page_track(h, gfn) == -A.EINVAL
    assert slots(dom) == initial_slots() and len(dom.mmio_bus) == 0


def test_disable_restores_a_read_write_page_and_stops_reports(one):
    world, dom, ops, _, h, guest = one
    assert world.mpt.enable_page_track(h, GFN) == 0
    assert world.mpt.disable_page_track(h, GFN) == 0
    assert slots(dom) == initial_slots() and len(dom.mmio_bus) == 0
    guest.write_u64(GPA, 0x1122)
    assert guest.exits == 0 and ops.calls == []
    assert dom.memory.read_u64(GPA) == 0x1122


def test_disable_of_an_untracked_page_is_0_and_outside_ram_einval(one):
    world, _, _, _, h, _ = one
    assert world.mpt.disable_page_track(h, GFN) == 0
    assert world.mpt.disable_page_track(h, 0) == 0         # RAM, never tracked
    assert world.mpt.disable_page_track(h, NFRAMES) == -A.EINVAL
    assert world.mpt.disable_page_track(h, -1) == -A.EINVAL


def test_enable_is_ebusy_and_changes_nothing_when_a_vcpu_cannot_be_held(one, monkeypatch):
    world, dom, ops, _, h, guest = one
    monkeypatch.setattr(dom.vcpus[0], "hold", lambda timeout=5.0: False)
    assert world.mpt.enable_page_track(h, GFN) == -A.EBUSY
    assert slots(dom) == initial_slots() and len(dom.mmio_bus) == 0
    monkeypatch.undo()
    assert world.mpt.enable_page_track(h, GFN) == 0


def test_disable_is_ebusy_and_keeps_tracking_when_a_vcpu_cannot_be_held(one, monkeypatch):
    world, dom, ops, _, h, guest = one
    assert world.mpt.enable_page_track(h, GFN) == 0
    monkeypatch.setattr(dom.vcpus[0], "hold", lambda timeout=5.0: False)
    assert world.mpt.disable_page_track(h, GFN) == -A.EBUSY
    monkeypatch.undo()
    guest.write_u32(GPA, 5)
    assert len(ops.tracks()) == 1
    assert world.mpt.disable_page_track(h, GFN) == 0
    assert slots(dom) == initial_slots()


def test_enable_is_enomem_and_changes_nothing_when_kvm_refuses_the_memslots(one):
    world, dom, _, _, h, _ = one
    dom.vm.fail_map = 2                                   # the page's own slot
    assert world.mpt.enable_page_track(h, GFN) == -A.ENOMEM
    assert slots(dom) == initial_slots() and len(dom.mmio_bus) == 0
    assert world.mpt.enable_page_track(h, GFN) == 0


def test_disable_is_enomem_and_keeps_tracking_when_kvm_refuses_the_memslots(one):
    world, dom, ops, _, h, guest = one
    assert world.mpt.enable_page_track(h, GFN) == 0
    before = slots(dom)
    dom.vm.fail_map = 1                                   # the merged slot
    assert world.mpt.disable_page_track(h, GFN) == -A.ENOMEM
    assert slots(dom) == before
    guest.write_u32(GPA, 5)
    assert len(ops.tracks()) == 1
    assert world.mpt.disable_page_track(h, GFN) == 0
    assert slots(dom) == initial_slots()


def test_two_types_tracking_one_page_both_hear_and_it_stays_read_only_until_both_stop(world):
    dom = world.domain()
    ra, va, ha = world.attach(dom, "a")
    rb, vb, hb = world.attach(dom, "b")
    guest = Guest(dom, world.machine)
    assert world.mpt.enable_page_track(ha, GFN) == 0
    assert world.mpt.enable_page_track(hb, GFN) == 0
    guest.write_u32(GPA + 8, 0xCAFE)
    data = (0xCAFE).to_bytes(4, "little")
    assert ra.tracks() == [(va, GPA + 8, data, data)] and rb.tracks() == [(vb, GPA + 8, data, data)]
    assert world.mpt.disable_page_track(ha, GFN) == 0
    assert (GPA, P, True) in slots(dom)
    guest.write_u32(GPA + 8, 1)
    assert len(ra.tracks()) == 1 and len(rb.tracks()) == 2
    assert world.mpt.disable_page_track(hb, GFN) == 0
    assert slots(dom) == initial_slots()
    guest.write_u32(GPA + 8, 2)
    assert guest.exits == 2


def test_the_same_gfn_tracked_in_two_domains_reports_to_its_own_domain_only(world):
    a, b = world.domain("a"), world.domain("b")
    ra, va, ha = world.attach(a)
    _, vb, hb = world.attach(b)
    assert world.mpt.enable_page_track(ha, GFN) == 0
    assert world.mpt.enable_page_track(hb, GFN) == 0
    Guest(b, world.machine).write_u64(GPA, 3)
    assert [t[0] for t in ra.tracks()] == [vb]          # one type: one ops object
    Guest(a, world.machine).write_u64(GPA, 4)
    assert [t[0] for t in ra.tracks()] == [vb, va]


def test_a_disable_racing_with_an_exiting_write_is_seen(one):
    world, dom, ops, _, h, _ = one
    assert world.mpt.enable_page_track(h, GFN) == 0
    dev, off = dom.mmio_bus.lookup(GPA + 16, 8)          # the exit found the page...
    assert world.mpt.disable_page_track(h, GFN) == 0     # ...then the untrack ran
    dev.write(off, memoryview(bytearray(b"abcdefgh")))
    assert ops.calls == []
    assert dom.memory.read(GPA + 16, 8) == b"abcdefgh"


def test_a_handler_that_raises_stops_the_guest_naming_the_type(one):
    world, dom, ops, _, h, guest = one
    assert world.mpt.enable_page_track(h, GFN) == 0
    ops.fail = "track"
    with pytest.raises(GuestStop, match=r"^mediated device rec: write_protect_handler at "
                                        r"0x200010 failed: KeyError"):
        guest.write_u64(GPA + 16, 9)
    assert dom.memory.read_u64(GPA + 16) == 9             # the write had landed


def test_negative_handler_results_are_counted(one):
    world, _, ops, _, h, guest = one
    assert world.mpt.enable_page_track(h, GFN) == 0
    for ret in (0, 4, None, -22, -1):
        ops.track_ret = ret
        guest.write_u32(GPA, 1)
    assert world.mpt.track_errors(h) == 2
    assert world.mpt.track_errors(0x7777777) == 0


def test_host_writes_to_a_tracked_page_land_and_are_not_reported(one):
    world, dom, ops, _, h, _ = one
    assert world.mpt.enable_page_track(h, GFN) == 0
    assert world.mpt.write_gpa(h, GPA, b"host") == 0
    assert dom.memory.read(GPA, 4) == b"host" and ops.calls == []


def test_tracking_survives_writes_racing_with_enable_and_disable(one):
    """§E4 case 4: track_write against disable_page_track, from two threads."""
    world, dom, ops, _, h, _ = one
    stop = threading.Event()
    errors = []

    def writer():
        data = memoryview(bytearray(8))
        try:
            while not stop.is_set():
                hit = dom.mmio_bus.lookup(GPA, 8)
                if hit is not None:
                    hit[0].write(hit[1], data)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(100):
            assert world.mpt.enable_page_track(h, GFN) == 0
            assert world.mpt.disable_page_track(h, GFN) == 0
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert slots(dom) == initial_slots() and len(dom.mmio_bus) == 0


# ------------------------------------------------------------------------------ read_gpa / write_gpa

def test_read_and_write_span_ram_and_a_mapped_range(one):
    world, dom, _, _, h, _ = one
    fr = world.machine.alloc(1, "aperture")
    fr.buffer[:4] = b"WXYZ"
    assert world.mpt.map_gfn_to_mfn(h, NFRAMES, fr.mfn, 1, True) == 0
    dom.memory.write(RAM - 4, b"abcd")
    buf = bytearray(8)
    assert world.mpt.read_gpa(h, RAM - 4, buf) == 0 and buf == b"abcdWXYZ"
    assert world.mpt.write_gpa(h, RAM - 2, b"1234") == 0
    assert dom.memory.read(RAM - 4, 4) == b"ab12" and bytes(fr.buffer[:4]) == b"34YZ"


def test_any_hole_is_efault_and_nothing_moves(one):
    world, dom, _, _, h, _ = one
    fr = world.machine.alloc(1, "aperture")
    # A range after a one-page hole above RAM.
    assert world.mpt.map_gfn_to_mfn(h, NFRAMES + 1, fr.mfn, 1, True) == 0
    dom.memory.write(RAM - 4, b"abcd")
    for gpa, n in ((RAM - 4, 8), (RAM - 4, P + 8), (RAM, 4), (1 << 40, 1), (-1, 2),
                   ((1 << 64) - 2, 4)):
        buf = bytearray(b"\xEE" * n)
        assert world.mpt.read_gpa(h, gpa, buf) == -A.EFAULT and buf == b"\xEE" * n
        assert world.mpt.write_gpa(h, gpa, b"\x11" * n) == -A.EFAULT
    assert dom.memory.read(RAM - 4, 4) == b"abcd" and bytes(fr.buffer[:4]) == b"\0" * 4


def test_a_write_reaching_a_read_only_region_is_efault_and_writes_nothing(one):
    world, dom, _, _, h, _ = one
    assert world.mpt.set_opregion(h, OPREGION, gpa=RAM) == 0   # read-only, right after RAM
    dom.memory.write(RAM - 4, b"abcd")
    assert world.mpt.write_gpa(h, RAM - 4, b"12345678") == -A.EFAULT
    assert world.mpt.write_gpa(h, RAM, b"x") == -A.EFAULT
    assert dom.memory.read(RAM - 4, 4) == b"abcd"
    buf = bytearray(8)
    assert world.mpt.read_gpa(h, RAM - 4, buf) == 0 and buf == b"abcd" + OPREGION[:4]


@pytest.mark.parametrize("gpa, n", [(0, 1), (L.PML4, 8), (L.RESERVED_END - 4, 8)])
def test_write_gpa_never_writes_the_reserved_mib(one, gpa, n):
    world, dom, _, _, h, _ = one
    before = dom.memory.read(0, L.RESERVED_END + 8)
    assert world.mpt.write_gpa(h, gpa, b"\xCC" * n) == -A.EFAULT
    assert dom.memory.read(0, L.RESERVED_END + 8) == before
    buf = bytearray(n)
    assert world.mpt.read_gpa(h, gpa, buf) == 0 and buf == before[gpa:gpa + n]


def test_zero_bytes_in_memory_is_0(one):
    world, _, _, _, h, _ = one
    assert world.mpt.read_gpa(h, GPA, bytearray()) == 0
    assert world.mpt.write_gpa(h, GPA, b"") == 0


# ------------------------------------------------------------------------------ DMA

def test_dma_map_is_a_refcounted_cache(one):
    world, dom, _, _, h, _ = one
    mpt = world.mpt
    r1, addr = mpt.dma_map_guest_page(h, GFN, P)
    r2, addr2 = mpt.dma_map_guest_page(h, GFN, P)
    assert (r1, r2) == (0, 0) and addr == addr2 == mpt.gfn_to_mfn(h, GFN) * P
    mpt.dma_unmap_guest_page(h, addr)
    view = mpt.dma_view(h, addr, 8)
    assert view is not None                                # one reference left
    dom.memory.write(GPA, b"guestpg!")
    assert bytes(view) == b"guestpg!"                      # the guest's own page
    view[:3] = b"DMA"
    assert dom.memory.read(GPA, 3) == b"DMA"
    view.release()
    mpt.dma_unmap_guest_page(h, addr)
    assert mpt.dma_view(h, addr, 8) is None
    mpt.dma_unmap_guest_page(h, addr)                      # gone: ignored
    assert mpt.dma_map_guest_page(h, GFN, P) == (0, addr)  # and made again


def test_a_dma_view_dies_with_its_mapping(one):
    world, _, _, _, h, _ = one
    mpt = world.mpt
    _, addr = mpt.dma_map_guest_page(h, GFN, P)
    view = mpt.dma_view(h, addr, 16)
    mpt.dma_unmap_guest_page(h, addr)
    with pytest.raises(ValueError):
        view[0]                                          # no access after the unmap
    _, addr = mpt.dma_map_guest_page(h, GFN, P)
    view = mpt.dma_view(h, addr, 16)
    assert mpt.dma_map_guest_page(h, GFN, 2 * P)[0] == 0   # a remap with another size
    with pytest.raises(ValueError):
        view[0]
    view = mpt.dma_view(h, addr, 16)
    assert mpt.detach_vgpu(h) == 0
    with pytest.raises(ValueError):
        view[0]


def test_dma_map_of_another_size_drops_the_entry_whatever_its_references(one):
    world, _, _, _, h, _ = one
    mpt = world.mpt
    _, addr = mpt.dma_map_guest_page(h, GFN, P)
    mpt.dma_map_guest_page(h, GFN, P)                      # two references
    assert mpt.dma_view(h, addr + P, 4) is None
    r, addr2 = mpt.dma_map_guest_page(h, GFN, 2 * P)
    assert r == 0 and addr2 == addr
    assert mpt.dma_view(h, addr + P, 4) is not None        # the new, larger mapping
    mpt.dma_unmap_guest_page(h, addr)                      # its only reference
    assert mpt.dma_view(h, addr, 4) is None


def test_dma_unmap_of_an_unknown_address_or_another_instances_is_ignored(world):
    dom = world.domain()
    _, _, ha = world.attach(dom, "a")
    _, _, hb = world.attach(dom, "b")
    _, addr = world.mpt.dma_map_guest_page(ha, GFN, P)
    world.mpt.dma_unmap_guest_page(ha, addr + 8)
    world.mpt.dma_unmap_guest_page(ha, 0)
    world.mpt.dma_unmap_guest_page(hb, addr)
    assert world.mpt.dma_view(ha, addr, 1) is not None
    assert world.mpt.dma_view(hb, addr, 1) is None         # the cache is per instance


@pytest.mark.parametrize("gfn, size", [(NFRAMES, P), (NFRAMES - 1, 2 * P), (-1, P),
                                       (1 << 52, P), ("1", P), (0, P), (FIRST - 1, 2 * P)])
def test_dma_map_of_anything_but_the_guests_own_ram_is_efault(one, gfn, size):
    world, _, _, _, h, _ = one
    assert world.mpt.dma_map_guest_page(h, gfn, size) == (-A.EFAULT, 0)


@pytest.mark.parametrize("size", [0, 100, P + 1, -P, float(P), None])
def test_dma_map_of_a_bad_size_is_einval(one, size):
    world, _, _, _, h, _ = one
    assert world.mpt.dma_map_guest_page(h, GFN, size) == (-A.EINVAL, 0)


def test_dma_view_reaches_only_inside_live_mappings(one):
    world, _, _, _, h, _ = one
    mpt = world.mpt
    _, a = mpt.dma_map_guest_page(h, GFN, P)
    _, b = mpt.dma_map_guest_page(h, GFN + 4, 2 * P)
    assert len(mpt.dma_view(h, a, P)) == P
    assert len(mpt.dma_view(h, a + P - 1, 1)) == 1
    assert mpt.dma_view(h, a, P + 1) is None               # runs past the page
    assert mpt.dma_view(h, a + P - 4, 8) is None
    assert mpt.dma_view(h, a + P, 1) is None               # the next page is not mapped
    assert mpt.dma_view(h, a - 1, 1) is None
    assert mpt.dma_view(h, a, -1) is None
    assert mpt.dma_view(h, a, "8") is None
    assert len(mpt.dma_view(h, b + P + 10, P - 10)) == P - 10   # inside the 2-page one
    assert mpt.dma_view(h, b + P + 10, P) is None


# ------------------------------------------------------------------------------ addresses

def test_gfn_to_mfn_and_is_valid_gfn(one):
    world, dom, _, _, h, _ = one
    mpt = world.mpt
    fr = world.machine.alloc(4, "aperture")
    assert mpt.map_gfn_to_mfn(h, NFRAMES + 16, fr.mfn + 1, 2, True) == 0
    assert mpt.set_opregion(h, OPREGION) == 0
    ram = dom.ram
    assert mpt.gfn_to_mfn(h, 0) == ram.mfn and mpt.gfn_to_mfn(h, GFN) == ram.mfn + GFN
    assert mpt.gfn_to_mfn(h, NFRAMES - 1) == ram.mfn + NFRAMES - 1
    assert mpt.gfn_to_mfn(h, NFRAMES + 16) == fr.mfn + 1
    assert mpt.gfn_to_mfn(h, NFRAMES + 17) == fr.mfn + 2
    for gfn in (NFRAMES, NFRAMES + 15, NFRAMES + 18, L.MPT_OPREGION_GPA // P, -1, 1 << 52,
                None):
        assert mpt.gfn_to_mfn(h, gfn) == INVALID, gfn
    for gfn in (FIRST, GFN, NFRAMES - 1):
        assert mpt.is_valid_gfn(h, gfn) is True
    # Not RAM, or the VMM's page tables, GDT, IDT and stub stacks (§E4 case 7).
    for gfn in (0, L.PML4 // P, FIRST - 1, NFRAMES, NFRAMES + 16, L.MPT_OPREGION_GPA // P, -1,
                "1", 1 << 52):
        assert mpt.is_valid_gfn(h, gfn) is False, gfn


def test_virt_to_mfn_of_vmm_addresses(one):
    world, dom, _, _, _, _ = one
    mpt = world.mpt
    fr = world.machine.alloc(3, "host")
    assert mpt.virt_to_mfn(dom.ram.hva + 5 * P + 17) == dom.ram.mfn + 5
    assert mpt.virt_to_mfn(fr.hva + 2 * P + P - 1) == fr.mfn + 2
    hva = fr.hva
    world.machine.free(fr)
    for addr in (hva, 0, -1, "x", None):
        assert mpt.virt_to_mfn(addr) == INVALID, addr


# ------------------------------------------------------------------------------ MSI

def test_inject_msi_makes_one_irqfd_per_destination_and_vector_and_fires_it(world):
    dom = world.domain(nr_vcpus=2)
    _, _, h = world.attach(dom)
    mpt = world.mpt
    assert mpt.inject_msi(h, MSI, 0xE2) == 0
    assert mpt.inject_msi(h, MSI, 0xE2) == 0
    assert [v[:2] for v in dom.vm.irqfds.values()] == [(MSI, 0xE2)]
    (irq,) = mpt._instances[h].irqfds.values()
    assert fires(irq) == 2
    assert mpt.inject_msi(h, MSI | 1 << 12, 0xE2) == 0
    assert mpt.inject_msi(h, MSI, 0x30) == 0
    assert sorted(v[:2] for v in dom.vm.irqfds.values()) == \
        [(MSI, 0x30), (MSI, 0xE2), (MSI | 1 << 12, 0xE2)]
    assert fires(irq) == 0


@pytest.mark.parametrize("addr, data", [
    (0xFED00000, 0xE2),            # not the local APIC
    (0, 0xE2),
    (MSI | 2 << 12, 0xE2),         # no vCPU 2
    (MSI, 0x1F),                   # vectors below 0x20 are exceptions
    (MSI, 0xFF),
    (MSI, 0x10000),                # data is 16 bits
    (MSI, -1),
    ("0xfee00000", 0xE2),
    (MSI, None),
])
def test_inject_msi_to_no_vcpu_or_a_bad_vector_is_einval(one, addr, data):
    world, dom, _, _, h, _ = one
    assert world.mpt.inject_msi(h, addr, data) == -A.EINVAL
    assert dom.vm.irqfds == {}


@pytest.mark.parametrize("addr", [MSI | 1 << 32, -(1 << 32) + MSI])
def test_an_msi_address_that_is_not_a_u32_is_einval(one, addr):
    world, dom, _, _, h, _ = one
    assert world.mpt.inject_msi(h, addr, 0xE2) == -A.EINVAL
    assert dom.vm.irqfds == {}


def test_an_irqfd_the_kernel_refuses_is_efault(one):
    world, dom, _, _, h, _ = one
    dom.vm.fail_irqfd = True
    assert world.mpt.inject_msi(h, MSI, 0xE2) == -A.EFAULT
    dom.vm.fail_irqfd = False
    assert world.mpt.inject_msi(h, MSI, 0xE2) == 0


def test_msi_capability_disabled_injects_nothing(one):
    world, dom, _, _, h, _ = one
    assert world.mpt.inject_msi_capability(h, 0, MSI, 0xE2) == 0
    assert world.mpt.inject_msi_capability(h, 0, 0, 0) == 0      # not looked at
    assert dom.vm.irqfds == {}


@pytest.mark.parametrize("bit", range(1, 16))
def test_msi_capability_with_control_bits_1_to_15_is_einval(one, bit):
    world, dom, _, _, h, _ = one
    assert world.mpt.inject_msi_capability(h, 1 | 1 << bit, MSI, 0xE2) == -A.EINVAL
    assert dom.vm.irqfds == {}


def test_msi_capability_enabled_injects_its_address_and_data(one):
    world, dom, _, _, h, _ = one
    assert world.mpt.inject_msi_capability(h, 1, MSI, 0xE2) == 0
    (irq,) = world.mpt._instances[h].irqfds.values()
    assert fires(irq) == 1 and [v[:2] for v in dom.vm.irqfds.values()] == [(MSI, 0xE2)]


# ------------------------------------------------------------------------------ trap areas

def test_a_trap_area_routes_absolute_gpas_to_the_type(one):
    world, dom, ops, vgpu, h, guest = one
    assert world.mpt.set_trap_area(h, TRAP, TRAP + 0xFFF, True) == 0
    assert guest.read(TRAP + 0x10, 4) == bytes.fromhex("11223344")
    guest.write(TRAP + 0xFF8, b"12345678")
    guest.write(TRAP, b"\x01")
    assert ops.calls == [("read", vgpu, TRAP + 0x10, 4), ("write", vgpu, TRAP + 0xFF8, b"12345678"),
                         ("write", vgpu, TRAP, b"\x01")]
    # The end is inclusive: the next byte is free for another area.
    assert world.mpt.set_trap_area(h, TRAP + 0x1000, TRAP + 0x1000, True) == 0
    guest.write(TRAP + 0x1000, b"\x02")
    assert ops.calls[-1] == ("write", vgpu, TRAP + 0x1000, b"\x02")
    with pytest.raises(GuestStop, match="unknown MMIO address"):
        guest.write(TRAP + 0x1001, b"\x03")


def test_removing_a_trap_area_and_part_of_one(one):
    world, dom, ops, vgpu, h, guest = one
    mpt = world.mpt
    assert mpt.set_trap_area(h, TRAP, TRAP + 0x2FFF, True) == 0
    assert mpt.set_trap_area(h, TRAP + 0x1000, TRAP + 0x1FFF, False) == 0
    with pytest.raises(GuestStop, match="unknown MMIO address 0xe0001000"):
        guest.read(TRAP + 0x1000, 4)
    guest.write_u32(TRAP + 0xFFC, 1)
    guest.write_u32(TRAP + 0x2000, 2)
    assert [c[2] for c in ops.calls] == [TRAP + 0xFFC, TRAP + 0x2000]   # still absolute
    # The whole first range is no longer trapped; its pieces are.
    assert mpt.set_trap_area(h, TRAP, TRAP + 0x2FFF, False) == -A.ENOENT
    assert mpt.set_trap_area(h, TRAP + 0x2000, TRAP + 0x2FFF, False) == 0
    assert mpt.set_trap_area(h, TRAP, TRAP + 0xFFF, False) == 0
    assert len(dom.mmio_bus) == 0
    assert mpt.set_trap_area(h, TRAP, TRAP + 0xFFF, False) == -A.ENOENT


def test_trap_areas_may_not_overlap_areas_memory_or_devices(world):
    dom = world.domain()
    _, _, h = world.attach(dom, "a")
    _, _, other = world.attach(dom, "b")
    mpt = world.mpt
    fr = world.machine.alloc(1, "aperture")
    assert mpt.set_trap_area(h, TRAP, TRAP + 0xFFF, True) == 0
    assert mpt.map_gfn_to_mfn(h, NFRAMES + 16, fr.mfn, 1, True) == 0
    assert mpt.set_opregion(h, OPREGION) == 0
    for start, end in ((TRAP + 0xFFF, TRAP + 0x1FFF), (TRAP - 1, TRAP), (GPA, GPA + 0xFFF),
                       (0, 0), (RAM - 1, RAM), ((NFRAMES + 16) * P + 8, (NFRAMES + 17) * P),
                       (L.MPT_OPREGION_GPA + 0x1FFF, L.MPT_OPREGION_GPA + 0x2000)):
        assert mpt.set_trap_area(h, start, end, True) == -A.EEXIST, hex(start)
        assert mpt.set_trap_area(other, start, end, True) == -A.EEXIST, hex(start)
    # Another instance cannot release an area it does not own.
    assert mpt.set_trap_area(other, TRAP, TRAP + 0xFFF, False) == -A.ENOENT


@pytest.mark.parametrize("start, end", [(TRAP + 1, TRAP), (-1, 10), (TRAP, 1 << 64),
                                        ("1", 2), (TRAP, None)])
def test_a_bad_trap_range_is_einval(one, start, end):
    world, dom, _, _, h, _ = one
    for mapping in (True, False):
        assert world.mpt.set_trap_area(h, start, end, mapping) == -A.EINVAL
    assert len(dom.mmio_bus) == 0


def test_a_trap_area_may_end_at_the_top_of_the_address_space(one):
    world, dom, ops, vgpu, h, guest = one
    top = (1 << 64) - 1
    assert world.mpt.set_trap_area(h, top - 7, top, True) == 0
    guest.write(top - 7, b"8bytes!!")
    assert ops.calls == [("write", vgpu, top - 7, b"8bytes!!")]


def test_an_emulation_callback_that_raises_stops_the_guest_naming_the_type(one):
    world, _, ops, _, h, guest = one
    assert world.mpt.set_trap_area(h, TRAP, TRAP + 0xFFF, True) == 0
    ops.fail = "write"
    with pytest.raises(GuestStop, match=r"^mediated device rec: emulate_mmio_write at "
                                        r"0xe0000004 failed: RuntimeError: write boom"):
        guest.write_u32(TRAP + 4, 1)
    ops.fail = "read"
    with pytest.raises(GuestStop, match="emulate_mmio_read"):
        guest.read(TRAP, 4)


# ------------------------------------------------------------------------------ map_gfn_to_mfn

def test_map_gfn_to_mfn_shows_host_frames_to_the_guest_until_unmapped(one):
    world, dom, _, _, h, guest = one
    mpt = world.mpt
    fr = world.machine.alloc(4, "aperture")
    for i in range(4):
        fr.buffer[i * P] = 0xA0 + i
    gfn = NFRAMES + 16
    assert mpt.map_gfn_to_mfn(h, gfn, fr.mfn + 1, 2, True) == 0   # frames 1 and 2
    assert (gfn * P, 2 * P, False) in slots(dom)
    assert guest.read(gfn * P, 1) == b"\xA1" and guest.read((gfn + 1) * P, 1) == b"\xA2"
    guest.write(gfn * P + 1, b"\x55")
    assert fr.buffer[P + 1] == 0x55 and guest.exits == 0
    assert mpt.map_gfn_to_mfn(h, gfn, fr.mfn + 1, 1, False) == -A.EINVAL   # not what was mapped
    assert mpt.map_gfn_to_mfn(h, gfn + 1, fr.mfn + 2, 1, False) == -A.EINVAL
    assert mpt.map_gfn_to_mfn(h, gfn, 0, 2, False) == 0
    assert slots(dom) == initial_slots()
    assert not dom.memory.contains(gfn * P, 1)
    assert mpt.map_gfn_to_mfn(h, gfn, 0, 2, False) == -A.EINVAL


def test_map_gfn_to_mfn_refuses_bad_frames_and_places(one):
    world, dom, _, _, h, _ = one
    mpt = world.mpt
    fr = world.machine.alloc(4, "aperture")
    gone = world.machine.alloc(1, "gone")
    gone_mfn = gone.mfn
    world.machine.free(gone)
    hole_top = (L.LAPIC_BASE - (32 << 20)) // P
    g = NFRAMES + 16
    for gfn, mfn, nr in ((g, 0, 1), (g, gone_mfn, 1), (g, fr.mfn + 3, 2), (g, fr.mfn + 4, 1),
                         (g, -1, 1), (g, fr.mfn, 0), (g, fr.mfn, -1), (GFN, fr.mfn, 1),
                         (NFRAMES - 1, fr.mfn, 2), (hole_top - 1, fr.mfn, 2), (-1, fr.mfn, 1),
                         ("1", fr.mfn, 1)):
        assert mpt.map_gfn_to_mfn(h, gfn, mfn, nr, True) == -A.EINVAL, (gfn, mfn, nr)
    assert mpt.map_gfn_to_mfn(h, hole_top - 1, fr.mfn, 1, True) == 0   # the last page
    assert slots(dom)[-1] == ((hole_top - 1) * P, P, False)


def test_map_gfn_to_mfn_over_an_area_or_a_mapping_is_eexist(one):
    world, dom, _, _, h, _ = one
    mpt = world.mpt
    fr = world.machine.alloc(4, "aperture")
    assert mpt.set_trap_area(h, TRAP, TRAP + 0xFFF, True) == 0
    assert mpt.map_gfn_to_mfn(h, TRAP // P, fr.mfn, 1, True) == -A.EEXIST
    assert mpt.map_gfn_to_mfn(h, NFRAMES + 16, fr.mfn, 2, True) == 0
    assert mpt.map_gfn_to_mfn(h, NFRAMES + 17, fr.mfn + 2, 2, True) == -A.EEXIST


def test_map_gfn_to_mfn_refused_by_kvm_is_enomem_and_leaves_nothing(one):
    world, dom, _, _, h, _ = one
    fr = world.machine.alloc(1, "aperture")
    dom.vm.fail_map = 1
    assert world.mpt.map_gfn_to_mfn(h, NFRAMES + 16, fr.mfn, 1, True) == -A.ENOMEM
    assert not dom.memory.contains((NFRAMES + 16) * P, 1)
    assert world.mpt.gfn_to_mfn(h, NFRAMES + 16) == INVALID
    assert world.mpt.map_gfn_to_mfn(h, NFRAMES + 16, fr.mfn, 1, True) == 0


# ------------------------------------------------------------------------------ OpRegion

def test_opregion_is_read_only_padded_and_guest_writes_are_dropped(one):
    world, dom, _, _, h, guest = one
    mpt = world.mpt
    ranges = world.machine.live_ranges
    assert mpt.set_opregion(h, OPREGION) == 0
    assert world.machine.live_ranges == ranges + 1
    base = L.MPT_OPREGION_GPA
    assert (base, A.OPREGION_SIZE, True) in slots(dom)
    assert dom.memory.read(base, A.OPREGION_SIZE) == \
        OPREGION + bytes(A.OPREGION_SIZE - len(OPREGION))
    assert guest.read(base, 8) == OPREGION[:8] and guest.exits == 0
    guest.write(base, b"EVILEVIL")
    guest.write_u32(base + A.OPREGION_SIZE - 4, 1)
    assert guest.exits == 2 and mpt.opregion_writes(h) == 2
    assert dom.memory.read(base, 8) == OPREGION[:8]
    assert dom.memory.read_u32(base + A.OPREGION_SIZE - 4) == 0
    assert mpt.write_gpa(h, base, b"x") == -A.EFAULT


def test_a_second_opregion_replaces_the_first(one):
    world, dom, _, _, h, guest = one
    mpt = world.mpt
    assert mpt.set_opregion(h, OPREGION) == 0
    ranges = world.machine.live_ranges
    full = A.OPREGION_SIGNATURE + b"\x5A" * (A.OPREGION_SIZE - 16)
    assert mpt.set_opregion(h, full) == 0                 # exactly 8 KiB
    assert world.machine.live_ranges == ranges
    assert dom.memory.read(L.MPT_OPREGION_GPA, A.OPREGION_SIZE) == full
    assert mpt.set_opregion(h, OPREGION) == 0             # shorter again: zero-padded
    assert dom.memory.read(L.MPT_OPREGION_GPA, A.OPREGION_SIZE) == \
        OPREGION + bytes(A.OPREGION_SIZE - len(OPREGION))
    assert [s for s in slots(dom) if s[2]] == [(L.MPT_OPREGION_GPA, A.OPREGION_SIZE, True)]
    guest.write(L.MPT_OPREGION_GPA, b"x")
    assert mpt.opregion_writes(h) == 1


def test_a_second_opregion_elsewhere_moves_it(one):
    world, dom, _, _, h, guest = one
    mpt = world.mpt
    assert mpt.set_opregion(h, OPREGION) == 0
    ranges = world.machine.live_ranges
    assert mpt.set_opregion(h, OPREGION, gpa=RAM) == 0
    assert world.machine.live_ranges == ranges            # the old frames went
    assert [s for s in slots(dom) if s[2]] == [(RAM, A.OPREGION_SIZE, True)]
    assert not dom.memory.contains(L.MPT_OPREGION_GPA, 1)
    assert dom.mmio_bus.lookup(L.MPT_OPREGION_GPA, 1) is None
    with pytest.raises(GuestStop, match="unknown MMIO address"):
        guest.write(L.MPT_OPREGION_GPA, b"x")
    guest.write(RAM, b"x")
    assert mpt.opregion_writes(h) == 1


def test_a_second_opregion_that_fails_keeps_the_first(one):
    world, dom, _, _, h, guest = one
    mpt = world.mpt
    assert mpt.set_opregion(h, OPREGION) == 0
    ranges, before = world.machine.live_ranges, slots(dom)
    assert mpt.set_opregion(h, OPREGION, gpa=GPA) == -A.EINVAL       # in RAM
    assert mpt.set_opregion(h, b"x" * 16) == -A.EINVAL
    assert world.machine.live_ranges == ranges and slots(dom) == before
    assert guest.read(L.MPT_OPREGION_GPA, 16) == A.OPREGION_SIGNATURE


@pytest.mark.parametrize("data, err", [
    (None, -A.ENOMEM),
    (b"IntelGraphicsMe", -A.EINVAL),
    (b"intelGraphicsMem" + bytes(16), -A.EINVAL),
    (b"", -A.EINVAL),
    (A.OPREGION_SIGNATURE + bytes(A.OPREGION_SIZE - 15), -A.EINVAL),   # 8 KiB + 1
])
def test_a_bad_opregion_is_refused_and_maps_nothing(one, data, err):
    world, dom, _, _, h, _ = one
    ranges = world.machine.live_ranges
    assert world.mpt.set_opregion(h, data) == err
    assert world.machine.live_ranges == ranges and slots(dom) == initial_slots()
    assert len(dom.mmio_bus) == 0


@pytest.mark.parametrize("gpa", [GPA, RAM - P, TRAP, L.MPT_OPREGION_GPA + 1])
def test_an_opregion_at_a_taken_or_bad_gpa_is_einval_and_frees_its_frames(one, gpa):
    world, dom, _, _, h, _ = one
    assert world.mpt.set_trap_area(h, TRAP, TRAP + 0xFFF, True) == 0
    ranges, before = world.machine.live_ranges, slots(dom)
    assert world.mpt.set_opregion(h, OPREGION, gpa=gpa) == -A.EINVAL
    assert world.machine.live_ranges == ranges and slots(dom) == before
    assert len(dom.mmio_bus) == 1


# ------------------------------------------------------------------------------ domain_stopped

def _everything(world, dom, type_name):
    """An instance using every kind of state the MPT keeps."""
    ops, vgpu, h = world.attach(dom, type_name)
    mpt = world.mpt
    fr = world.machine.alloc(2, f"{type_name}.aperture")
    base = {"a": 0, "b": 0x10}[type_name]
    assert mpt.enable_page_track(h, GFN) == 0
    assert mpt.enable_page_track(h, GFN + 2 + base) == 0
    assert mpt.set_trap_area(h, TRAP + base * P, TRAP + base * P + 0xFFF, True) == 0
    assert mpt.map_gfn_to_mfn(h, NFRAMES + 16 + base, fr.mfn, 2, True) == 0
    assert mpt.dma_map_guest_page(h, GFN + 1, P)[0] == 0
    assert mpt.inject_msi(h, MSI, 0xE2) == 0
    return ops, vgpu, h, fr


def test_domain_stopped_releases_each_instance_then_drops_everything(world):
    dom, other = world.domain("d"), world.domain("other")
    mpt = world.mpt
    _, _, ho = world.attach(other, "a")
    assert mpt.enable_page_track(ho, GFN) == 0
    ranges = world.machine.live_ranges
    ra, va, ha, _ = _everything(world, dom, "a")
    rb, vb, hb, _ = _everything(world, dom, "b")
    assert mpt.set_opregion(ha, OPREGION) == 0
    irqs = list(mpt._instances[ha].irqfds.values()) + list(mpt._instances[hb].irqfds.values())
    seen = []
    # release runs while the instance is still bound (kvmgt: vgpu_release first).
    ra.on_release = rb.on_release = lambda v: seen.append(
        (v, mpt.read_gpa(ha, GPA, bytearray(1)), mpt.read_gpa(hb, GPA, bytearray(1))))
    dom.stop("test")
    mpt.domain_stopped(dom)
    assert seen == [(va, 0, 0), (vb, -A.ESRCH, 0)]
    assert [c for c in rb.calls if c[0] == "release"] == [("release", vb)]
    assert mpt.instance(ha) is None and mpt.instance(hb) is None
    # The slots merged back, areas, mappings and the OpRegion are gone.
    assert slots(dom) == initial_slots() and len(dom.mmio_bus) == 0
    assert [r.gpa for r in dom.memory.regions] == [0]
    assert world.machine.live_ranges == ranges + 2         # only the test's own apertures
    assert all(irq.fd == -1 for irq in irqs) and len(dom.vm.irqfd_removed) == 2
    assert mpt.host_exit("b") == 0
    # The other domain's instance is untouched.
    assert mpt.instance(ho) is not None and (GPA, P, True) in slots(other)
    Guest(other, world.machine).write_u32(GPA, 1)
    assert len(ra.tracks()) == 1


def test_domain_stopped_after_destroy_frees_the_frames_without_touching_the_domain(world):
    dom = world.domain()
    _, _, h = world.attach(dom)
    ranges = world.machine.live_ranges
    assert world.mpt.set_opregion(h, OPREGION) == 0
    assert world.mpt.enable_page_track(h, GFN) == 0
    dom.destroy()
    world.mpt.domain_stopped(dom)
    assert world.mpt.instance(h) is None
    assert world.machine.live_ranges == ranges - 1          # the RAM went with the domain


def test_a_release_that_raises_is_reported_and_every_instance_still_goes(world):
    dom = world.domain()
    ra, _, ha = world.attach(dom, "a")
    rb, vb, hb = world.attach(dom, "b")
    assert world.mpt.enable_page_track(ha, GFN) == 0
    assert world.mpt.enable_page_track(hb, GFN + 1) == 0
    ra.on_release = lambda v: 1 / 0
    world.mpt.domain_stopped(dom)
    assert ("release", vb) in rb.calls
    assert world.mpt.instance(ha) is None and world.mpt.instance(hb) is None
    assert slots(dom) == initial_slots()
    assert "[paravm] mpt: a: release failed: ZeroDivisionError" in dom.console.text


def test_a_failing_release_step_is_reported_and_the_others_still_run(one):
    world, dom, _, _, h, _ = one
    fr = world.machine.alloc(1, "aperture")
    assert world.mpt.map_gfn_to_mfn(h, NFRAMES + 16, fr.mfn, 1, True) == 0
    assert world.mpt.set_trap_area(h, TRAP, TRAP + 0xFFF, True) == 0
    assert world.mpt.inject_msi(h, MSI, 0xE2) == 0
    dom.vm.fail_unmap = 1                                 # the mapping's memslot
    assert world.mpt.detach_vgpu(h) == 0
    assert world.mpt.instance(h) is None
    assert len(dom.mmio_bus) == 0 and len(dom.vm.irqfd_removed) == 1
    assert "[paravm] mpt: rec: releasing the instance: OSError" in dom.console.text


def test_a_page_whose_release_failed_turns_read_write_with_its_next_last_tracker(one):
    world, dom, _, _, h, guest = one
    assert world.mpt.enable_page_track(h, GFN) == 0
    dom.vm.fail_unmap = 1                                 # the merge at detach fails
    assert world.mpt.detach_vgpu(h) == 0
    assert (GPA, P, True) in slots(dom)                   # left read-only, reported
    ops, vgpu, h2 = world.attach(dom)
    assert world.mpt.enable_page_track(h2, GFN) == 0
    guest.write_u32(GPA, 1)
    assert [t[0] for t in ops.tracks()] == [vgpu]
    assert world.mpt.disable_page_track(h2, GFN) == 0
    assert slots(dom) == initial_slots() and len(dom.mmio_bus) == 0


def test_close_drops_every_instance(world):
    dom = world.domain()
    _, _, h = world.attach(dom)
    assert world.mpt.enable_page_track(h, GFN) == 0
    assert world.mpt.set_trap_area(h, TRAP, TRAP + 0xFFF, True) == 0
    world.mpt.close()
    assert world.mpt.instance(h) is None
    assert slots(dom) == initial_slots() and len(dom.mmio_bus) == 0
