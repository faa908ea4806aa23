"""Devices every domain has, and device registration on the buses."""

import pytest

import paravm
from paravm.vm.bus import BusError

pytestmark = pytest.mark.kvm


def test_debugcon_port_writes_to_the_console(test_guests):
    lines = []
    with paravm.Hypervisor(output=lambda name, line: lines.append((name, line))) as hv:
        d = hv.create_domain("dbg", test_guests / "debugcon.elf", memory_mib=8)
        hv.start_all()
        res = d.wait(10)
        assert res.how == "exited" and res.status == 0, res
        assert lines == [("dbg", "via debugcon")]
        assert d.stats()["exits"]["IO_OUT"] >= len("via debugcon\n")


def test_a_device_cannot_claim_the_hypercall_or_debugcon_ports(test_guests):
    class Dev:
        def read(self, offset, data): ...
        def write(self, offset, data): ...

    with paravm.Hypervisor(output=None) as hv:
        d = hv.create_domain("x", test_guests / "debugcon.elf", memory_mib=8)
        with pytest.raises(BusError, match="overlaps hypercall"):
            d.pio_bus.insert(0xE0, 4, Dev(), "mine")
        with pytest.raises(BusError, match="overlaps debugcon"):
            d.pio_bus.insert(0xE8, 2, Dev(), "mine")
        d.pio_bus.insert(0x3F8, 8, Dev(), "uart")   # a free range is fine
        assert d.pio_bus.lookup(0x3FA)[1] == 2
