"""The PVZ connection with KVM: guests bring the example GPU up through the
PVZ calls (both heap origins), a hostile guest gets defined errors, a
crashing guest is unmapped and taken offline while another goes on
(tests/guests/pvz.c)."""

import re

import pytest

import paravm
from paravm.arch.x86 import layout as L
from paravm.config import parse_manifest
from paravm.devices.pvzgpu import PvzGpu
from paravm.services.pvz import abi as A

from guest_manifest import wait_console

pytestmark = pytest.mark.kvm

HEAP = 1 << 20


@pytest.fixture(scope="module")
def pvz_elf(test_guests):
    return test_guests / "pvz.elf"


def pvz_manifest(tmp_path, elf, domains, *, origin="guest", gpu_heap=0, fw_heap=HEAP):
    """*domains*: ``(name, args, osid, priority)``; osid None: no PVZ."""
    text = (f'[pvz]\norigin = "{origin}"\nfw_heap_size = {fw_heap}\n'
            f"gpu_heap_size = {gpu_heap}\n\n")
    for name, args, osid, prio in domains:
        quoted = ", ".join(f'"{a}"' for a in args)
        text += f'[[domain]]\nname = "{name}"\nimage = "{elf}"\nmemory = 32\nargs = [{quoted}]\n'
        if osid is not None:
            text += f"pvz = {{ osid = {osid}, priority = {prio} }}\n"
        text += "\n"
    return parse_manifest(text, tmp_path / "m.toml")


def run_all(hv, m, timeout=60):
    doms = hv.create_from_manifest(m)
    hv.start_all()
    assert hv.wait_all(timeout) is not None, [d.console.text for d in doms]
    return doms


def result(dom):
    found = re.search(r"RESULT (.*)", dom.console.text)
    assert found, dom.console.text
    return dict(kv.split("=") for kv in found.group(1).split())


def test_two_guests_bring_the_gpu_up_with_their_own_heaps(tmp_path, pvz_elf):
    m = pvz_manifest(tmp_path, pvz_elf, [("a", ["work"], 1, 3), ("b", ["work"], 2, 1)])
    with paravm.Hypervisor(output=None) as hv:
        a, b = run_all(hv, m)
        for d, osid, prio in ((a, 1, 3), (b, 2, 1)):
            assert d.result.how == "exited" and d.result.status == 0, d.console.text
            r = result(d)
            # the OSID the VMM stamped, the priority OnVmOnline gave
            assert (int(r["osid"]), int(r["prio"])) == (osid, prio)
            assert int(r["origin"]) == A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_GUEST
            assert L.RESERVED_END <= int(r["fw"], 16) < 32 << 20     # its own RAM
            assert hv.pvz.device.stats(osid)["completed"] == int(r["completed"]) > 40
        # both stopped: offline, nothing mapped
        assert hv.pvz.server.online == [True] + [False] * 7
        assert hv.pvz.server.fw_mapped == {}
        assert a.stats()["hypercalls"]["pvz_call"] == 6      # Create x2, Map, Unmap, Destroy x2


def test_host_origin_gives_each_guest_only_its_own_carve_out_slice(tmp_path, pvz_elf):
    gpu = 64 << 10
    m = pvz_manifest(tmp_path, pvz_elf, [("a", ["work"], 1, 0), ("b", ["work"], 3, 0)],
                     origin="host", gpu_heap=gpu)
    with paravm.Hypervisor(output=None) as hv:
        a, b = run_all(hv, m)
        for d, osid in ((a, 1), (b, 3)):
            assert d.result.status == 0, d.console.text
            r = result(d)
            assert int(r["origin"]) == A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_HOST
            assert int(r["fw"], 16) == L.PVZ_FW_CARVEOUT_GPA + osid * HEAP
            assert int(r["gpu"], 16) == L.PVZ_GPU_CARVEOUT_GPA + osid * gpu
            others = [o for o in range(8) if o != osid]
            for o in others:       # no other OSID's slice is in this guest's memory
                assert not d.memory.contains(L.PVZ_FW_CARVEOUT_GPA + o * HEAP, 1)
                assert not d.memory.contains(L.PVZ_GPU_CARVEOUT_GPA + o * gpu, 1)
        # the slices were cleaned when their OSIDs went offline
        view = hv.pvz.heap_view("a")
        assert not any(view)
        view.release()


