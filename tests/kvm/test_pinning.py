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
                         args=["timeout", "300"])
    d.start()
    end = time.monotonic() + 5
    while not all(v.thread and v.thread.native_id for v in d.vcpus):
        assert time.monotonic() < end
        time.sleep(0.001)
    time.sleep(0.05)   # let each thread apply its affinity
    return d


def test_vcpus_are_pinned_round_robin(test_guests):
    cpus = sorted(os.sched_getaffinity(0))
    with paravm.Hypervisor(output=None) as hv:
        d = _running_threads(hv, test_guests, 3)
        pins = [_allowed(v.thread) for v in d.vcpus]
        assert pins == [{cpus[i % len(cpus)]} for i in range(3)]
        assert d.wait(10).how == "exited"


def test_pinning_can_be_turned_off(test_guests):
    cpus = set(os.sched_getaffinity(0))
    with paravm.Hypervisor(output=None, pin_vcpus=False) as hv:
        d = _running_threads(hv, test_guests, 2)
        assert all(_allowed(v.thread) == cpus for v in d.vcpus)
        assert d.wait(10).how == "exited"
