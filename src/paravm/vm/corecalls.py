"""The first hypercalls: console write, exit, clock, boot marker, fault, vCPU off, nop.

Handlers follow :mod:`paravm.hypercall.table`'s contract: raw u64 arguments
from the guest, each checked; a negative errno for a bad call.
"""

from __future__ import annotations

import time

from ..hypercall import abi as hc
from ..hypercall.table import HypercallError, HypercallTable
from .vcpu import GuestStop, fault_report


def _console_write(vcpu, gpa, length, *_):
    """(gpa, len) -> bytes written (at most CONSOLE_WRITE_MAX; -EFAULT if the
    range is outside guest RAM)."""
    n = min(length, hc.CONSOLE_WRITE_MAX)
    data = vcpu.domain.memory.read(gpa, n)
    if length > n:
        # The part not written must still be valid memory (as write(2) would fault).
        vcpu.domain.memory.check_range(gpa, length)
    vcpu.domain.console.write(data, time.perf_counter_ns())
    return n


def _exit(vcpu, status, *_):
    """(status) -> does not return; the low 32 bits, signed, are the exit status."""
    status &= 0xFFFFFFFF
    if status >= 1 << 31:
        status -= 1 << 32
    vcpu.domain.exit(status)
    return None


def _clock_ns(vcpu, *_):
    """() -> CLOCK_MONOTONIC in ns."""
    return time.monotonic_ns()


def _boot_mark(vcpu, marker, *_):
    """(marker id 0..63) -> 0; records the time of the marker for --stats."""
    if marker >= 64:
        raise HypercallError(hc.EINVAL)
    vcpu.domain.boot_marks.setdefault(int(marker), time.perf_counter_ns())
    return 0


def _fault(vcpu, frame_gpa, *_):
    """From the SDK's ring-0 stub: an exception frame; stops the domain."""
    raise fault_report(vcpu, frame_gpa)


def _vcpu_off(vcpu, *_):
    """() -> does not return; stops this vCPU (the domain exits 0 when its last
    vCPU goes off without an exit call)."""
    return None


def _nop(vcpu, *_):
    return 0


def register_core_calls(table: HypercallTable) -> None:
    table.register(hc.HC_CONSOLE_WRITE, "console_write", _console_write)
    table.register(hc.HC_EXIT, "exit", _exit)
    table.register(hc.HC_CLOCK_NS, "clock_ns", _clock_ns)
    table.register(hc.HC_BOOT_MARK, "boot_mark", _boot_mark)
    table.register(hc.HC_FAULT, "fault", _fault)
    table.register(hc.HC_VCPU_OFF, "vcpu_off", _vcpu_off)
    table.register(hc.HC_NOP, "nop", _nop)


__all__ = ["register_core_calls", "GuestStop"]
