"""The [[domain.device]] tables: lguest console, block and net devices."""

import pytest

from paravm.config import BlockSpec, ConsoleSpec, ManifestError, NetSpec, parse_manifest


@pytest.fixture
def mdir(tmp_path):
    (tmp_path / "g.elf").write_bytes(b"x")
    (tmp_path / "disk.img").write_bytes(bytes(1000))
    (tmp_path / "in.txt").write_text("hello\n")
    return tmp_path


def load(mdir, devices, memory=64):
    text = f'[[domain]]\nname = "a"\nimage = "g.elf"\nmemory = {memory}\n\n'
    for d in devices:
        text += "[[domain.device]]\n" + "".join(f"{k} = {v}\n" for k, v in d.items()) + "\n"
    return parse_manifest(text, mdir / "m.toml")


def error(mdir, devices, **kw):
    with pytest.raises(ManifestError) as e:
        load(mdir, devices, **kw)
    return e.value.key, e.value.reason


def test_devices_in_order(mdir):
    m = load(mdir, [{"type": '"console"', "input": '"in.txt"'},
                    {"type": '"block"', "path": '"disk.img"', "readonly": "true"},
                    {"type": '"net"', "lan": '"lan0"'}, {"type": '"block"', "path": '"disk.img"'}])
    assert m.domains[0].devices == (
        ConsoleSpec(input=mdir / "in.txt"), BlockSpec(path=mdir / "disk.img", readonly=True),
        NetSpec(lan="lan0"), BlockSpec(path=mdir / "disk.img", readonly=False))
    assert load(mdir, [{"type": '"console"', "input": '"stdin"'}]).domains[0].devices == (
        ConsoleSpec(input="stdin"),)
    assert load(mdir, []).domains[0].devices == ()


@pytest.mark.parametrize("devices, key, reason", [
    ([{"type": '"floppy"'}], "domain[0].device[0].type", "invalid value 'floppy'"),
    ([{"type": '"block"'}], "domain[0].device[0].path", "missing required key"),
    ([{"type": '"block"', "path": '"nope.img"'}], "domain[0].device[0].path", "file not found"),
    ([{"type": '"net"', "lan": '"Bad LAN"'}], "domain[0].device[0].lan", "must match"),
    ([{"type": '"net"', "lan": '"x"'}, {"type": '"net"', "lan": '"x"'}],
     "domain[0].device[1].lan", "a second card on LAN 'x'"),
    ([{"type": '"console"'}, {"type": '"console"'}], "domain[0].device[1].type",
     "at most one console"),
    ([{"type": '"console"', "input": '"missing.txt"'}], "domain[0].device[0].input",
     "file not found"),
    ([{"type": '"net"', "lan": '"x"', "mac": '"02:00"'}], "domain[0].device[0].mac", "unknown key"),
    ([{"type": '"block"', "path": '"disk.img"', "readonly": '"yes"'}],
     "domain[0].device[0].readonly", "expected bool, got str"),
])
def test_bad_devices(mdir, devices, key, reason):
    k, r = error(mdir, devices)
    assert k == key and r.startswith(reason), (k, r)


def test_limits(mdir):
    assert error(mdir, [{"type": '"net"', "lan": f'"l{i}"'} for i in range(17)]) == (
        "domain[0].device", "at most 16 devices")
    k, r = error(mdir, [{"type": '"console"'}], memory=3072)
    assert k == "domain[0].memory" and "below 3072" in r