def test_hostile_calls_get_defined_errors_and_the_other_guest_goes_on(tmp_path, pvz_elf):
    m = pvz_manifest(tmp_path, pvz_elf, [("evil", ["hostile"], 1, 5), ("good", ["work"], 2, 2)])
    with paravm.Hypervisor(output=None) as hv:
        evil, good = run_all(hv, m)
        assert evil.result.status == 0, evil.console.text
        text = evil.console.text
        for name in ("func_0", "func_7", "func_8", "func_4294967295", "devid_config",
                     "map_outside_ram", "map_past_ram_end", "map_wraps", "map_ivc_area",
                     "map_unaligned", "map_low_mib", "map_small", "map_big"):
            assert f"{name}={A.PVRSRV_ERROR_INVALID_PARAMS}\n" in text, name
        assert f"map_again={A.PVRSRV_ERROR_DEVICEMEM_ALREADY_MAPPED}\n" in text
        for name in ("msg_outside_ram", "msg_wraps", "msg_in_low_mib"):
            assert f"{name}=-14\n" in text, name
        assert "RESULT bad=0" in text
        # a made-up function ID reached nothing: the priorities are the manifest's
        assert hv.pvz.server.priority[1:3] == [5, 2]
        assert good.result.status == 0 and result(good)["osid"] == "2", good.console.text


class RecordingGpu(PvzGpu):
    """The example GPU, recording what the server asks of it."""

    def __init__(self, svc):
        super().__init__(svc.machine, fw_heap_size=svc.fw_heap_size)
        self.log = []

    def set_os_state(self, osid, online):
        self.log.append(("os_state", osid, online))
        super().set_os_state(osid, online)

    def map_fw_heap(self, osid, paddr, size):
        self.log.append(("map", osid))
        return super().map_fw_heap(osid, paddr, size)

    def unmap_fw_heap(self, osid):
        self.log.append(("unmap", osid, self._os[osid].fw is not None))
        super().unmap_fw_heap(osid)


def test_a_crashing_guest_is_unmapped_then_offline_while_the_other_goes_on(tmp_path, pvz_elf):
    m = pvz_manifest(tmp_path, pvz_elf, [("crash", ["crash"], 1, 0), ("calm", ["spin", "2"], 2, 0)])
    with paravm.Hypervisor(output=None) as hv:
        crash, calm = hv.create_from_manifest(m, pvz_device=RecordingGpu)
        gpu = hv.pvz.device
        hv.start_all()
        wait_console(calm, r"UP")
        assert crash.wait(20) is not None
        assert crash.result.how == "crashed", crash.console.text
        assert "UP heap=" in crash.console.text
        log = [e for e in gpu.log if e[1] == 1]
        assert log == [("os_state", 1, True), ("map", 1), ("os_state", 1, True),
                       ("os_state", 1, False), ("unmap", 1, True), ("os_state", 1, False)]
        assert hv.pvz.server.online[1] is False and 1 not in hv.pvz.server.fw_mapped
        assert gpu.stats(1)["online"] is False
        # the other guest was not disturbed
        assert calm.wait(30) is not None
        assert calm.result.status == 0, calm.console.text
        assert int(result(calm)["n"]) > 10
        # and the crashed one comes back on the same OSID
        again = hv.restart("crash", args=["work"])
        assert again.wait(30) is not None and again.result.status == 0, again.console.text
        assert result(again)["osid"] == "1"


def test_a_guest_without_pvz_gets_not_implemented(tmp_path, pvz_elf):
    m = pvz_manifest(tmp_path, pvz_elf, [("plain", ["noconn"], None, 0), ("g", ["work"], 4, 0)])
    with paravm.Hypervisor(output=None) as hv:
        plain, g = run_all(hv, m)
        assert plain.result.status == 0 and "RESULT noconn" in plain.console.text, plain.console.text
        assert g.result.status == 0, g.console.text


def test_the_pvz_example_runs_and_the_higher_priority_gets_the_gpu():
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[2]
    subprocess.run(["make", "-s", "-C", str(repo / "examples")], check=True)
    p = subprocess.run([sys.executable, "-m", "paravm.cli.main", "run",
                        str(repo / "examples/pvz/pvz.toml")], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    done = {name: int(n) for name, n in
            re.findall(r"(\w+)\| (\d+) commands in 1 s while sharing the GPU; GPU checksum "
                       r"[0-9a-f]{8} matches the CPU's", p.stdout)}
    assert set(done) == {"render", "batch"}, p.stdout
    assert done["render"] > done["batch"], p.stdout
