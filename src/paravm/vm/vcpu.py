"""The vCPU run loop: one thread per vCPU, an explicit state machine, exit dispatch.

Why it is built this way:

* ``KVM_RUN`` releases the GIL, so each vCPU gets a thread that spends its life
  in that ioctl; Python runs only on exits.  Exits are the expensive part of
  this machine (35-55 us per round trip from ring 3: bench/exit_roundtrip), so the loop keeps the common exit,
  a register-form hypercall, on a short path: read the number and arguments
  from the synced registers, call the handler, write rax, re-enter.  No object
  is created per exit beyond Python's ints.
* Every other exit goes through :func:`handle_exit`, a free function that
  tests drive with fabricated exits (as Firecracker's vCPU tests do).
* Anything the guest does that cannot go on (triple fault, an unknown port or
  MMIO address, an exception reported by the SDK's ring-0 stub, a failed entry,
  an emulation failure, an exception in a handler) stops *this domain* with a
  reason and a register dump; the loop never lets an exception out, so the VMM
  and the other domains go on.

States: ``CREATED -> RUNNING <-> PAUSED -> STOPPED``.  Requests (pause, stop)
come from other threads as a flag plus :meth:`VcpuBackend.kick`.
"""

from __future__ import annotations

import enum
import os
import struct
import threading
import time

from ..arch.x86 import layout as L
from ..arch.x86.boot import ERROR_CODE_VECTORS, EXCEPTION_NAMES
from ..hypercall import abi as hc
from ..hypercall.table import HypercallError
from ..memory import GuestMemoryError
from .backend import (EXIT_FAIL_ENTRY, EXIT_HLT, EXIT_HYPERCALL, EXIT_HYPERCALL_BLOCK,
                      EXIT_INTERNAL_ERROR, EXIT_INTR, EXIT_IO_IN, EXIT_IO_OUT, EXIT_KINDS,
                      EXIT_MMIO_READ, EXIT_MMIO_WRITE, EXIT_SHUTDOWN, EXIT_SYSTEM_EVENT,
                      EXIT_UNKNOWN, R8, R9, R10, RAX, RDI, RDX, RSI, VcpuBackend)

MASK64 = (1 << 64) - 1


class VcpuState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


class GuestStop(Exception):
    """Raised inside exit handling: stop this domain with *reason*."""

    def __init__(self, reason: str, dump: dict[str, int] | None = None) -> None:
        super().__init__(reason)
        self.reason, self.dump = reason, dump


