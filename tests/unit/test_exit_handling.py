"""Exit dispatch and the vCPU run loop, driven by a fake VcpuBackend that
returns fabricated exits (as Firecracker's vCPU tests do).  The domain is a
real :class:`paravm.vm.domain.Domain` (real guest memory, buses, hypercall
table, console) over a fake VmBackend: no KVM."""

from __future__ import annotations

import struct
import threading
from array import array

import pytest

from paravm.arch.x86 import layout as L
from paravm.hypercall import abi as hc
from paravm.hypercall.table import HypercallError
from paravm.loader import Image, Segment
from paravm.memory import GuestMemoryError
from paravm.vm.backend import (EXIT_HYPERCALL, EXIT_FAIL_ENTRY, EXIT_HLT, EXIT_INTERNAL_ERROR, EXIT_INTR,
                               EXIT_IO_IN, EXIT_IO_OUT, EXIT_MMIO_READ, EXIT_MMIO_WRITE,
                               EXIT_SHUTDOWN, EXIT_SYSTEM_EVENT, EXIT_UNKNOWN, R8, R9, R10,
                               RAX, RDI, RDX, RIP, RSI, VcpuBackend, VmBackend)
from paravm.vm.domain import Domain, DomainState
from paravm.vm.vcpu import GuestStop, VcpuState, handle_exit

RAM = 4 << 20
WAIT = 10.0


# --- fakes ---------------------------------------------------------------------------

class FakeVcpu(VcpuBackend):
    """Returns the exits queued with :meth:`queue` (each a function that sets
    the exit's fields and returns its kind); when the queue is empty it blocks
    until kicked, then returns EXIT_INTR (as KVM_RUN does)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.regs = memoryview(array("Q", [0] * 18))
        self.port = self.addr = self.size = 0
        self.data = memoryview(bytearray(8))
        self.detail = ""
        self.script: list = []
        self.ran = 0
        self.dirty = 0
        self.dirty_flag = memoryview(array("Q", [0]))
        self.dirty_value = 1
        self.kicked = threading.Event()
        self.clear_kicks = 0
        self.closed = False
        self.bound = False
        self.unbound = False

    # scripting
    def queue(self, *steps) -> "FakeVcpu":
        self.script.extend(steps)
        return self

    def run(self) -> int:
        self.ran += 1
        if self.script:
            return self.script.pop(0)(self)
        self.kicked.wait()
        return EXIT_INTR

    def regs_dirty(self) -> None:
        self.dirty += 1

    def kick(self) -> None:
        self.kicked.set()

    def clear_kick(self) -> None:
        self.clear_kicks += 1
        self.kicked.clear()

    def unbind_thread(self) -> None:
        self.unbound = True

    def bind_thread(self) -> None:
        self.bound = True

    def dump(self) -> dict[str, int]:
        return {"rip": 0x100123, "rsp": 0x3F0000, "rax": self.regs[RAX], "cr2": 0,
                "cr0": 0x80010033, "cr3": L.PML4, "cr4": 0x620, "efer": 0x500}

    def close(self) -> None:
        self.closed = True


class FakeVm(VmBackend):
    def __init__(self) -> None:
        self.slots: dict[int, tuple[int, int]] = {}
        self.vcpus: list[FakeVcpu] = []
        self.closed = False

    def map_memory(self, gpa, size, hva, readonly=False):
        slot = len(self.slots)
        self.slots[slot] = (gpa, size)
        return slot

    def unmap_memory(self, slot):
        del self.slots[slot]

    def create_vcpu(self, index, *, entry, ram_size, idt_limit):
        v = FakeVcpu(index)
        self.vcpus.append(v)
        return v

    def signal_msi(self, address, data):
        return 1

    def irqfd(self, fd, address, data):
        return 24

    def irqfd_remove(self, fd, gsi):
        pass

    def ioeventfd(self, fd, addr, length, *, pio, datamatch=None, deassign=False):
        pass

    def tsc_khz(self):
        return 0

    def close(self):
        self.closed = True


# exit steps ------------------------------------------------------------------------

def io(kind, port, value=0, size=1):
    def step(be):
        be.port, be.size = port, size
        be.data = memoryview(bytearray(value.to_bytes(size, "little")))
        be.regs[RIP] = 0x100040
        return kind
    return step


def mmio(kind, addr, value=0, size=4):
    def step(be):
        be.addr, be.size = addr, size
        be.data = memoryview(bytearray(value.to_bytes(size, "little")))
        return kind
    return step


def simple(kind, detail=""):
    def step(be):
        be.detail = detail
        return kind
    return step


def hcall(nr, *args):
    """A register-form hypercall: ``outl %eax, $HC_PORT``."""
    def step(be):
        be.port, be.size = hc.HC_PORT, 4
        be.data = memoryview(bytearray(4))
        be.regs[RAX] = nr
        for reg, a in zip((RDI, RSI, RDX, R10, R8, R9), args):
            be.regs[reg] = a
        return EXIT_IO_OUT
    return step


def observe(fn):
    """A step that calls fn(be) (to look at the result of the previous exit),
    then exits with INTR (nothing to do)."""
    def step(be):
        fn(be)
        return EXIT_INTR
    return step


class Recorder:
    """A bus device that records its calls and answers reads with 0x1122..."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, bytes]] = []

    def read(self, offset, data):
        data[:] = (0x8877665544332211).to_bytes(8, "little")[:len(data)]
        self.calls.append(("read", offset, bytes(data)))

    def write(self, offset, data):
        self.calls.append(("write", offset, bytes(data)))


