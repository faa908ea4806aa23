"""Xen event channels with KVM: guest <-> guest and guest <-> host ping-pong
delivered as upcall interrupts, the SDK against the VMM in one guest, and a
hostile guest (tests/guests/evtchn.c)."""

import re
import selectors

import pytest

import paravm
from paravm.services.evtchn import abi

from guest_manifest import guests_manifest, wait_console

pytestmark = pytest.mark.kvm


@pytest.fixture(scope="module")
def evtchn_elf(test_guests):
    return test_guests / "evtchn.elf"


def test_two_guests_ping_pong_through_an_interdomain_channel(tmp_path, evtchn_elf):
    n = 200
    m = guests_manifest(tmp_path, evtchn_elf, [("a", ["ping", "2", str(n)]), ("b", ["pong", "1", str(n)])])
    with paravm.Hypervisor(output=None) as hv:
        a, b = hv.create_from_manifest(m)
        hv.start_all()
        assert hv.wait_all(60) is not None, (a.console.text, b.console.text)
        for d in (a, b):
            assert d.result.how == "exited" and d.result.status == 0, d.console.text
        assert f"RESULT ping n={n} events={n + 1}" in a.console.text
        assert f"pong echoed {n} events on port 1" in b.console.text
        # one event_channel_op per send plus the set-up (alloc / bind): the
        # waits were interrupts, not polling through the VMM
        assert a.stats()["hypercalls"]["event_channel_op"] == 1 + n
        assert b.stats()["hypercalls"]["event_channel_op"] == 2 + n
        # both ends closed when their domains exited
        assert hv.evtchn.port_status(1, 1).status == abi.EVTCHNSTAT_closed


def test_guest_and_host_ping_pong_through_a_handle(tmp_path, evtchn_elf):
    n = 100
    m = guests_manifest(tmp_path, evtchn_elf, [("g", ["host", str(n), "1"])])
    with paravm.Hypervisor(output=None) as hv, selectors.DefaultSelector() as sel:
        (g,) = hv.create_from_manifest(m)
        h = hv.evtchn.open()
        back = h.bind_unbound_port(1)               # the guest binds it: g -> host
        assert back == 1
        sel.register(h, selectors.EVENT_READ)
        hv.start_all()
        found = wait_console(g, r"ready port=(\d+) back=(\d+)")
        mine = h.bind_interdomain(1, int(found.group(1)))   # host -> g
        assert h.pending() == mine                  # a new binding starts pending
        h.unmask(mine)
        for i in range(n):
            h.notify(mine)
            assert sel.select(5), f"round {i}: no event from the guest"
            assert h.pending() == back and h.pending() is None
            h.unmask(back)
        r = g.wait(30)
        assert r is not None and r.how == "exited" and r.status == 0, g.console.text
        assert f"host rounds {n}" in g.console.text
        # the guest's ports closed at exit: the host's ends are UNBOUND for it, silently
        assert sel.select(0) == []
        for port in (mine, back):
            st = hv.evtchn.port_status(0, port)
            assert (st.status, st.remote_dom) == (abi.EVTCHNSTAT_unbound, 1)
        h.notify(mine)                              # dropped, no error
        h.close()
        assert hv.evtchn.port_status(0, mine).status == abi.EVTCHNSTAT_closed


def test_the_sdk_against_the_vmm_in_one_guest(tmp_path, evtchn_elf):
    m = guests_manifest(tmp_path, evtchn_elf, [("a", ["api"])], vcpus=2)
    with paravm.Hypervisor(output=None) as hv:
        (a,) = hv.create_from_manifest(m)
        hv.start_all()
        r = a.wait(30)
        text = a.console.text
        assert r is not None and r.how == "exited" and r.status == 0, text
        # dom = the host: EPERM; an unknown domain: ESRCH; the FIFO ABI: ENOSYS;
        # an argument in the reserved low memory: EFAULT
        assert "errors: eperm=-1 esrch=-3 enosys=-38 efault=-14" in text
        assert "loopback p=1 q=2 self-bind=-22" in text
        assert "masked then unmasked: delivered" in text
        assert "late handler: delivered" in text
        assert "status q: 2 dom=1 port=1 vcpu=0" in text
        assert "ipi delivered, bind_ipi(vcpu 9)=-2 bind_vcpu(q, 9)=-2" in text
        assert "vcpu 1 handled it: 1" in text
        assert "wait: timeout=0 got=1" in text
        assert "after close: p status=1 dom=1 send(p)=0 send(q)=-22 close(q)=-22" in text
        # a restarted domain gets fresh ports and a clean shared_info: the same run passes
        a2 = hv.restart("a")
        r = a2.wait(30)
        assert r is not None and r.status == 0 and "api ok" in a2.console.text, a2.console.text


def test_a_hostile_guest_cannot_break_the_vmm_or_its_neighbour(tmp_path, evtchn_elf):
    n = 50
    m = guests_manifest(tmp_path, evtchn_elf, [("e", ["evil"]), ("a", ["ping", "3", str(n)]),
                                        ("b", ["pong", "2", str(n)])])
    with paravm.Hypervisor(output=None) as hv:
        e, a, b = hv.create_from_manifest(m)
        hv.start_all()
        assert hv.wait_all(60) is not None
        for d in (e, a, b):
            assert d.result.how == "exited" and d.result.status == 0, d.console.text
        found = re.search(r"evil ok=(\d+) err=(\d+) loopback \d+->\d+ works", e.console.text)
        assert found and int(found.group(1)) > 0 and int(found.group(2)) > 0, e.console.text
        assert f"pong echoed {n} events" in b.console.text
