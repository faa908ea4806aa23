"""lguest I/O with KVM: bindings, console, block and net devices from real guests.

The guest is tests/guests/lguest.c (its modes are listed at its top)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from guest_manifest import wait_console

import paravm
from paravm.config import parse_manifest
from paravm.services.lguest.pcap import read_pcap

pytestmark = pytest.mark.kvm


def elf(guests):
    return guests.good.parent / "lguest.elf"


def manifest(tmp_path, guests, domains):
    """domains: (name, args, [device dicts])."""
    text = ""
    for name, args, devices in domains:
        quoted = ", ".join(f'"{a}"' for a in args)
        text += (f'[[domain]]\nname = "{name}"\nimage = "{elf(guests)}"\nmemory = 16\n'
                 f"args = [{quoted}]\n\n")
        for dev in devices:
            text += "[[domain.device]]\n" + "".join(
                f"{k} = {_toml(v)}\n" for k, v in dev.items()) + "\n"
    return parse_manifest(text, tmp_path / "m.toml")


def _toml(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    return f'"{v}"' if isinstance(v, str) else str(v)


def run(m, host=None, timeout=60, capture=None):
    with paravm.Hypervisor(output=None) as hv:
        doms = hv.create_from_manifest(m)
        if capture:
            hv.lguest.capture(*capture)
        hv.start_all()
        if host:
            host(hv)
        assert hv.wait_all(timeout) is not None, {d.name: d.console.text for d in doms}
        return {d.name: (d.result, d.console.text) for d in doms}


def ok(out, name):
    r, text = out[name]
    assert r.how == "exited" and r.status == 0, (r, text)
    return text


def fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def test_bind_limits_from_a_guest(tmp_path, guests):
    out = run(manifest(tmp_path, guests, [("a", ["bind"], [{"type": "console"}])]))
    assert "bind irq32=0 bind33=0 unbind=1 unbind_again=0" in ok(out, "a")


def test_console_output_and_input_through_dma(tmp_path, guests):
    (tmp_path / "in.txt").write_text("hello\nsecond line\nquit\n")
    m = manifest(tmp_path, guests, [("c", ["console"], [{"type": "console", "input": "in.txt"}])])
    text = ok(run(m), "c")
    assert "hello through DMA" in text
    assert text.index("got: hello") < text.index("got: second line") < text.index("got: quit")


@pytest.mark.parametrize("size, chunk", [(1_049_000, 4096), (1_049_000, 65536), (512 * 7, 512)])
def test_block_reads_match_the_file(tmp_path, guests, size, chunk):
    data = os.urandom(size)
    (tmp_path / "disk.img").write_bytes(data)
    m = manifest(tmp_path, guests, [("r", ["blksum", str(chunk)],
                                     [{"type": "block", "path": "disk.img", "readonly": True}])])
    text = ok(run(m), "r")
    sectors = -(-size // 512)
    assert f"blk sectors={sectors}" in text and f"blk disk_bytes={size}" in text
    padded = data + bytes(sectors * 512 - size)
    assert f"blksum bytes={len(padded)} fnv={fnv1a(padded):016x}" in text


def test_block_writes_reach_the_file(tmp_path, guests):
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(range(256)) * 1024)          # 256 KiB
    before = img.read_bytes()
    m = manifest(tmp_path, guests, [("w", ["blkwrite", "100", "40", "0x5c"],
                                     [{"type": "block", "path": "disk.img"}])])
    assert "blkwrite ok" in ok(run(m), "w")
    after = img.read_bytes()
    assert after[100 * 512:140 * 512] == b"\x5c" * (40 * 512)
    assert after[:100 * 512] == before[:100 * 512] and after[140 * 512:] == before[140 * 512:]


def test_a_read_only_disk_refuses_writes_and_reads_beyond_the_end(tmp_path, guests):
    img = tmp_path / "disk.img"
    img.write_bytes(b"\x07" * 5000)
    m = manifest(tmp_path, guests, [("o", ["blkro"],
                                     [{"type": "block", "path": "disk.img", "readonly": True}])])
    assert "blkro write=-5 beyond=-5" in ok(run(m), "o")
    assert img.read_bytes() == b"\x07" * 5000


def lan(*names_args, lan_name="lan0"):
    return [(n, a, [{"type": "net", "lan": lan_name}]) for n, a in names_args]


def counts(text):
    m = re.search(r"netrecv got=(\d+) bytes=(\d+) bad=(\d+)", text)
    assert m, text
    return tuple(map(int, m.groups()))


def test_net_unicast_promiscuous_and_bystander(tmp_path, guests):
    # slots in manifest order: s=0, t=1, p=2 (promiscuous), x=3 (not addressed)
    m = manifest(tmp_path, guests, lan(("s", ["netsend", "1", "50", "600"]),
                                       ("t", ["netrecv", "50", "5000"]),
                                       ("p", ["netrecv", "50", "5000", "promisc"]),
                                       ("x", ["netrecv", "50", "1500"])))
    out = run(m, capture=("lan0", tmp_path / "lan0.pcap"))
    assert "netsend sent=50 delivered=50" in ok(out, "s")
    assert counts(ok(out, "t")) == (50, 50 * 600, 0)
    assert counts(ok(out, "p")) == (50, 50 * 600, 0)
    assert counts(ok(out, "x"))[0] == 0
    assert "netrecv mac=02:00:02:00:00:00" in out["t"][1]        # t is domain 2
    frames = read_pcap(tmp_path / "lan0.pcap")
    assert len(frames) == 100 and all(len(f) == 600 for f in frames)   # to t and to p
    assert frames[0][:6] == bytes.fromhex("020002000000")              # the destination: t


def test_net_broadcast_reaches_everyone_and_lans_are_isolated(tmp_path, guests):
    doms = lan(("b", ["netbcast", "20", "100"]), ("r1", ["netrecv", "20", "5000"]),
               ("r2", ["netrecv", "20", "5000"]))
    doms += lan(("o", ["netrecv", "20", "1500"]), lan_name="lan1")   # another LAN
    out = run(manifest(tmp_path, guests, doms))
    assert "netbcast sent=20" in ok(out, "b")
    assert counts(ok(out, "r1"))[:1] == (20,) and counts(ok(out, "r2"))[:1] == (20,)
    assert counts(ok(out, "o"))[0] == 0


def test_net_oversize_frames_are_dropped(tmp_path, guests):
    out = run(manifest(tmp_path, guests, lan(("b", ["netbig"]), ("r", ["netrecv", "2", "1500"]))))
    assert "netbig driver=-7 raw=0 delivered=1" in ok(out, "b")   # -E2BIG; dropped
    got, nbytes, _bad = counts(ok(out, "r"))
    assert (got, nbytes) == (1, 1514)


def test_a_bad_dma_kills_only_the_sender(tmp_path, guests):
    m = manifest(tmp_path, guests, [("bad", ["badsend"], [{"type": "console"}]),
                                    ("good", ["bind"], [{"type": "console"}])])
    out = run(m)
    r, text = out["bad"]
    assert r.how == "crashed" and "bad dma section" in r.reason, r
    assert "survived" not in text
    ok(out, "good")


def test_launcher_pauses_and_resumes_a_running_guest(tmp_path, guests):
    m = manifest(tmp_path, guests, [("c", ["console"], [{"type": "console"}])])

    def host(hv):
        la = hv.lguest.launcher("c")
        d = hv.domains["c"]
        wait_console(d, r"hello through DMA", 10)
        assert la.break_(True) is True                   # parked
        la.devices[0].feed(b"while paused\n")
        time.sleep(0.1)
        assert "got: while paused" not in d.console.text  # it cannot run
        la.break_(False)
        la.devices[0].feed(b"quit\n")

    text = ok(run(m, host), "c")
    assert text.index("got: while paused") < text.index("got: quit")


def test_the_lguest_example_runs_with_a_capture(hello_elf, tmp_path):
    """examples/lguest through the CLI: a disk read through DMA, ping/pong on a LAN."""
    repo = Path(__file__).resolve().parents[2]
    pcap = tmp_path / "lan0.pcap"
    p = subprocess.run([sys.executable, "-m", "paravm.cli.main", "run",
                        str(repo / "examples/lguest/lguest.toml"), "--capture", f"lan0={pcap}"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    size = (repo / "examples/lguest/lguest.toml").stat().st_size
    assert f"reader| disk: {size} bytes" in p.stdout
    assert "ping| sent ping -> 'pong 2'" in p.stdout
    frames = read_pcap(pcap)
    assert len(frames) == 6 and frames[0][14:20] == b"ping 0" and frames[1][14:20] == b"pong 0"


def test_capture_of_an_unknown_lan_is_a_usage_error(hello_elf):
    repo = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-m", "paravm.cli.main", "run",
                        str(repo / "examples/lguest/lguest.toml"), "--capture", "nolan=/tmp/x"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no LAN 'nolan'" in p.stderr


def test_console_input_from_stdin_through_the_cli(tmp_path, guests):
    m = tmp_path / "m.toml"
    m.write_text(f'[[domain]]\nname = "c"\nimage = "{elf(guests)}"\nmemory = 16\n'
                 'args = ["console"]\n\n[[domain.device]]\ntype = "console"\ninput = "stdin"\n')
    p = subprocess.run([sys.executable, "-m", "paravm.cli.main", "run", str(m)],
                       input="typed\nquit\n", capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "c| got: typed" in p.stdout and "c| got: quit" in p.stdout


def test_a_domain_without_devices_finds_none_and_goes_on(tmp_path, guests):
    """lguest_present() reads the boot info: no descriptor page is touched."""
    m = manifest(tmp_path, guests, [("bare", ["console"], []),
                                    ("dev", ["bind"], [{"type": "console"}])])
    out = run(m)
    r, text = out["bare"]
    assert r.how == "exited" and r.status == 1, (r, text)        # not crashed
    assert "FAILED console probe: -19" in text
    ok(out, "dev")