# --- fixtures ---------------------------------------------------------------------------

@pytest.fixture
def make_domain(machine):
    made = []

    def make(nr_vcpus: int = 1, lines: list | None = None) -> Domain:
        image = Image("fake.elf", L.RESERVED_END,
                      (Segment(L.RESERVED_END, b"\xf4", 0x1000, True),), None,
                      L.RESERVED_END + 0x1000)
        sink = None if lines is None else (lambda name, line: lines.append((name, line)))
        dom = Domain(name="fake", domid=1, image=image, memory_bytes=RAM, nr_vcpus=nr_vcpus,
                     args=(), vm=FakeVm(), machine=machine, sink=sink)
        made.append(dom)
        return dom

    yield make
    for dom in made:
        if dom.state is DomainState.RUNNING:
            dom.stop("test teardown")
        dom.destroy()


def run(dom: Domain, *steps_per_vcpu):
    """Queue the steps, start the domain, wait for its result."""
    for v, steps in zip(dom.vcpus, steps_per_vcpu):
        v.backend.queue(*steps)
    dom.start()
    r = dom.wait(WAIT)
    assert r is not None, "the domain did not stop"
    return r


# --- handle_exit, called directly ---------------------------------------------------------

def test_unknown_port_write_stops_naming_the_port(make_domain):
    dom = make_domain()
    runner = dom.vcpus[0]
    io(EXIT_IO_OUT, 0x1234, 0x5A)(runner.backend)
    with pytest.raises(GuestStop) as e:
        handle_exit(runner, EXIT_IO_OUT)
    assert e.value.reason == "unknown I/O port 0x1234 (write, 1 bytes) at rip=0x100040"


def test_unknown_port_read_stops_naming_the_port(make_domain):
    dom = make_domain()
    runner = dom.vcpus[0]
    io(EXIT_IO_IN, 0x71, size=2)(runner.backend)
    with pytest.raises(GuestStop, match=r"^unknown I/O port 0x71 \(read, 2 bytes\)"):
        handle_exit(runner, EXIT_IO_IN)


def test_pio_device_gets_the_offset_and_data(make_domain):
    dom = make_domain()
    dev = Recorder()
    dom.pio_bus.insert(0x3F8, 8, dev, "uart")
    runner = dom.vcpus[0]
    be = runner.backend
    io(EXIT_IO_OUT, 0x3FB, 0x80)(be)
    assert handle_exit(runner, EXIT_IO_OUT) is True
    io(EXIT_IO_IN, 0x3F8, size=1)(be)
    assert handle_exit(runner, EXIT_IO_IN) is True
    assert dev.calls == [("write", 3, b"\x80"), ("read", 0, b"\x11")]
    assert bytes(be.data) == b"\x11"          # the value the guest reads


