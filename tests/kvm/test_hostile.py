"""Hostile guests: each misbehaviour stops only the domain that did it, with a
reason and a register dump, while a good domain next to it runs to the end;
bad hypercall arguments return a defined error to the guest, which goes on.

Guests: tests/guests/hostile.c (argv[1] selects the misbehaviour),
tests/guests/good.c and tests/guests/triple.S.
"""

from __future__ import annotations

import re

import pytest

import paravm
from paravm.vm.vcpu import format_dump

pytestmark = pytest.mark.kvm

WAIT = 30.0                  # seconds; the pairs take ~0.2 s
GOOD_STATUS = 5
GOOD_TEXT = ("good: start\n" + "".join(f"good: tick {i}\n" for i in range(1, 5))
             + f"good: done {GOOD_STATUS}\n")
HEX = r"0x[0-9a-f]+"


def run_pair(guests, image, args, *, vcpus: int = 1):
    """Run a hostile domain next to a good one in one Hypervisor; returns
    ``(hostile, good)`` after both stopped (the hypervisor is closed)."""
    hv = paravm.Hypervisor(output=None)
    try:
        bad = hv.create_domain("hostile", image, memory_mib=16, vcpus=vcpus, args=args)
        good = hv.create_domain("good", guests.good, memory_mib=16, vcpus=1,
                                args=[str(GOOD_STATUS)])
        hv.start_all()
        results = hv.wait_all(WAIT)
        assert results is not None, "domains did not stop within the timeout"
        assert results["hostile"] is bad.result and results["good"] is good.result
    finally:
        hv.close()
    return bad, good


def assert_good_ran_to_the_end(good, bad) -> None:
    assert good.result.how == "exited", good.result.describe()
    assert good.result.status == GOOD_STATUS
    assert good.result.exit_code == GOOD_STATUS
    assert good.console.text == GOOD_TEXT
    # The good domain was still running when the hostile one stopped.
    assert bad.t_stop_ns < good.t_stop_ns


# mode, vCPUs, reason (full match), the vCPU that crashed, dump checks
CRASHES = [
    ("port", 1, rf"unknown I/O port 0x1234 \(write, 1 bytes\) at rip={HEX}", 0, {}),
    ("port_in", 1, rf"unknown I/O port 0x1235 \(read, 1 bytes\) at rip={HEX}", 0, {}),
    ("lapic", 1, rf"#PF page fault at rip={HEX} error=0x5 address=0xfee00020 \(ring 3\)", 0, {}),
    ("hc_in", 1, r"4-byte read of hypercall port 0xe0 \(hypercalls are 4-byte OUTs\)", 0, {}),
    ("hc_outb", 1, r"1-byte write to hypercall port 0xe1 \(hypercalls are 4-byte OUTs\)", 0, {}),
    ("mmio", 1, rf"unknown MMIO address 0xd0000000 \(read, 4 bytes\) at rip={HEX}", 0, {}),
    ("mmio_write", 1, rf"unknown MMIO address 0xd0000008 \(write, 4 bytes\) at rip={HEX}", 0, {}),
    ("noncanon", 1, rf"#GP general protection at rip={HEX} error=0x0 \(ring 3\)", 0,
     {"vector": 13, "error": 0, "cs": 0x23}),
    ("null", 1, rf"#PF page fault at rip={HEX} error=0x4 address=0x0 \(ring 3\)", 0,
     {"vector": 14, "error": 4, "cr2": 0}),
    ("null_write", 1, rf"#PF page fault at rip={HEX} error=0x6 address=0x0 \(ring 3\)", 0,
     {"vector": 14, "error": 6, "cr2": 0}),
    ("reserved", 1, rf"#PF page fault at rip={HEX} error=0x7 address=0x9000 \(ring 3\)", 0,
     {"vector": 14, "cr2": 0x9000}),
    ("hlt", 1, rf"#GP general protection at rip={HEX} error=0x0 \(ring 3\)", 0,
     {"vector": 13}),
    ("cli", 1, rf"#GP general protection at rip={HEX} error=0x0 \(ring 3\)", 0,
     {"vector": 13}),
    ("ud2", 1, rf"#UD invalid opcode at rip={HEX} \(ring 3\)", 0, {"vector": 6}),
    ("div0", 1, rf"#DE divide error at rip={HEX} \(ring 3\)", 0, {"vector": 0}),
    ("fakefault", 1, r"fault reported with a bad frame address 0x1001000", 0, {}),
    ("ap_null", 2, rf"#PF page fault at rip={HEX} error=0x4 address=0x0 \(ring 3\)", 1,
     {"vector": 14, "cr2": 0}),
    # This KVM backend splits `rep outsb` into one-byte exits (a count > 1 is
    # tested with a fabricated exit in test_kvm_decode.py).
    ("rep_outs", 1, rf"unknown I/O port 0x1234 \(write, 1 bytes\) at rip={HEX}", 0, {}),
]