class VcpuRunner:
    """Owns one vCPU backend and the thread that runs it."""

    def __init__(self, domain, backend: VcpuBackend, *, timing: bool = False,
                 cpu: int | None = None) -> None:
        self.domain = domain
        self.backend = backend
        self.index = backend.index
        self.state = VcpuState.CREATED
        self.exit_counts = [0] * len(EXIT_KINDS)
        self.hypercall_counts = [0] * hc.HC_MAX
        self.exit_ns = [0] * len(EXIT_KINDS)
        self.timing = timing
        self.cpu = cpu           # host CPU to pin the thread to, or None
        # Requests from other threads and the thread's answers, under one
        # condition.  A pause request has a generation number; pause() returns
        # once the thread has parked for that generation (or the vCPU stopped).
        self._cond = threading.Condition()
        self._stop = False
        self._pause = False
        self._pause_gen = 0
        self._parked_gen = 0
        self._holds = 0          # hold() calls not yet released
        self._released = False   # the last hold went; the vCPU may not have run since
        self.in_guest = False    # inside KVM_RUN (or about to enter it)
        self.thread: threading.Thread | None = None

    # --- control (any thread) -----------------------------------------------
    def start(self) -> bool:
        """Start the thread; False if the vCPU was stopped before it ran."""
        with self._cond:
            if self.state is VcpuState.STOPPED and self.thread is None:
                return False
            if self.state is not VcpuState.CREATED:
                raise RuntimeError(f"vCPU {self.index} is {self.state.value}, not created")
            self.state = VcpuState.RUNNING
            self.thread = threading.Thread(target=self._main, daemon=True,
                                           name=f"{self.domain.name}/vcpu{self.index}")
        try:
            self.thread.start()
        except BaseException:
            # E.g. KeyboardInterrupt inside Thread.start: the thread may not
            # run; the vCPU counts as stopped, never as running without one.
            if self.thread.ident is None:
                with self._cond:
                    self.thread = None
                    self.state = VcpuState.STOPPED
                    self._stop = True
                    self._cond.notify_all()
                self.domain._vcpu_stopped(self)
            raise
        return True

    def request_stop(self) -> None:
        """Stop the vCPU (returns at once; :meth:`join` waits).  Idempotent."""
        with self._cond:
            self._stop = True
            never_ran = self.state is VcpuState.CREATED
            if never_ran:
                self.state = VcpuState.STOPPED
            self._cond.notify_all()
        if never_ran:
            self.domain._vcpu_stopped(self)
        else:
            self.backend.kick()

    def pause(self, timeout: float | None = 5.0) -> bool:
        """Park the vCPU outside the guest and wait until it is parked.
        True once parked (a vCPU not started yet parks as it starts); False if
        it stopped, or did not park within *timeout* seconds."""
        with self._cond:
            if self._stop or self.state is VcpuState.STOPPED:
                return False
            self._pause = True
            self._pause_gen += 1
            gen = self._pause_gen
            if self.state is VcpuState.CREATED:
                return True
            self._cond.notify_all()
        self.backend.kick()
        with self._cond:
            self._cond.wait_for(lambda: self._parked_gen >= gen or self._stop
                                or self.state is VcpuState.STOPPED, timeout)
            return self._parked_gen >= gen and not self._stop

    def resume(self) -> None:
        """Let a paused vCPU run again (no effect on one that is not paused)."""
        with self._cond:
            self._pause = False
            self._cond.notify_all()

    def hold(self, timeout: float = 5.0) -> bool:
        """Keep the vCPU out of the guest until :meth:`release_hold`, and
        wait until it is out: True once it is parked, stopped, not started
        yet, or between two exits (running VMM code, perhaps blocked on a
        lock the caller holds: it cannot enter the guest again, since the
        kick's ``immediate_exit`` bounces its next ``KVM_RUN`` and the hold
        then parks it).  False if it was still in the guest after *timeout*
        seconds (release the hold anyway).  For memslot changes under a
        running guest; calls nest."""
        with self._cond:
            if not self._holds and self._released:
                # Back-to-back holds would starve the guest (the parked
                # thread may not even wake between them): first let it get
                # back into KVM_RUN, for at most 1 ms.  A halted guest is
                # in KVM_RUN at once, so this costs it nothing.
                end = time.monotonic() + 0.001
                # (Only a vCPU that can run: not one never started or stopped.)
                while (self.state is VcpuState.PAUSED or (self.state is VcpuState.RUNNING
                                                          and not self.in_guest)) \
                        and not self._pause and not self._stop and time.monotonic() < end:
                    self._cond.wait(0.0001)
                self._released = False
            self._holds += 1
            if self.state in (VcpuState.CREATED, VcpuState.STOPPED):
                return True
        self.backend.kick()
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self.state in (VcpuState.PAUSED, VcpuState.STOPPED) or not self.in_guest:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                # The vCPU thread clears in_guest without a notify: poll.
                self._cond.wait(min(left, 0.0002))

    def release_hold(self) -> None:
        with self._cond:
            self._holds -= 1
            self._released = not self._holds
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True if it has (or never started)."""
        if self.thread is not None:
            self.thread.join(timeout)
            return not self.thread.is_alive()
        return True

    # --- the thread -----------------------------------------------------------
    def _main(self) -> None:
        be = self.backend
        be.bind_thread()
        if self.cpu is not None:
            # Measured here: a vCPU thread that stays on one host CPU makes
            # ~9% cheaper exits than one the scheduler moves about
            # (bench/exit_roundtrip: pinned vs unpinned).
            try:
                os.sched_setaffinity(0, {self.cpu})
            except OSError:
                pass
        try:
            self._loop()
        except GuestStop as e:
            self.domain.crash(e.reason, self.index, e.dump if e.dump is not None else be.dump())
        except BaseException as e:  # noqa: BLE001 - nothing may escape the loop
            import traceback
            tb = "".join(traceback.format_exception_only(type(e), e)).strip()
            self.domain.crash(f"internal error in the VMM while running vCPU {self.index}: "
                              f"{tb}", self.index, be.dump())
        finally:
            be.unbind_thread()
            with self._cond:
                self.state = VcpuState.STOPPED
                self._cond.notify_all()
            self.domain._vcpu_stopped(self)

    def _park(self) -> None:
        """Called by the vCPU thread when a pause is requested: wait outside
        the guest until resumed or stopped.  A kick left over from the
        request costs one spurious EXIT_INTR later, nothing more."""
        with self._cond:
            while (self._pause or self._holds) and not self._stop:
                self.state = VcpuState.PAUSED
                self._parked_gen = self._pause_gen
                self._cond.notify_all()
                self._cond.wait()
            if not self._stop:
                self.state = VcpuState.RUNNING

    def _loop(self) -> None:
        be = self.backend
        run = be.run
        regs = be.regs
        dirty, DIRTY = be.dirty_flag, be.dirty_value
        handlers = self.domain.hypercalls.handlers
        counts = self.exit_counts
        hcounts = self.hypercall_counts
        timing = self.timing
        exit_ns = self.exit_ns
        perf = time.perf_counter_ns
        HC_MAX, ENOSYS, EFAULT = hc.HC_MAX, -hc.ENOSYS, -hc.EFAULT
        # Only the register form is inlined here (the ABI the SDK uses); the
        # block form and every other exit go through handle_exit.
        if self._pause or self._holds:
            self._park()
        if self._stop:
            return
        while True:
            self.in_guest = True
            kind = run()
            self.in_guest = False
            if timing:
                t0 = perf()
            counts[kind] += 1
            if kind == EXIT_HYPERCALL:
                # The hot path: number and arguments from the synced registers.
                nr = regs[RAX] & 0xFFFFFFFF
                fn = handlers[nr] if nr < HC_MAX else None
                if fn is None:
                    ret = ENOSYS
                else:
                    hcounts[nr] += 1
                    try:
                        ret = fn(self, regs[RDI], regs[RSI], regs[RDX], regs[R10], regs[R8],
                                 regs[R9])
                    except GuestMemoryError:
                        ret = EFAULT
                    except HypercallError as e:
                        ret = -e.errno
                    if ret is None:
                        return
                regs[RAX] = ret & MASK64
                dirty[0] = DIRTY
            elif kind == EXIT_INTR:
                # Clear first, then look at the flags: a request made after the
                # look re-arms immediate_exit, so it cannot be lost.
                be.clear_kick()
                if self._stop:
                    return
                if self._pause or self._holds:
                    self._park()
                    if self._stop:
                        return
            elif not handle_exit(self, kind):
                return
            if timing:
                exit_ns[kind] += perf() - t0


def handle_exit(runner: VcpuRunner, kind: int) -> bool:
    """Handle one exit other than a register-form hypercall.  Returns False
    when the vCPU must stop; raises :class:`GuestStop` to stop the domain."""
    be = runner.backend
    dom = runner.domain
    if kind == EXIT_INTR:
        be.clear_kick()
        return True
    if kind == EXIT_HYPERCALL_BLOCK:
        return _block_hypercall(runner, be.regs[RAX] & 0xFFFFFFFF)
    if kind == EXIT_HYPERCALL or (kind == EXIT_IO_OUT and be.port == hc.HC_PORT
                                  and be.size == 4):
        # A backend without the fast path reports hypercalls as plain OUTs.
        return _register_hypercall(runner)
    if kind == EXIT_IO_OUT or kind == EXIT_IO_IN:
        port, data = be.port, be.data
        if port == hc.HC_BLOCK_PORT and kind == EXIT_IO_OUT and be.size == 4:
            return _block_hypercall(runner, int.from_bytes(data, "little"))
        hit = dom.pio_bus.lookup(port, be.size)
        if hit is None:
            raise GuestStop(f"unknown I/O port {port:#x} ({'write' if kind == EXIT_IO_OUT else 'read'}"
                            f", {be.size} bytes) at rip={be.regs[16]:#x}")
        dev, off = hit
        (dev.write if kind == EXIT_IO_OUT else dev.read)(off, data)
        return True
    if kind == EXIT_MMIO_WRITE or kind == EXIT_MMIO_READ:
        addr = be.addr
        hit = dom.mmio_bus.lookup(addr, be.size)
        if hit is None:
            raise GuestStop(f"unknown MMIO address {addr:#x} ({'write' if kind == EXIT_MMIO_WRITE else 'read'}"
                            f", {be.size} bytes) at rip={be.regs[16]:#x}")
        dev, off = hit
        (dev.write if kind == EXIT_MMIO_WRITE else dev.read)(off, be.data)
        return True
    if kind == EXIT_HLT:
        return True
    if kind == EXIT_SHUTDOWN:
        raise GuestStop("triple fault (KVM_EXIT_SHUTDOWN)")
    if kind in (EXIT_FAIL_ENTRY, EXIT_INTERNAL_ERROR, EXIT_SYSTEM_EVENT, EXIT_UNKNOWN):
        raise GuestStop(f"{EXIT_KINDS[kind]}: {be.detail}")
    raise GuestStop(f"unexpected exit kind {kind}")


_BLOCK = struct.Struct("<Q6Qq")


def _dispatch(runner: VcpuRunner, nr: int, a0: int, a1: int, a2: int, a3: int, a4: int,
              a5: int) -> int | None:
    """Call hypercall *nr*'s handler: its result, a negative errno, or None
    (the vCPU stops).  The run loop inlines the same steps for the register
    form, the hot path."""
    fn = runner.domain.hypercalls.handlers[nr] if nr < hc.HC_MAX else None
    if fn is None:
        return -hc.ENOSYS
    runner.hypercall_counts[nr] += 1
    try:
        return fn(runner, a0, a1, a2, a3, a4, a5)
    except GuestMemoryError:
        return -hc.EFAULT
    except HypercallError as e:
        return -e.errno


def _register_hypercall(runner: VcpuRunner) -> bool:
    """The register form, general path."""
    be = runner.backend
    regs = be.regs
    ret = _dispatch(runner, regs[RAX] & 0xFFFFFFFF, regs[RDI], regs[RSI], regs[RDX],
                    regs[R10], regs[R8], regs[R9])
    if ret is None:
        return False
    regs[RAX] = ret & MASK64
    be.regs_dirty()
    return True


def _block_hypercall(runner: VcpuRunner, gpa: int) -> bool:
    """The argument-block form: eax = GPA of struct pv_hcall_block (the
    general path: any region)."""
    mem = runner.domain.memory
    if gpa < L.RESERVED_END or gpa & 7:
        # The reserved area holds the page tables, IDT and stub stacks: the
        # VMM never writes there for the guest.  No result, no effect.
        return True
    try:
        nr, *args, _ = _BLOCK.unpack(mem.read(gpa, hc.HC_BLOCK_SIZE))
    except GuestMemoryError:
        return True  # nowhere to put a result: the call has no effect
    ret = _dispatch(runner, nr, *args)
    if ret is None:
        return False
    try:
        mem.write_u64(gpa + 56, ret & MASK64)
    except GuestMemoryError:
        pass          # the block became read-only meanwhile: no result
    return True


# --- faults reported by the SDK's ring-0 stub ---------------------------------
_FRAME_REGS = ("r15", "r14", "r13", "r12", "r11", "r10", "r9", "r8", "rbp", "rdi", "rsi",
               "rdx", "rcx", "rbx", "rax", "vector", "error", "rip", "cs", "rflags", "rsp", "ss")
_FRAME = struct.Struct(f"<{len(_FRAME_REGS)}Q")


def fault_report(runner: VcpuRunner, frame_gpa: int) -> GuestStop:
    """Decode the exception frame the stub pushed at *frame_gpa*."""
    try:
        values = _FRAME.unpack(runner.domain.memory.read(frame_gpa, _FRAME.size))
    except GuestMemoryError:
        return GuestStop(f"fault reported with a bad frame address {frame_gpa:#x}")
    dump = dict(zip(_FRAME_REGS, values))
    extra = runner.backend.dump()
    for k in ("cr0", "cr2", "cr3", "cr4", "efer"):
        if k in extra:
            dump[k] = extra[k]
    vec = dump["vector"]
    name = EXCEPTION_NAMES.get(vec, f"exception {vec}")
    reason = f"{name} at rip={dump['rip']:#x}"
    if vec in ERROR_CODE_VECTORS:
        reason += f" error={dump['error']:#x}"
    if vec == 14 and "cr2" in dump:
        reason += f" address={dump['cr2']:#x}"
    reason += f" (ring {dump['cs'] & 3})"
    return GuestStop(reason, dump)


def format_dump(dump: dict[str, int]) -> str:
    """A register dump, four registers to a line."""
    order = ["rip", "rsp", "rflags", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8",
             "r9", "r10", "r11", "r12", "r13", "r14", "r15", "cs", "ss", "cr0", "cr2", "cr3",
             "cr4", "efer", "vector", "error"]
    items = [f"{k:>6}={dump[k]:016x}" for k in order if k in dump]
    return "\n".join("  " + " ".join(items[i:i + 4]) for i in range(0, len(items), 4))
