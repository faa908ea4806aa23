"""Hypervisor.create_domain refusals and irqfd reuse."""

import pytest

import paravm

pytestmark = pytest.mark.kvm


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="Bad"), "must match"),
    (dict(name="host-name-that-is-far-too-long-to-fit"), "must match"),
    (dict(args=["a\0b"]), "NUL"),
    (dict(domid=0), "0 is the host"),
    (dict(vcpus=0), "vcpus"),
    (dict(vcpus=33), "vcpus"),
    (dict(memory_mib=1), "memory"),
    (dict(memory_mib=4, vcpus=32), "too small"),
])
def test_bad_domain_parameters_are_refused(guests, kwargs, match):
    with paravm.Hypervisor(output=None) as hv:
        args = dict(name="ok", image=guests.good, memory_mib=16)
        args.update(kwargs)
        with pytest.raises(ValueError, match=match):
            hv.create_domain(args.pop("name"), args.pop("image"), **args)
        assert hv.domains == {}


def test_domids_are_unique(guests):
    with paravm.Hypervisor(output=None) as hv:
        a = hv.create_domain("a", guests.good, memory_mib=16, domid=2)
        b = hv.create_domain("b", guests.good, memory_mib=16)
        c = hv.create_domain("c", guests.good, memory_mib=16)
        assert a.domid == 2 and len({a.domid, b.domid, c.domid}) == 3
        with pytest.raises(ValueError, match="domid 2 is taken"):
            hv.create_domain("d", guests.good, memory_mib=16, domid=2)


def test_irqfd_routes_are_reused(guests):
    # The kernel allows 4096 GSIs; 5000 create/close cycles must not run out.
    with paravm.Hypervisor(output=None) as hv:
        d = hv.create_domain("a", guests.good, memory_mib=16)
        gsis = set()
        for _ in range(5000):
            irq = d.irqfd(0, 0x40)
            gsis.add(irq.gsi)
            irq.close()
        assert len(gsis) == 1


def test_the_hypervisor_owns_its_event_loop():
    import threading
    hv = paravm.Hypervisor(output=None)
    ran = threading.Event()
    hv.loop.call_soon(ran.set)
    assert ran.wait(5)
    thread = hv.loop._thread
    hv.close()
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        hv.loop
