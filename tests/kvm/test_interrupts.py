"""Interrupt delivery: MSI and irqfd wake a guest blocked in the stub; the
LAPIC timer ends a wait with a timeout."""

import time

import pytest

import paravm

pytestmark = pytest.mark.kvm


def _until(domain, text, timeout=5.0):
    end = time.monotonic() + timeout
    while text not in domain.console.text:
        if domain.stopped or time.monotonic() > end:
            raise AssertionError(f"{text!r} not seen; console={domain.console.text!r} "
                                 f"result={domain.result}")
        time.sleep(0.001)


def test_msi_and_irqfd_wake_a_blocked_guest(test_guests):
    with paravm.Hypervisor(output=None) as hv:
        d = hv.create_domain("waiter", test_guests / "irqwait.elf", memory_mib=8,
                             args=["wake", "3"])
        hv.start_all()
        _until(d, "ready")
        irq = d.irqfd(0, 0x40)
        irq.fire()
        _until(d, "tick 1 vector 0x40")
        assert d.signal_msi(0, 0x40) > 0
        _until(d, "tick 2 vector 0x40")
        irq.fire()
        _until(d, "tick 3 vector 0x40")
        res = d.wait(5)
        assert res is not None and res.how == "exited" and res.status == 0, res


def test_wait_times_out_on_the_lapic_timer(test_guests):
    with paravm.Hypervisor(output=None) as hv:
        d = hv.create_domain("sleeper", test_guests / "irqwait.elf", memory_mib=8,
                             args=["timeout", "20"])
        t0 = time.monotonic()
        hv.start_all()
        res = d.wait(5)
        elapsed = time.monotonic() - t0
        assert res is not None and res.how == "exited", res
        assert res.status == 0, d.console.text
        assert "0 vectors" in d.console.text
        assert elapsed >= 0.02


def test_interrupt_targets_are_checked(test_guests):
    with paravm.Hypervisor(output=None) as hv:
        d = hv.create_domain("t", test_guests / "irqwait.elf", memory_mib=8,
                             args=["timeout", "1"])
        with pytest.raises(ValueError, match="no vCPU 1"):
            d.signal_msi(1, 0x40)
        with pytest.raises(ValueError, match="vector"):
            d.irqfd(0, 0x10)
