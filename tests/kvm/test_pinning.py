"""vCPU threads are pinned round robin to the host CPUs the process may use."""

import os
import time

import pytest

import paravm

pytestmark = pytest.mark.kvm


def _allowed(thread) -> set[int]:
    with open(f"/proc/self/task/{thread.native_id}/status") as f:
        for line in f:
            if line.startswith("Cpus_allowed_list:"):
                out = set()
                for part in line.split(":", 1)[1].strip().split(","):
                    lo, _, hi = part.partition("-")
                    out.update(range(int(lo), int(hi or lo) + 1))
                return out
    raise AssertionError("no Cpus_allowed_list")


def _running_threads(hv, test_guests, vcpus):
    d = hv.create_domain("p", test_guests / "irqwait.elf", memory_mib=8, vcpus=vcpus,
                         args=["timeout", "3000"])
    d.start()
    end = time.monotonic() + 5
    while not all(v.thread and v.thread.native_id for v in d.vcpus):
        assert time.monotonic() < end
        time.sleep(0.001)
    return d


def _settled(d, want, timeout=5.0):
    """Poll until every vCPU thread's allowed set is as wanted (each thread
    applies its own affinity as it starts)."""
    end = time.monotonic() + timeout
    while True:
        got = [_allowed(v.thread) for v in d.vcpus]
        if got == want or time.monotonic() > end:
            return got


def test_vcpus_are_pinned_round_robin(test_guests):
    cpus = sorted(os.sched_getaffinity(0))
    with paravm.Hypervisor(output=None) as hv:
        d = _running_threads(hv, test_guests, 3)
        want = [{cpus[i % len(cpus)]} for i in range(3)]
        assert _settled(d, want) == want
        d.stop("done")
        assert d.wait(10).how == "stopped"


def test_pinning_can_be_turned_off(test_guests):
    cpus = set(os.sched_getaffinity(0))
    with paravm.Hypervisor(output=None, pin_vcpus=False) as hv:
        d = _running_threads(hv, test_guests, 2)
        time.sleep(0.05)
        assert all(_allowed(v.thread) == cpus for v in d.vcpus)
        d.stop("done")
        assert d.wait(10).how == "stopped"
