"""Pause / resume / stop of running vCPUs: no lost request, no hang."""

import time

import pytest

import paravm
from paravm.vm.vcpu import VcpuState

pytestmark = pytest.mark.kvm


@pytest.mark.parametrize("mode", ["forever", "spin"])
def test_resume_then_pause_at_once_parks_again(guests, mode):
    with paravm.Hypervisor(output=None) as hv:
        d = hv.create_domain("p", guests.hostile, memory_mib=16, args=[mode])
        d.start()
        v = d.vcpus[0]
        for _ in range(200):
            assert v.pause(5)
            assert v.state is VcpuState.PAUSED
            v.resume()
        assert v.pause(5)
        time.sleep(0.02)
        assert v.state is VcpuState.PAUSED       # still parked: not running the guest
        v.resume()
        d.stop("test")
        assert d.wait(5).how == "stopped"


def test_stop_wins_over_a_pause(guests):
    with paravm.Hypervisor(output=None) as hv:
        d = hv.create_domain("p", guests.hostile, memory_mib=16, args=["spin"])
        d.start()
        assert d.pause()
        d.stop("test")
        assert d.vcpus[0].pause(1) is False     # a stopping vCPU does not pause
        assert d.wait(5).how == "stopped"
        assert d.vcpus[0].join(1)


def test_a_domain_paused_before_start_parks_as_it_starts(guests):
    with paravm.Hypervisor(output=None) as hv:
        d = hv.create_domain("p", guests.good, memory_mib=16, args=["0", "0"])
        assert d.pause()
        d.start()
        time.sleep(0.1)
        assert d.console.text == ""             # the guest has not run
        d.resume()
        r = d.wait(5)
        assert r.how == "exited" and r.status == 0
        assert "good: done 0" in d.console.text


def test_stop_before_start_stops_at_once(guests):
    with paravm.Hypervisor(output=None) as hv:
        d = hv.create_domain("p", guests.good, memory_mib=16, args=["0", "0"])
        d.stop("never mind")
        assert d.stopped
        assert d.wait(0).how == "stopped"
        with pytest.raises(RuntimeError, match="stopped"):
            d.start()
        hv.destroy(d)
        assert "p" not in hv.domains