@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_mmio_read_hit_calls_read_with_the_offset(make_domain, size):
    dom = make_domain()
    dev = Recorder()
    dom.mmio_bus.insert(0xD0000000, 0x1000, dev, "regs")
    runner = dom.vcpus[0]
    mmio(EXIT_MMIO_READ, 0xD0000010, size=size)(runner.backend)
    assert handle_exit(runner, EXIT_MMIO_READ) is True
    want = (0x8877665544332211).to_bytes(8, "little")[:size]
    assert dev.calls == [("read", 0x10, want)]
    assert bytes(runner.backend.data) == want


def test_mmio_write_hit_calls_write_with_the_offset(make_domain):
    dom = make_domain()
    dev = Recorder()
    dom.mmio_bus.insert(0xD0000000, 0x1000, dev, "regs")
    runner = dom.vcpus[0]
    mmio(EXIT_MMIO_WRITE, 0xD0000FFC, 0xDEADBEEF)(runner.backend)
    assert handle_exit(runner, EXIT_MMIO_WRITE) is True
    assert dev.calls == [("write", 0xFFC, bytes.fromhex("efbeadde"))]


@pytest.mark.parametrize("kind, addr, word", [(EXIT_MMIO_READ, 0xD0001000, "read"),
                                              (EXIT_MMIO_WRITE, 0xCFFFFFFC, "write")])
def test_unknown_mmio_stops_naming_the_address(make_domain, kind, addr, word):
    dom = make_domain()
    dom.mmio_bus.insert(0xD0000000, 0x1000, Recorder(), "regs")
    runner = dom.vcpus[0]
    mmio(kind, addr)(runner.backend)
    with pytest.raises(GuestStop) as e:
        handle_exit(runner, kind)
    assert e.value.reason == f"unknown MMIO address {addr:#x} ({word}, 4 bytes) at rip=0x0"


def test_an_access_running_past_a_device_end_reaches_no_device(make_domain):
    dom = make_domain()
    rec = Recorder()
    dom.mmio_bus.insert(0xD0000000, 0x1000, rec, "regs")
    runner = dom.vcpus[0]
    mmio(EXIT_MMIO_READ, 0xD0000FFE)(runner.backend)        # 4 bytes from 0xffe
    with pytest.raises(GuestStop, match="unknown MMIO address 0xd0000ffe"):
        handle_exit(runner, EXIT_MMIO_READ)
    assert rec.calls == []


def test_shutdown_is_a_triple_fault(make_domain):
    runner = make_domain().vcpus[0]
    with pytest.raises(GuestStop, match=r"^triple fault \(KVM_EXIT_SHUTDOWN\)$"):
        handle_exit(runner, EXIT_SHUTDOWN)


@pytest.mark.parametrize("kind, name", [(EXIT_INTERNAL_ERROR, "INTERNAL_ERROR"),
                                        (EXIT_FAIL_ENTRY, "FAIL_ENTRY"),
                                        (EXIT_SYSTEM_EVENT, "SYSTEM_EVENT"),
                                        (EXIT_UNKNOWN, "UNKNOWN")])
def test_fatal_exits_pass_the_detail_through(make_domain, kind, name):
    runner = make_domain().vcpus[0]
    detail = "KVM internal error 1 (emulation failure), data 0x3 0x100abc"
    simple(kind, detail)(runner.backend)
    with pytest.raises(GuestStop) as e:
        handle_exit(runner, kind)
    assert e.value.reason == f"{name}: {detail}"


def test_hlt_and_intr_continue(make_domain):
    runner = make_domain().vcpus[0]
    assert handle_exit(runner, EXIT_HLT) is True
    before = runner.backend.clear_kicks
    assert handle_exit(runner, EXIT_INTR) is True
    assert runner.backend.clear_kicks == before + 1


def test_unexpected_exit_kind(make_domain):
    runner = make_domain().vcpus[0]
    with pytest.raises(GuestStop, match="unexpected exit kind 99"):
        handle_exit(runner, 99)


# --- block-form hypercalls -----------------------------------------------------------------

BLOCK_GPA = 0x200000


def _block(dom, nr, *args):
    dom.memory.write(BLOCK_GPA, struct.pack("<Q6Qq", nr, *(list(args) + [0] * 6)[:6], 12345))


def _block_ret(dom) -> int:
    return struct.unpack("<q", dom.memory.read(BLOCK_GPA + 56, 8))[0]


