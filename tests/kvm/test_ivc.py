"""IVC with KVM: guest<->guest through in-kernel doorbells, guest<->host through a
HostEndpoint, the cookie API's refusals, and loopback."""

import asyncio
import errno
import re
import subprocess
import sys
from pathlib import Path

import pytest
from guest_manifest import wait_console

import paravm
from paravm.config import parse_manifest
from paravm.services.ivc.protocol import IvcError

pytestmark = pytest.mark.kvm


def manifest(tmp_path, guests, domains, queues, extra=""):
    ivc = guests.good.parent / "ivc.elf"
    text = ""
    for name, args in domains:
        quoted = ", ".join(f'"{a}"' for a in args)
        text += f'[[domain]]\nname = "{name}"\nimage = "{ivc}"\nmemory = 16\nargs = [{quoted}]\n\n'
    for qid, a, b, nframes, fs in queues:
        text += (f'[[ivc]]\nid = {qid}\npeers = ["{a}", "{b}"]\nnframes = {nframes}\n'
                 f"frame_size = {fs}\n\n")
    return parse_manifest(text + extra, tmp_path / "m.toml")


def run(m, host=None, timeout=30):
    with paravm.Hypervisor(output=None) as hv:
        doms = hv.create_from_manifest(m)
        hv.start_all()
        if host:
            host(hv)
        assert hv.wait_all(timeout) is not None, [d.console.text for d in doms]
        return {d.name: (d.result, d.console.text, d.stats()) for d in doms}


def test_guest_to_guest_ping_pong_never_exits_for_doorbells(tmp_path, guests):
    m = manifest(tmp_path, guests, [("a", ["ping", "0", "300"]), ("b", ["echo", "0", "300"])],
                 [(0, "a", "b", 8, 256)])
    out = run(m)
    for name in "ab":
        r, text, stats = out[name]
        assert r.how == "exited" and r.status == 0, (r, text)
        # printf, boot mark, exit and the IVC info calls only: the 600 doorbells
        # went guest -> kernel -> guest, never to the VMM
        assert stats["exits"].get("HYPERCALL", 0) < 12, stats
        assert set(stats["exits"]) <= {"HYPERCALL", "INTR"}, stats
    assert "RESULT ping n=300" in out["a"][1]
    assert "echoed 300 frames" in out["b"][1]


def test_guest_to_host_frames_both_ways(tmp_path, guests):
    m = manifest(tmp_path, guests, [("c", ["echo", "5", "40"])], [(5, "c", "host", 4, 128)])

    def host(hv):
        ep = hv.ivc.host_endpoint(5)
        assert ep.peer_vmid == 1 and (ep.nframes, ep.frame_size) == (4, 128)
        ep.establish(5)
        for i in range(40):
            ep.write_wait(bytes([i]) + bytes(range(1, 100)), 5)
            got = ep.read_wait(timeout=5)
            assert got[0] == i + 1 and got[1:100] == bytes(range(1, 100))
            assert got[100:] == bytes(28)          # zero padded by the guest's write

    out = run(m, host)
    r, text, _ = out["c"]
    assert r.how == "exited" and r.status == 0, text
    assert "established: queue 5, 4 x 128 bytes, peer 0" in text


def test_cookie_api_refusals(tmp_path, guests):
    m = manifest(tmp_path, guests, [("a", ["api", "2"]), ("b", ["api", "2"])],
                 [(2, "a", "b", 2, 64)])
    out = run(m)
    r, text, _ = out["a"]
    assert r.status == 0, text
    # second reserve -EBUSY (16), unknown id -ENODEV (19), loopback on a reserved
    # queue -EBUSY, unreserve twice -> 0 then -EINVAL; vmid 1, peer 2, vector 0x40
    assert "again=-16 none=-19 loopback=-16 unreserve=0,-22 vmid=1 peer=2 irq=0x40" in text


def test_a_guest_without_queues_gets_probe_defer(tmp_path, guests):
    m = manifest(tmp_path, guests, [("a", ["api", "0"])], [])
    out = run(m)
    r, text, _ = out["a"]
    assert r.status == 3 and "reserve 0: -517" in text


def test_loopback_queue_echoes_through_the_kernel_echo(tmp_path, guests):
    m = manifest(tmp_path, guests, [("a", ["loopback", "4", "50"])], [(4, "a", "a", 4, 128)])
    r, text, stats = run(m)["a"]
    assert r.how == "exited" and r.status == 0, text
    assert "loopback echoed 50 frames" in text
    # 100 doorbells (50 frames each way) rang in the kernel, none in the VMM
    assert stats["exits"].get("HYPERCALL", 0) < 12, stats


def test_every_cookie_call_from_a_guest(tmp_path, guests):
    m = manifest(tmp_path, guests, [("c", ["cookies", "3"])], [(3, "c", "host", 4, 64)])

    def host(hv):
        ep = hv.ivc.host_endpoint(3)
        ep.establish(5)
        d = hv.domains["c"]
        wait_console(d, r"queue full", 10)                 # read nothing before
        got = [ep.read_wait(timeout=5) for _ in range(4)]
        assert got[0] == b"POKE!" + bytes(59)
        assert got[1] == b"ZERO-COPY" + bytes(55)
        assert got[2] == b"WRITE" + bytes(59)        # write zero-pads the frame
        assert got[3] == b"FOURTH" + bytes(58)
        ep.write_wait(b"PEEKME", 5)
        ep.write_wait(b"NEXT", 5)
        assert ep.read_wait(5, timeout=5) == b"READY"
        ep.write_wait(b"CALLBACK", 5)

    r, text, _ = run(m, host)["c"]
    assert r.how == "exited" and r.status == 0, text
    assert "IVC#3: IRQ=64 nframes=4 frame_size=64 offset=0" in text
    assert re.search(r"cookies ok rx_calls=1 tx_calls=[1-9]", text), text