@pytest.mark.parametrize("mode, vcpus, reason, vcpu, regs", CRASHES,
                         ids=[c[0] for c in CRASHES])
def test_hostile_crash_stops_only_itself(guests, mode, vcpus, reason, vcpu, regs):
    bad, good = run_pair(guests, guests.hostile, [mode], vcpus=vcpus)
    r = bad.result
    assert r.how == "crashed", r.describe()
    assert re.fullmatch(reason, r.reason), r.reason
    assert r.vcpu == vcpu
    assert r.exit_code == 70
    assert "rip" in r.dump and "rsp" in r.dump and r.dump["rip"] != 0
    for k, v in regs.items():
        assert r.dump[k] == v, (k, r.dump)
    m = re.search(rf"at rip=({HEX})", r.reason)
    if m and "vector" in r.dump:
        # a fault reported by the stub: the dump is the guest's frame
        assert r.dump["rip"] == int(m[1], 16)
        assert r.dump["cs"] & 3 == 3
    # It printed its mode, then nothing: it did not go on after the fault.
    expected = f"hostile: {mode}\n"
    if mode == "ap_null":
        expected += "hostile: vCPU 1 reads NULL\n"
    assert bad.console.text == expected
    assert "rip=" in r.describe() and format_dump(r.dump) in r.describe()
    assert_good_ran_to_the_end(good, bad)


def test_triple_fault_of_a_guest_without_idt(guests):
    bad, good = run_pair(guests, guests.triple, [])
    r = bad.result
    assert r.how == "crashed", r.describe()
    assert r.reason == "triple fault (KVM_EXIT_SHUTDOWN)"
    assert r.vcpu == 0
    assert "rip" in r.dump and r.dump["rip"] != 0
    assert bad.console.text == "triple: about to ud2\n"
    assert_good_ran_to_the_end(good, bad)


# mode -> the lines after "hostile: MODE" (each call's result)
ERRORS = {
    "efault": ["at_end ret=-14", "beyond ret=-14", "hole ret=-14", "straddle ret=-14",
               "huge_len ret=-14", "block_beyond ret=-14"],
    "overflow": ["wrap16 ret=-14", "wrap_len ret=-14", "top ret=-14", "block_wrap ret=-14"],
    "enosys": ["nr63 ret=-38", "nr1000 ret=-38", "block63 ret=-38", "block1000 ret=-38",
               "block_2^63 ret=-38"],
    "block_bad": ["hostile: survived"],
}


@pytest.mark.parametrize("mode", list(ERRORS))
def test_bad_hypercall_returns_an_error_and_the_guest_goes_on(guests, mode):
    bad, good = run_pair(guests, guests.hostile, [mode])
    r = bad.result
    # exit status 0: every call returned the expected error (100+i: call i did not)
    assert r.how == "exited", r.describe()
    assert r.status == 0, bad.console.text
    assert bad.console.text == "".join(f"{line}\n" for line in [f"hostile: {mode}"]
                                       + ERRORS[mode])
    assert good.result.how == "exited" and good.result.status == GOOD_STATUS
    assert good.console.text == GOOD_TEXT


def test_many_hostile_domains_at_once_and_the_vmm_goes_on(guests):
    """Every crash mode in one hypervisor at the same time, next to one good
    domain; afterwards the same hypervisor still runs a new domain."""
    modes = [c[0] for c in CRASHES]
    with paravm.Hypervisor(output=None) as hv:
        for mode, vcpus, *_ in CRASHES:
            hv.create_domain(f"h-{mode}", guests.hostile, memory_mib=16, vcpus=vcpus,
                             args=[mode])
        hv.create_domain("triple", guests.triple, memory_mib=16)
        good = hv.create_domain("good", guests.good, memory_mib=16, args=[str(GOOD_STATUS)])
        hv.start_all()
        results = hv.wait_all(WAIT)
        assert results is not None
        for mode in modes:
            assert results[f"h-{mode}"].how == "crashed", (mode, results[f"h-{mode}"])
        assert results["triple"].how == "crashed"
        assert results["good"].how == "exited" and results["good"].status == GOOD_STATUS
        assert good.console.text == GOOD_TEXT
        for name in list(hv.domains):
            hv.destroy(name)
        again = hv.create_domain("again", guests.good, memory_mib=16, args=["9", "1"])
        again.start()
        r = again.wait(WAIT)
        assert r is not None and r.how == "exited" and r.status == 9
        assert again.console.text == "good: start\ngood: tick 1\ngood: done 9\n"


def test_destroy_after_an_mmio_exit(guests):
    hv = paravm.Hypervisor(output=None)
    try:
        d = hv.create_domain("hostile", guests.hostile, memory_mib=16, args=["mmio"])
        d.start()
        r = d.wait(WAIT)
        assert r is not None and r.how == "crashed"
        hv.destroy(d)
        assert not hv.domains
    finally:
        hv.close()