@pytest.mark.parametrize("nr", [hc.HC_MAX - 1, hc.HC_MAX, 1000, 1 << 63, (1 << 64) - 1])
def test_block_hypercall_unknown_number_is_enosys(make_domain, nr):
    dom = make_domain()
    runner = dom.vcpus[0]
    _block(dom, nr)
    io(EXIT_IO_OUT, hc.HC_BLOCK_PORT, BLOCK_GPA, 4)(runner.backend)
    assert handle_exit(runner, EXIT_IO_OUT) is True
    assert _block_ret(dom) == -hc.ENOSYS


def test_block_hypercall_bad_gpa_is_efault(make_domain):
    dom = make_domain()
    runner = dom.vcpus[0]
    _block(dom, hc.HC_CONSOLE_WRITE, RAM - 4, 16)
    io(EXIT_IO_OUT, hc.HC_BLOCK_PORT, BLOCK_GPA, 4)(runner.backend)
    assert handle_exit(runner, EXIT_IO_OUT) is True
    assert _block_ret(dom) == -hc.EFAULT
    assert dom.console.text == ""


def test_block_hypercall_console_write(make_domain):
    dom = make_domain()
    runner = dom.vcpus[0]
    dom.memory.write(0x300000, b"via block\n")
    _block(dom, hc.HC_CONSOLE_WRITE, 0x300000, 10)
    io(EXIT_IO_OUT, hc.HC_BLOCK_PORT, BLOCK_GPA, 4)(runner.backend)
    assert handle_exit(runner, EXIT_IO_OUT) is True
    assert _block_ret(dom) == 10
    assert dom.console.text == "via block\n"
    assert runner.hypercall_counts[hc.HC_CONSOLE_WRITE] == 1


@pytest.mark.parametrize("gpa", [RAM - 8, RAM, 0xD0000000, 0xFFFFFFFF])
def test_block_hypercall_with_the_block_outside_ram_has_no_effect(make_domain, gpa):
    dom = make_domain()
    runner = dom.vcpus[0]
    snapshot = dom.memory.read(RAM - 0x1000, 0x1000)
    io(EXIT_IO_OUT, hc.HC_BLOCK_PORT, gpa, 4)(runner.backend)
    assert handle_exit(runner, EXIT_IO_OUT) is True
    assert dom.memory.read(RAM - 0x1000, 0x1000) == snapshot
    assert dom.result is None


def test_block_hypercall_exit_stops_the_vcpu(make_domain):
    dom = make_domain()
    runner = dom.vcpus[0]
    _block(dom, hc.HC_EXIT, 9)
    io(EXIT_IO_OUT, hc.HC_BLOCK_PORT, BLOCK_GPA, 4)(runner.backend)
    assert handle_exit(runner, EXIT_IO_OUT) is False
    assert dom.result.how == "exited" and dom.result.status == 9


# --- the run loop -------------------------------------------------------------------------------

def test_loop_unknown_port_crashes_the_domain_with_a_dump(make_domain):
    dom = make_domain()
    r = run(dom, [io(EXIT_IO_OUT, 0x1234, 1)])
    assert r.how == "crashed" and r.vcpu == 0
    assert r.reason.startswith("unknown I/O port 0x1234 (write, 1 bytes)")
    assert r.dump["rip"] == 0x100123 and "cr3" in r.dump
    assert dom.state is DomainState.STOPPED
    assert dom.vcpus[0].state is VcpuState.STOPPED and dom.vcpus[0].backend.bound
    assert dom.vcpus[0].backend.unbound     # the thread let go of the backend


@pytest.mark.parametrize("nr", [7, 40, hc.HC_MAX - 1, hc.HC_MAX, 1000, 0xFFFFFFFF])
def test_loop_unknown_hypercall_returns_enosys_in_rax(make_domain, nr):
    dom = make_domain()
    seen = {}
    r = run(dom, [hcall(nr), observe(lambda be: seen.update(rax=be.regs[RAX], dirty=be.dirty)),
                  hcall(hc.HC_EXIT, 0)])
    assert r.how == "exited" and r.status == 0
    assert seen["rax"] == (-hc.ENOSYS) & (2**64 - 1)
    assert seen["dirty"] >= 1       # rax goes back to the vCPU


