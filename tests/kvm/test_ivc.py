"""IVC with KVM: guest<->guest through in-kernel doorbells, guest<->host through a
HostEndpoint, the cookie API's refusals, and loopback."""

import pytest

import paravm
from paravm.config import parse_manifest

pytestmark = pytest.mark.kvm


def manifest(tmp_path, guests, domains, queues):
    ivc = guests.good.parent / "ivc.elf"
    text = ""
    for name, args in domains:
        quoted = ", ".join(f'"{a}"' for a in args)
        text += f'[[domain]]\nname = "{name}"\nimage = "{ivc}"\nmemory = 16\nargs = [{quoted}]\n\n'
    for qid, a, b, nframes, fs in queues:
        text += (f'[[ivc]]\nid = {qid}\npeers = ["{a}", "{b}"]\nnframes = {nframes}\n'
                 f"frame_size = {fs}\n\n")
    return parse_manifest(text, tmp_path / "m.toml")


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
