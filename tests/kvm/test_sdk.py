"""Guest SDK behaviour: interrupt registration, SMP jobs, timed waits."""

import pytest

import paravm

pytestmark = pytest.mark.kvm


@pytest.mark.parametrize("mode, vcpus", [("irqctx", 1), ("smp", 2), ("wait", 1)])
def test_sdk(guests, mode, vcpus):
    with paravm.Hypervisor(output=None) as hv:
        d = hv.create_domain("sdk", guests.good.parent / "sdk.elf", memory_mib=16,
                             vcpus=vcpus, args=[mode])
        d.start()
        r = d.wait(20)
    assert r is not None and r.how == "exited", r
    assert r.status == 0, d.console.text
    assert d.console.text.endswith(f"ok {mode}\n")
    if mode == "smp":
        assert f"pv_smp_start(0) = -{22}" in d.console.text