def test_loop_hypercall_number_is_the_low_32_bits_of_rax(make_domain):
    dom = make_domain()
    seen = {}
    r = run(dom, [hcall((1 << 32) | hc.HC_NOP), observe(lambda be: seen.update(rax=be.regs[RAX])),
                  hcall(hc.HC_EXIT, 0)])
    assert r.how == "exited" and seen["rax"] == 0


def test_loop_handler_raising_guest_memory_error_returns_efault(make_domain):
    dom = make_domain()
    got = []

    def handler(vcpu, gpa, length, *_):
        got.append((vcpu.index, gpa, length))
        raise GuestMemoryError(gpa, length)

    dom.hypercalls.register(40, "test_efault", handler)
    seen = {}
    r = run(dom, [hcall(40, 0xDEAD0000, 8), observe(lambda be: seen.update(rax=be.regs[RAX])),
                  hcall(hc.HC_EXIT, 0)])
    assert r.how == "exited"
    assert got == [(0, 0xDEAD0000, 8)]
    assert seen["rax"] == (-hc.EFAULT) & (2**64 - 1)
    assert dom.vcpus[0].hypercall_counts[40] == 1


@pytest.mark.parametrize("gpa, length", [(RAM, 1), (RAM - 8, 16), (0xD0000000, 4),
                                         ((1 << 64) - 16, 32), (0x100000, (1 << 64) - 1),
                                         (0x100000, RAM)])
def test_loop_console_write_outside_ram_returns_efault(make_domain, gpa, length):
    dom = make_domain()
    seen = {}
    r = run(dom, [hcall(hc.HC_CONSOLE_WRITE, gpa, length),
                  observe(lambda be: seen.update(rax=be.regs[RAX])), hcall(hc.HC_EXIT, 0)])
    assert r.how == "exited"
    assert seen["rax"] == (-hc.EFAULT) & (2**64 - 1)
    assert dom.console.text == ""


def test_loop_console_write_caps_the_length(make_domain):
    dom = make_domain()
    dom.memory.fill(0x200000, hc.CONSOLE_WRITE_MAX + 10, ord("x"))
    seen = {}
    r = run(dom, [hcall(hc.HC_CONSOLE_WRITE, 0x200000, hc.CONSOLE_WRITE_MAX + 10),
                  observe(lambda be: seen.update(rax=be.regs[RAX])), hcall(hc.HC_EXIT, 0)])
    assert r.how == "exited"
    assert seen["rax"] == hc.CONSOLE_WRITE_MAX
    assert dom.console.bytes_written == hc.CONSOLE_WRITE_MAX


def test_loop_hypercall_error_returns_its_errno(make_domain):
    dom = make_domain()
    seen = {}
    r = run(dom, [hcall(hc.HC_BOOT_MARK, 64), observe(lambda be: seen.update(rax=be.regs[RAX])),
                  hcall(hc.HC_EXIT, 0)])
    assert r.how == "exited"
    assert seen["rax"] == (-hc.EINVAL) & (2**64 - 1)


def test_loop_handler_bug_crashes_only_the_domain(make_domain):
    dom = make_domain()

    def handler(vcpu, *_):
        raise ZeroDivisionError("oops in a handler")

    dom.hypercalls.register(41, "buggy", handler)
    r = run(dom, [hcall(41)])
    assert r.how == "crashed"
    assert r.reason.startswith("internal error in the VMM while running vCPU 0: ")
    assert "ZeroDivisionError: oops in a handler" in r.reason
    assert r.dump["rip"] == 0x100123


def test_loop_console_write_and_exit_status(make_domain):
    lines = []
    dom = make_domain(lines=lines)
    dom.memory.write(0x200000, b"hi there\npartial")
    r = run(dom, [hcall(hc.HC_CONSOLE_WRITE, 0x200000, 16), hcall(hc.HC_EXIT, 7)])
    assert (r.how, r.status, r.exit_code) == ("exited", 7, 7)
    assert dom.console.text == "hi there\npartial"
    assert lines == [("fake", "hi there"), ("fake", "partial")]   # flushed at stop
    assert dom.stats()["hypercalls"] == {"console_write": 1, "exit": 1}


@pytest.mark.parametrize("arg, status", [(0xFFFFFFFF, -1), ((1 << 64) - 2, -2),
                                         ((5 << 32) | 3, 3), (0x80000000, -(1 << 31))])