def test_mempool_shared_with_the_host(tmp_path, guests):
    m = manifest(tmp_path, guests, [("g", ["mempool", "9"])], [],
                 '[[ivc_mempool]]\nid = 9\npeers = ["host", "g"]\nsize = 8192\n')
    with paravm.Hypervisor(output=None) as hv:
        (d,) = hv.create_from_manifest(m)
        pool = hv.ivc.host_mempool(9)
        pool[:20] = b"hello from the host\0"
        hv.start_all()
        r = d.wait(30)
        assert r is not None and r.status == 0, d.console.text
        assert "mempool 9: 8192 bytes, peer 0, says 'hello from the host'" in d.console.text
        assert bytes(pool[4096:4117]) == b"reply from the guest\0"


def test_malicious_peer_guest_gives_silence_not_a_crash(tmp_path, guests):
    m = manifest(tmp_path, guests, [("a", ["victim", "1", "1500"]), ("b", ["evil", "1"])],
                 [(1, "a", "b", 8, 64)])
    out = run(m)
    r, text, _ = out["a"]
    assert r.how == "exited" and r.status == 0, text
    found = re.search(r"victim ok=(\d+) empty=(\d+) reset=(\d+) other=(\d+) wakes=(\d+)", text)
    assert found, text
    ok, empty, reset, other, wakes = map(int, found.groups())
    # over-full counters read as empty; a garbage state is ignored; the storm only wakes
    assert (ok, reset, other) == (0, 0, 0) and empty > 0 and wakes > 0
    rb, textb, statsb = out["b"]
    assert rb.status == 0 and "evil done" in textb
    assert statsb["exits"].get("HYPERCALL", 0) < 12, statsb     # 22000 doorbells: no exits


def test_malicious_guest_against_a_host_endpoint(tmp_path, guests):
    m = manifest(tmp_path, guests, [("b", ["evil", "6"])], [(6, "b", "host", 8, 64)])

    def host(hv):
        ep = hv.ivc.host_endpoint(6)
        ep.establish(5)
        assert hv.domains["b"].wait(30).status == 0
        assert ep.ack() > 0                      # the storm rang us
        assert ep.notified() == 0                # state 7 is ignored: still established
        assert not ep.can_read()
        with pytest.raises(IvcError) as e:
            ep.read()
        assert e.value.errno == errno.ENOMEM     # w - r out of range reads as empty

    r, text, _ = run(m, host)["b"]
    assert r.status == 0, text


def test_a_peer_that_dies_mid_stream_then_restarts(tmp_path, guests):
    m = manifest(tmp_path, guests, [("a", ["survivor", "2"]), ("b", ["crasher", "2", "5"])],
                 [(2, "a", "b", 4, 64)])

    def host(hv):
        rb = hv.domains["b"].wait(30)
        assert rb is not None and rb.how == "crashed", rb
        assert not hv.domains["a"].stopped        # the survivor goes on
        b2 = hv.restart("b", args=["sender", "2"])
        assert b2.domid == 2 and b2 is hv.domains["b"]

    out = run(m, host)
    r, text, _ = out["a"]
    assert r.how == "exited" and r.status == 0, text
    found = re.search(r"peer went away after (\d) frames: ECONNRESET", text)
    assert found and int(found.group(1)) <= 5, text
    assert "new peer says 'hello again'" in text
    assert out["b"][0].status == 0, out["b"][1]


def test_restart_refuses_a_running_domain(tmp_path, guests):
    m = manifest(tmp_path, guests, [("a", ["victim", "0", "2000"])], [(0, "a", "host", 2, 64)])
    with paravm.Hypervisor(output=None) as hv:
        hv.create_from_manifest(m)
        hv.start_all()
        with pytest.raises(RuntimeError, match="running"):
            hv.restart("a")
        hv.stop_all()


def test_host_endpoint_under_asyncio(tmp_path, guests):
    m = manifest(tmp_path, guests, [("c", ["echo", "5", "20"])], [(5, "c", "host", 4, 128)])

    def host(hv):
        ep = hv.ivc.host_endpoint(5)
        ep.establish(5)

        async def exchange():
            loop = asyncio.get_running_loop()
            rung = asyncio.Event()
            loop.add_reader(ep.fileno(), rung.set)
            try:
                replies = []
                for i in range(20):
                    ep.write(bytes([i]) * 8)
                    while not ep.can_read():
                        await asyncio.wait_for(rung.wait(), 5)
                        rung.clear()
                        ep.ack()
                    replies.append(ep.read(8))
                return replies
            finally:
                loop.remove_reader(ep.fileno())

        replies = asyncio.run(exchange())
        assert replies == [bytes([i + 1]) + bytes([i]) * 7 for i in range(20)]

    r, text, _ = run(m, host)["c"]
    assert r.status == 0, text


def test_the_ivc_examples_run(hello_elf):
    """examples/ivc: guest to guest through the CLI, and the host as a peer."""
    repo = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-m", "paravm.cli.main", "run",
                        str(repo / "examples/ivc/ivc.toml")], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert "client| sent 'inter-VM', got 'INTER-VM'" in p.stdout
    assert "server| served 3 frames from vmid 1" in p.stdout
    p = subprocess.run([sys.executable, str(repo / "examples/ivc/host.py")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "host| sent 'host', got 'HOST'" in p.stdout
