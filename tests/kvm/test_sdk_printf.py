"""The SDK's printf family formats exactly as the host's libc (C99 7.19.6.1
for the conversions it supports), and long output is not cut."""

import subprocess

import pytest

import paravm

pytestmark = pytest.mark.kvm


def test_sdk_printf_matches_host_libc(guests):
    host = subprocess.run([str(guests.good.parent / "printf.host")], capture_output=True, text=True,
                          check=True).stdout
    with paravm.Hypervisor(output=None) as hv:
        d = hv.create_domain("pf", guests.good.parent / "printf.elf", memory_mib=16)
        d.start()
        r = d.wait(10)
    assert r.how == "exited" and r.status == 0, r
    got = d.console.text
    for want_line, got_line in zip(host.splitlines(), got.splitlines()):
        assert got_line == want_line
    assert got == host
    assert "long=3001" in got and "z" * 3000 in got