def test_loop_exit_status_is_the_low_32_bits_signed(make_domain, arg, status):
    dom = make_domain()
    r = run(dom, [hcall(hc.HC_EXIT, arg)])
    assert (r.how, r.status) == ("exited", status)
    # A process exit code has 8 bits; a non-zero status must not become 0.
    assert r.exit_code == ((status & 0xFF) or 1)
    assert r.exit_code != 0


def test_loop_exit_from_one_vcpu_stops_the_others(make_domain):
    dom = make_domain(nr_vcpus=3)
    r = run(dom, [hcall(hc.HC_EXIT, 4)], [], [])      # vCPUs 1, 2 wait in run()
    assert (r.how, r.status) == ("exited", 4)
    assert all(v.state is VcpuState.STOPPED for v in dom.vcpus)
    # a vCPU stopped before its thread started never gets one
    assert all(v.thread is None or not v.thread.is_alive() for v in dom.vcpus)


def test_loop_crash_on_one_vcpu_stops_the_others(make_domain):
    dom = make_domain(nr_vcpus=2)
    r = run(dom, [], [simple(EXIT_SHUTDOWN)])
    assert r.how == "crashed" and r.vcpu == 1 and r.reason.startswith("triple fault")
    assert all(v.state is VcpuState.STOPPED for v in dom.vcpus)


def test_loop_vcpu_off_on_every_vcpu_exits_zero(make_domain):
    dom = make_domain(nr_vcpus=2)
    r = run(dom, [hcall(hc.HC_VCPU_OFF)], [hcall(hc.HC_VCPU_OFF)])
    assert (r.how, r.status) == ("exited", 0)


def test_loop_vcpu_off_on_one_vcpu_keeps_the_domain(make_domain):
    dom = make_domain(nr_vcpus=2)
    v0, v1 = dom.vcpus
    v0.backend.queue(hcall(hc.HC_VCPU_OFF))
    dom.start()
    v0.join(WAIT)
    assert v0.state is VcpuState.STOPPED
    assert dom.wait(0.1) is None and dom.result is None
    dom.stop("host")
    r = dom.wait(WAIT)
    assert r.how == "stopped" and r.reason == "host"


def test_loop_fault_report_from_the_stub(make_domain):
    """HC_FAULT with the frame the stub pushes: the reason and dump come from it."""
    dom = make_domain()
    names = ("r15", "r14", "r13", "r12", "r11", "r10", "r9", "r8", "rbp", "rdi", "rsi",
             "rdx", "rcx", "rbx", "rax", "vector", "error", "rip", "cs", "rflags", "rsp", "ss")
    frame = dict.fromkeys(names, 0)
    frame.update(vector=14, error=4, rip=0x100abc, cs=L.SEL_USER_CS, rsp=0x3FFF00,
                 ss=L.SEL_USER_DS, rax=0x1234)
    gpa = L.vcpu_area(0) + L.VCPU_STACK0_TOP_OFF - 8 * len(names)
    dom.memory.write(gpa, struct.pack(f"<{len(names)}Q", *(frame[n] for n in names)))
    r = run(dom, [hcall(hc.HC_FAULT, gpa)])
    assert r.how == "crashed"
    assert r.reason == "#PF page fault at rip=0x100abc error=0x4 address=0x0 (ring 3)"
    assert r.dump["rip"] == 0x100abc and r.dump["rax"] == 0x1234 and r.dump["cr2"] == 0
    assert r.dump["rsp"] == 0x3FFF00 and r.dump["cr3"] == L.PML4


@pytest.mark.parametrize("vector, text", [(13, "#GP general protection at rip=0x100abc "
                                                "error=0x0 (ring 3)"),
                                          (6, "#UD invalid opcode at rip=0x100abc (ring 3)"),
                                          (31, "exception 31 at rip=0x100abc (ring 3)")])
def test_loop_fault_names(make_domain, vector, text):
    dom = make_domain()
    frame = [0] * 22
    frame[15], frame[17], frame[18] = vector, 0x100abc, L.SEL_USER_CS
    dom.memory.write(0x200000, struct.pack("<22Q", *frame))
    r = run(dom, [hcall(hc.HC_FAULT, 0x200000)])
    assert r.reason == text


