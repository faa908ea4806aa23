"""vchan with KVM: 64 MiB streamed guest -> guest, guest -> host and host ->
guest through libxenvchan-layout channels (grants + an event channel +
xenstore), checksummed with CRC-32 on both sides (tests/guests/vchan.c)."""

import random
import re
import threading
import time
import zlib

import pytest

import paravm
from paravm.services.vchan import Vchan

from guest_manifest import guests_manifest

pytestmark = pytest.mark.kvm

MiB = 1 << 20


@pytest.fixture(scope="module")
def vchan_elf(test_guests):
    return test_guests / "vchan.elf"


def crc_of(dom):
    m = re.search(r"crc32 ([0-9a-f]{8}) bytes (\d+)", dom.console.text)
    assert m, dom.console.text
    return int(m.group(1), 16), int(m.group(2))


def finished(dom, timeout=120):
    r = dom.wait(timeout)
    assert r is not None and r.how == "exited" and r.status == 0, dom.console.text
    assert "done" in dom.console.text


@pytest.mark.parametrize("rings", [("65536", "65536"), ("1024", "2048")],
                         ids=["64k-rings", "in-page-rings"])
def test_guest_to_guest(tmp_path, vchan_elf, rings):
    total = 64 * MiB if rings[0] == "65536" else 4 * MiB     # 1 KiB rings: an event per KiB
    m = guests_manifest(tmp_path, vchan_elf, memory=32, domains= [
        ("srv", ["server", "2", "data/vchan", "recv", str(total), *rings]),
        ("cli", ["client", "1", "/local/domain/1/data/vchan", "send", str(total)])])
    with paravm.Hypervisor(output=None) as hv:
        srv, cli = hv.create_from_manifest(m)
        hv.start_all()
        finished(srv)
        finished(cli)
        assert crc_of(srv) == crc_of(cli)
        assert crc_of(srv)[1] == total


def test_guest_to_host(tmp_path, vchan_elf):
    total = 64 * MiB
    m = guests_manifest(tmp_path, vchan_elf, memory=32, domains= [("g", ["server", "0", "data/vchan", "send", str(total)])])
    with paravm.Hypervisor(output=None) as hv:
        (g,) = hv.create_from_manifest(m)
        hv.start_all()
        crc, got = 0, 0
        buf = bytearray(1 << 16)
        with Vchan.client(hv, 1, "/local/domain/1/data/vchan", timeout=30) as v:
            while got < total:
                n = v.recv_into(memoryview(buf)[:min(len(buf), total - got)])
                assert n, "the guest went away early"
                crc = zlib.crc32(memoryview(buf)[:n], crc)
                got += n
        finished(g)
        assert crc_of(g) == (crc, total)


def test_host_to_guest(tmp_path, vchan_elf):
    total = 64 * MiB
    data = random.Random(5).randbytes(total)
    m = guests_manifest(tmp_path, vchan_elf, memory=32, domains= [("g", ["client", "0", "/local/domain/0/data/vchan",
                                              "recv", str(total)])])
    with paravm.Hypervisor(output=None) as hv:
        (g,) = hv.create_from_manifest(m)
        with Vchan.server(hv, 1, "data/vchan", 65536, 65536) as v:
            hv.start_all()
            assert v.write(data) == total
            # the guest closes once it has everything
            deadline = time.monotonic() + 60
            while v.is_open() and time.monotonic() < deadline:
                v.wait(0.1)
        finished(g)
        assert crc_of(g) == (zlib.crc32(data), total)