@pytest.mark.parametrize("gpa", [RAM - 8, RAM, (1 << 64) - 8])
def test_loop_fault_with_a_bad_frame_address(make_domain, gpa):
    dom = make_domain()
    r = run(dom, [hcall(hc.HC_FAULT, gpa)])
    assert r.how == "crashed"
    assert r.reason == f"fault reported with a bad frame address {gpa:#x}"
    assert r.dump["rip"] == 0x100123        # the backend's dump instead


def test_loop_pio_device_in_the_loop(make_domain):
    dom = make_domain()
    dev = Recorder()
    dom.pio_bus.insert(0x3F8, 8, dev, "uart")
    r = run(dom, [io(EXIT_IO_OUT, 0x3F8, 0x41), io(EXIT_IO_IN, 0x3FD), hcall(hc.HC_EXIT, 0)])
    assert r.how == "exited"
    assert dev.calls == [("write", 0, b"\x41"), ("read", 5, b"\x11")]


def test_loop_counts_exits(make_domain):
    dom = make_domain()
    run(dom, [simple(EXIT_HLT), simple(EXIT_HLT), hcall(hc.HC_NOP), hcall(hc.HC_EXIT, 0)])
    s = dom.stats()
    assert s["exits"]["HLT"] == 2 and s["exits"]["IO_OUT"] == 2
    assert s["hypercalls"] == {"nop": 1, "exit": 1}


def test_pause_and_resume(make_domain):
    dom = make_domain()
    runner = dom.vcpus[0]
    dom.start()
    assert runner.pause(WAIT) is True
    assert runner.state is VcpuState.PAUSED
    runner.resume()
    # back in run(): queue an exit and kick it out of its wait
    runner.backend.queue(hcall(hc.HC_EXIT, 3))
    runner.backend.kick()
    r = dom.wait(WAIT)
    assert r is not None and (r.how, r.status) == ("exited", 3)


def test_destroy_releases_the_backends(make_domain):
    dom = make_domain(nr_vcpus=2)
    vm = dom.vm
    r = run(dom, [hcall(hc.HC_EXIT, 0)], [])
    assert r.how == "exited"
    dom.destroy()
    assert vm.closed and not vm.slots
    assert all(v.closed for v in vm.vcpus)
    assert dom.memory.regions == ()


def fast_hcall(nr, *args):
    """A hypercall as the KVM backend reports it: EXIT_HYPERCALL, registers synced."""
    def step(be):
        be.regs[RAX] = nr
        for reg, a in zip((RDI, RSI, RDX, R10, R8, R9), args):
            be.regs[reg] = a
        return EXIT_HYPERCALL
    return step


def test_fast_path_hypercall_writes_rax_and_marks_the_registers_dirty(make_domain):
    dom = make_domain()
    seen = []

    def look(be):
        seen.append((be.regs[RAX], be.dirty_flag[0]))
        be.dirty_flag[0] = 0

    r = run(dom, [fast_hcall(hc.HC_NOP), observe(look), fast_hcall(62), observe(look),
                  fast_hcall(hc.HC_CONSOLE_WRITE, 1 << 63, 4), observe(look),
                  fast_hcall(hc.HC_EXIT, 3)])
    assert (r.how, r.status) == ("exited", 3)
    mask = (1 << 64) - 1
    assert seen == [(0, 1), ((-hc.ENOSYS) & mask, 1), ((-hc.EFAULT) & mask, 1)]
    assert dom.stats()["exits"]["HYPERCALL"] == 4


def test_an_interrupt_while_starting_vcpus_leaves_a_stoppable_domain(make_domain, monkeypatch):
    """Ctrl-C landing inside Thread.start for vCPU 1: that vCPU counts as
    stopped, the domain still stops at once and can be destroyed."""
    dom = make_domain(nr_vcpus=2)
    real_start = threading.Thread.start

    def start(thread):
        if thread.name.endswith("vcpu1"):
            raise KeyboardInterrupt
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(KeyboardInterrupt):
        dom.start()
    monkeypatch.setattr(threading.Thread, "start", real_start)
    assert dom.vcpus[1].state is VcpuState.STOPPED and dom.vcpus[1].thread is None
    dom.stop("interrupted")
    r = dom.wait(WAIT)
    assert r is not None and r.how == "stopped"
    dom.destroy()
