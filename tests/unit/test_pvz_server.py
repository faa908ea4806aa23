"""PvzServer (the host driver's sGuestFuncTab / sVmmFuncTab / sConfigFuncTab), decode_heap and
validate_connection: the cases of specs/ivc-lguest-pvz.md §C.4, against a recording PvzSystem."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paravm.services.pvz import abi as A
from paravm.services.pvz.server import (
    DevConfig,
    HeapConfig,
    HeapKind,
    PhysHeaps,
    PvzServer,
    PvzSystem,
    decode_heap,
    validate_connection,
)

from pvz_fakes import Recorder

OK = A.PVRSRV_OK
INVALID_PARAMS = A.PVRSRV_ERROR_INVALID_PARAMS
BAD_CONFIG = A.PVRSRV_ERROR_INVALID_PVZ_CONFIG
BAD_OSID = A.PVRSRV_ERROR_INVALID_PVZ_OSID
OFFLINE = A.PVRSRV_ERROR_PVZ_OSID_IS_OFFLINE
HOST = A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_HOST
GUEST = A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_GUEST
GPU_HEAP = A.PVRSRV_DEVICE_PHYS_HEAP_GPU_LOCAL
FW_HEAP = A.PVRSRV_DEVICE_PHYS_HEAP_FW_LOCAL
FW_SIZE = 1 << 20
PA = 0x1234_5000


@pytest.fixture
def sysrec():
    return Recorder()


@pytest.fixture
def srv(sysrec):
    return PvzServer(sysrec, fw_heap_size=FW_SIZE)


def online(srv, *osids, priority=0):
    for o in osids:
        assert srv.on_vm_online(o, priority) == OK


# The six guest-originated entries, each called with (osid, func_id, dev_id).
def call_entry(srv, name, osid, func_id=None, dev_id=0):
    fid = ENTRY_IDS[name] if func_id is None else func_id
    if name == "map_dev_phys_heap":
        return srv.map_dev_phys_heap(osid, fid, dev_id, FW_SIZE, PA)
    r = getattr(srv, name)(osid, fid, dev_id)
    return r[0] if isinstance(r, tuple) else r


ENTRY_IDS = {
    "create_dev_config": A.PVZ_BRIDGE_CREATEDEVICECONFIG,
    "destroy_dev_config": A.PVZ_BRIDGE_DESTROYDEVICECONFIG,
    "create_dev_phys_heaps": A.PVZ_BRIDGE_CREATEDEVICEPHYSHEAPS,
    "destroy_dev_phys_heaps": A.PVZ_BRIDGE_DESTROYDEVICEPHYSHEAPS,
    "map_dev_phys_heap": A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP,
    "unmap_dev_phys_heap": A.PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP,
}


# ----------------------------------------------------------------------- the gate (§C.4)


def test_initial_state_host_online_guests_offline(srv):
    assert srv.online == [True] + [False] * 7
    assert PvzServer().fw_heap_size == 8 << 20        # the DDK's RGX_FIRMWARE_HEAP_SIZE under VZ
    assert srv.fw_mapped == {} and not srv.device_initialised
    assert srv.priority == [0] * 8


def test_map_from_osid_0_is_invalid_osid(srv, sysrec):
    assert srv.map_dev_phys_heap(0, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, FW_SIZE, PA) == BAD_OSID
    assert srv.fw_mapped == {} and sysrec.calls == []


@pytest.mark.parametrize("osid", [8, 9, 255, 2**32 - 1, -1])
def test_map_from_osid_out_of_range_is_invalid_osid(srv, sysrec, osid):
    online(srv, 1)
    sysrec.calls.clear()
    assert srv.map_dev_phys_heap(osid, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, FW_SIZE, PA) == BAD_OSID
    assert srv.fw_mapped == {} and sysrec.calls == []


def test_map_from_an_offline_osid_then_after_online(srv, sysrec):
    assert srv.map_dev_phys_heap(3, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, FW_SIZE, PA) == OFFLINE
    assert srv.fw_mapped == {} and sysrec.calls == []
    online(srv, 3)
    sysrec.calls.clear()
    assert srv.map_dev_phys_heap(3, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, FW_SIZE, PA) == OK
    assert srv.fw_mapped == {3: (PA, FW_SIZE)}
    # Mapped, then the firmware OS state goes ONLINE.
    assert sysrec.calls == [("map_fw_heap", 3, PA, FW_SIZE), ("set_os_state", 3, True)]


@pytest.mark.parametrize("guest_size", [4096, FW_SIZE // 2, FW_SIZE * 2, 0])
def test_map_records_the_hosts_heap_size_whatever_the_guest_says(srv, sysrec, guest_size):
    online(srv, 3)
    sysrec.calls.clear()
    assert srv.map_dev_phys_heap(3, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, guest_size, PA) == OK
    assert srv.fw_mapped == {3: (PA, FW_SIZE)}
    assert sysrec.calls[0] == ("map_fw_heap", 3, PA, FW_SIZE)


def test_map_with_dev_id_1_is_invalid_params(srv, sysrec):
    online(srv, 3)
    sysrec.calls.clear()
    assert srv.map_dev_phys_heap(3, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 1, FW_SIZE, PA) == \
        INVALID_PARAMS
    assert srv.fw_mapped == {} and sysrec.calls == []


def test_map_when_the_hosts_fw_origin_is_host_is_invalid_config(sysrec):
    srv = PvzServer(sysrec, fw_heap=HeapConfig(HOST, 0x8000_0000, FW_SIZE), fw_heap_size=FW_SIZE)
    online(srv, 3)
    sysrec.calls.clear()
    assert srv.map_dev_phys_heap(3, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, FW_SIZE, PA) == BAD_CONFIG
    assert srv.fw_mapped == {} and sysrec.calls == []


def test_second_map_without_unmap_is_refused_and_keeps_the_first(srv, sysrec):
    online(srv, 2)
    assert srv.map_dev_phys_heap(2, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, FW_SIZE, PA) == OK
    sysrec.calls.clear()
    assert srv.map_dev_phys_heap(2, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, FW_SIZE,
                                 PA + FW_SIZE) != OK
    assert srv.fw_mapped == {2: (PA, FW_SIZE)} and sysrec.calls == []


def test_a_system_map_failure_is_returned_and_nothing_recorded():
    rec = Recorder(map_err=A.PVRSRV_ERROR_OUT_OF_MEMORY)
    srv = PvzServer(rec, fw_heap_size=FW_SIZE)
    online(srv, 4)
    rec.calls.clear()
    assert srv.map_dev_phys_heap(4, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, FW_SIZE, PA) == \
        A.PVRSRV_ERROR_OUT_OF_MEMORY
    assert srv.fw_mapped == {}
    assert rec.calls == [("map_fw_heap", 4, PA, FW_SIZE)]     # no OS state ONLINE


@pytest.mark.parametrize("entry", ENTRY_IDS)
def test_every_entry_passes_the_gate(srv, sysrec, entry):
    online(srv, 5)
    sysrec.calls.clear()
    assert call_entry(srv, entry, 0) == BAD_OSID
    assert call_entry(srv, entry, 8) == BAD_OSID
    assert call_entry(srv, entry, 6) == OFFLINE
    assert call_entry(srv, entry, 5, dev_id=1) == INVALID_PARAMS
    assert sysrec.calls == []
    assert call_entry(srv, entry, 5) == OK


@pytest.mark.parametrize("entry", ENTRY_IDS)
@pytest.mark.parametrize("func_id", [0, 1, 2, 3, 4, 5, 6, 7, 8, 2**32 - 1])
def test_wrong_function_id_per_entry_is_invalid_params(srv, sysrec, entry, func_id):
    online(srv, 1)
    sysrec.calls.clear()
    expected = OK if func_id == ENTRY_IDS[entry] else INVALID_PARAMS
    assert call_entry(srv, entry, 1, func_id=func_id) == expected
    if expected != OK:
        assert sysrec.calls == [] and srv.fw_mapped == {}


def test_create_dev_config_returns_the_systems_config(srv, sysrec):
    online(srv, 2)
    err, cfg = srv.create_dev_config(2, A.PVZ_BRIDGE_CREATEDEVICECONFIG, 0)
    assert err == OK and cfg == DevConfig(0xE1, 0x1000, 0xFC000000)
    err, cfg = srv.create_dev_config(2, A.PVZ_BRIDGE_CREATEDEVICECONFIG, 1)
    assert err == INVALID_PARAMS and cfg is None


def test_num_os_bounds_the_osids():
    srv = PvzServer(num_os=4)
    assert srv.on_vm_online(3, 0) == OK
    assert srv.on_vm_online(4, 0) == INVALID_PARAMS
    assert srv.map_dev_phys_heap(4, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, 1 << 20, PA) == BAD_OSID
    assert srv.vmm_configure(A.VMM_CONF_PRIO_OSID0 + 4, 1) == INVALID_PARAMS
    assert srv.vmm_configure(A.VMM_CONF_PRIO_OSID0 + 3, 1) == OK
    for bad in (0, 1, 9):
        with pytest.raises(ValueError):
            PvzServer(num_os=bad)


# ----------------------------------------------------------------------- online / offline


def test_online_twice_is_invalid_params(srv, sysrec):
    online(srv, 3, priority=7)
    sysrec.calls.clear()
    assert srv.on_vm_online(3, 9) == INVALID_PARAMS
    assert srv.priority[3] == 7 and sysrec.calls == []


def test_offline_when_offline_is_invalid_params(srv, sysrec):
    assert srv.on_vm_offline(3) == INVALID_PARAMS
    online(srv, 3)
    assert srv.on_vm_offline(3) == OK
    assert srv.online[3] is False
    sysrec.calls.clear()
    assert srv.on_vm_offline(3) == INVALID_PARAMS
    assert sysrec.calls == []


@pytest.mark.parametrize("osid", [0, 8, -1, 100])
def test_online_and_offline_of_osid_0_or_out_of_range_are_invalid_params(srv, sysrec, osid):
    assert srv.on_vm_online(osid, 0) == INVALID_PARAMS
    assert srv.on_vm_offline(osid) == INVALID_PARAMS
    assert sysrec.calls == [] and srv.online[0] is True


@pytest.mark.parametrize("priority", [-1, A.PRIORITY_MAX + 1, 2**32])
def test_online_with_a_bad_priority_is_invalid_params(srv, sysrec, priority):
    assert srv.on_vm_online(2, priority) == INVALID_PARAMS
    assert srv.online[2] is False and sysrec.calls == []


def test_online_sets_state_and_priority(srv, sysrec):
    assert srv.on_vm_online(6, A.PRIORITY_MAX) == OK
    assert sysrec.calls == [("init_device",), ("set_os_state", 6, True),
                            ("set_os_priority", 6, A.PRIORITY_MAX)]
    assert srv.online[6] and srv.priority[6] == A.PRIORITY_MAX
    sysrec.calls.clear()
    assert srv.on_vm_offline(6) == OK
    assert sysrec.calls == [("set_os_state", 6, False)]


def test_offline_unmaps_a_heap_left_mapped(srv, sysrec):
    online(srv, 3)
    assert srv.map_dev_phys_heap(3, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, FW_SIZE, PA) == OK
    sysrec.calls.clear()
    assert srv.on_vm_offline(3) == OK
    assert sysrec.calls == [("set_os_state", 3, False), ("unmap_fw_heap", 3)]
    assert srv.fw_mapped == {} and srv.online[3] is False
    # back online, the guest maps again
    online(srv, 3)
    assert srv.map_dev_phys_heap(3, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, FW_SIZE, PA) == OK


def test_init_device_runs_exactly_once_across_many_onlines(srv, sysrec):
    online(srv, 1, 2, 3)
    assert srv.on_vm_offline(2) == OK
    online(srv, 2, 7)
    assert sysrec.names().count("init_device") == 1
    assert sysrec.calls[0] == ("init_device",)
    assert srv.device_initialised


def test_init_failure_is_propagated_and_the_device_stays_uninitialised():
    rec = Recorder(init_err=A.PVRSRV_ERROR_INIT_FAILURE)
    srv = PvzServer(rec)
    assert srv.on_vm_online(1, 0) == A.PVRSRV_ERROR_INIT_FAILURE
    assert not srv.device_initialised and srv.online[1] is False
    assert rec.calls == [("init_device",)]
    # The next OnVmOnline tries again.
    rec.init_err = OK
    assert srv.on_vm_online(1, 0) == OK
    assert srv.device_initialised and srv.online[1]
    assert rec.names().count("init_device") == 2
    assert srv.on_vm_online(2, 0) == OK
    assert rec.names().count("init_device") == 2


# ----------------------------------------------------------------------- CreateDevPhysHeaps


@pytest.mark.parametrize("osid", range(1, 8))
def test_host_carveout_gives_guest_k_base_plus_k_times_size(sysrec, osid):
    B, S, GB, GS = 0x8000_0000, 0x10_0000, 0x9000_0000, 0x4_0000
    srv = PvzServer(sysrec, fw_heap=HeapConfig(HOST, B, S), gpu_heap=HeapConfig(HOST, GB, GS))
    online(srv, osid)
    err, h = srv.create_dev_phys_heaps(osid, A.PVZ_BRIDGE_CREATEDEVICEPHYSHEAPS, 0)
    assert err == OK
    assert h == PhysHeaps(A.PHYS_HEAP_TYPE_UMA, S, B + osid * S, GS, GB + osid * GS)


@pytest.mark.parametrize("fw, gpu", [
    (HeapConfig(GUEST, 0, 0), HeapConfig(GUEST, 0, 0)),          # UMA 0/0
    (HeapConfig(HOST, 0, 0), HeapConfig(HOST, 0, 0)),            # UMA 0/0 of origin HOST
    (HeapConfig(GUEST, 0x8000_0000, FW_SIZE), HeapConfig(GUEST, 0x9000_0000, 4096)),
    (HeapConfig(HOST, 0, FW_SIZE), HeapConfig(HOST, 0x9000_0000, 0)),   # no region
])
def test_heaps_without_a_host_region_are_0_0_and_uma(sysrec, fw, gpu):
    srv = PvzServer(sysrec, fw_heap=fw, gpu_heap=gpu)
    online(srv, 2)
    err, h = srv.create_dev_phys_heaps(2, A.PVZ_BRIDGE_CREATEDEVICEPHYSHEAPS, 0)
    assert err == OK and h == PhysHeaps(A.PHYS_HEAP_TYPE_UMA, 0, 0, 0, 0)


def test_create_dev_phys_heaps_gate(srv):
    assert srv.create_dev_phys_heaps(2, A.PVZ_BRIDGE_CREATEDEVICEPHYSHEAPS, 0) == (OFFLINE, None)
    online(srv, 2)
    assert srv.create_dev_phys_heaps(2, A.PVZ_BRIDGE_CREATEDEVICEPHYSHEAPS, 1) == \
        (INVALID_PARAMS, None)


# ----------------------------------------------------------------------- sConfigFuncTab


def test_config_table_answers_from_the_heap_configs():
    srv = PvzServer(fw_heap=HeapConfig(HOST, 0xA000_0000, 0x20_0000),
                    gpu_heap=HeapConfig(GUEST, 0, 0x1000))
    assert srv.get_dev_phys_heap_origin(FW_HEAP) == (OK, HOST)
    assert srv.get_dev_phys_heap_origin(GPU_HEAP) == (OK, GUEST)
    assert srv.get_dev_phys_heap_addr_size(FW_HEAP) == (OK, 0x20_0000, 0xA000_0000)
    assert srv.get_dev_phys_heap_addr_size(GPU_HEAP) == (OK, 0x1000, 0)
    for heap in (A.PVRSRV_DEVICE_PHYS_HEAP_CPU_LOCAL, A.PVRSRV_DEVICE_PHYS_HEAP_LAST, 99):
        assert srv.get_dev_phys_heap_origin(heap) == (INVALID_PARAMS,
                                                      A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_LAST)
        assert srv.get_dev_phys_heap_addr_size(heap)[0] == INVALID_PARAMS


# ----------------------------------------------------------------------- decode_heap

UMA = HeapKind(A.PHYS_HEAP_TYPE_UMA, False)
DMA = HeapKind(A.PHYS_HEAP_TYPE_DMA, False)
CARVEOUT = HeapKind(A.PHYS_HEAP_TYPE_LMA, True)
LMA = HeapKind(A.PHYS_HEAP_TYPE_LMA, False)
BAD = (BAD_CONFIG, None)
ADDR, SIZE = 0x8000_0000, 0x80_0000

DECODE_TABLE = [
    # heap, origin, addr, size, expected
    (GPU_HEAP, GUEST, 0, 0, (OK, UMA)),
    (GPU_HEAP, HOST, 0, 0, (OK, UMA)),
    (FW_HEAP, GUEST, 0, 0, (OK, UMA)),
    (FW_HEAP, HOST, 0, 0, BAD),                # FW UMA of origin HOST
    (GPU_HEAP, GUEST, 0, SIZE, (OK, DMA)),
    (GPU_HEAP, HOST, 0, SIZE, (OK, DMA)),
    (FW_HEAP, GUEST, 0, SIZE, (OK, DMA)),
    (FW_HEAP, HOST, 0, SIZE, (OK, DMA)),
    (GPU_HEAP, GUEST, ADDR, SIZE, (OK, CARVEOUT)),
    (GPU_HEAP, HOST, ADDR, SIZE, (OK, CARVEOUT)),
    (FW_HEAP, GUEST, ADDR, SIZE, (OK, CARVEOUT)),
    (FW_HEAP, HOST, ADDR, SIZE, (OK, CARVEOUT)),
    (GPU_HEAP, GUEST, ADDR, 0, BAD),           # A/0: no such row
    (GPU_HEAP, HOST, ADDR, 0, BAD),
    (FW_HEAP, GUEST, ADDR, 0, BAD),
    (FW_HEAP, HOST, ADDR, 0, BAD),
]


@pytest.mark.parametrize("heap, origin, addr, size, expected", DECODE_TABLE)
def test_decode_heap_table(heap, origin, addr, size, expected):
    assert decode_heap(heap, origin, addr, size) == expected


@pytest.mark.parametrize("heap", [GPU_HEAP, FW_HEAP])
@pytest.mark.parametrize("origin", [HOST, GUEST])
def test_decode_heap_on_an_lma_platform_a_n_is_lma_not_a_carveout(heap, origin):
    assert decode_heap(heap, origin, ADDR, SIZE, lma_platform=True) == (OK, LMA)
    assert decode_heap(heap, origin, ADDR, 0, lma_platform=True) == BAD


@pytest.mark.parametrize("heap, origin", [
    (A.PVRSRV_DEVICE_PHYS_HEAP_CPU_LOCAL, GUEST), (A.PVRSRV_DEVICE_PHYS_HEAP_LAST, HOST),
    (FW_HEAP, A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_LAST), (GPU_HEAP, 7),
])
def test_decode_heap_bad_heap_or_origin_is_invalid_config(heap, origin):
    for addr, size in ((0, 0), (0, SIZE), (ADDR, SIZE)):
        assert decode_heap(heap, origin, addr, size) == BAD


# ----------------------------------------------------------------------- validate_connection


class Conn:
    """A connection object for validate_connection: config answers and table entries."""

    def __init__(self, *, origin=(OK, GUEST), gpu=(OK, 0, 0), fw=(OK, 0, 0), entries=()):
        self._origin, self._gpu, self._fw = origin, gpu, fw
        for name in entries:
            setattr(self, name, lambda *a: OK)

    def get_dev_phys_heap_origin(self, heap):
        return self._origin

    def get_dev_phys_heap_addr_size(self, heap):
        return self._gpu if heap == GPU_HEAP else self._fw


HOST_ENTRIES = ("create_dev_config", "destroy_dev_config", "create_dev_phys_heaps",
                "destroy_dev_phys_heaps", "map_dev_phys_heap", "unmap_dev_phys_heap",
                "on_vm_online", "on_vm_offline", "vmm_configure")
CLIENT_ENTRIES = HOST_ENTRIES[:6]


def test_stub_server_passes_validation():
    assert PvzServer().validate() == OK
    assert validate_connection(PvzServer(PvzSystem()), host=True) == OK
    assert validate_connection(Conn(entries=HOST_ENTRIES), host=True) == OK
    assert validate_connection(Conn(entries=CLIENT_ENTRIES), host=False) == OK


def test_no_connection_is_invalid_config():
    assert validate_connection(None, host=True) == BAD_CONFIG
    assert validate_connection(None, host=False) == BAD_CONFIG


@pytest.mark.parametrize("host", [True, False])
@pytest.mark.parametrize("missing", ["get_dev_phys_heap_origin", "get_dev_phys_heap_addr_size"])
def test_a_missing_config_function_is_invalid_config(host, missing):
    conn = Conn(entries=HOST_ENTRIES)
    setattr(conn, missing, None)
    assert validate_connection(conn, host=host) == BAD_CONFIG


@pytest.mark.parametrize("host", [True, False])
@pytest.mark.parametrize("kwargs", [
    {"gpu": (INVALID_PARAMS, 0, 0)},
    {"fw": (INVALID_PARAMS, 0, 0)},
    {"fw": (A.PVRSRV_ERROR_NOT_IMPLEMENTED, 0, 0)},
    {"origin": (INVALID_PARAMS, GUEST)},
    {"origin": (OK, A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_LAST)},
    {"origin": (OK, 5)},
    {"origin": (OK, HOST), "fw": (OK, 0, 0)},              # static FW heap of 0/0
], ids=["gpu-addrsize", "fw-addrsize", "fw-not-implemented", "origin-err", "origin-last",
        "origin-bogus", "host-fw-0-0"])
def test_a_bad_config_answer_is_invalid_config(host, kwargs):
    assert validate_connection(Conn(entries=HOST_ENTRIES, **kwargs), host=host) == BAD_CONFIG


@pytest.mark.parametrize("fw", [(OK, FW_SIZE, ADDR), (OK, FW_SIZE, 0)])
def test_origin_host_with_a_fw_region_passes(fw):
    assert validate_connection(Conn(origin=(OK, HOST), fw=fw, entries=HOST_ENTRIES),
                               host=True) == OK
    # A guest of origin HOST needs no Map.
    assert validate_connection(Conn(origin=(OK, HOST), fw=fw), host=False) == OK


@pytest.mark.parametrize("missing", HOST_ENTRIES)
def test_a_host_with_any_entry_missing_is_invalid_config(missing):
    conn = Conn(entries=[e for e in HOST_ENTRIES if e != missing])
    assert validate_connection(conn, host=True) == BAD_CONFIG
    srv = PvzServer()
    setattr(srv, missing, None)
    assert srv.validate() == BAD_CONFIG


def test_a_guest_of_origin_guest_without_map_is_invalid_config():
    conn = Conn(entries=[e for e in CLIENT_ENTRIES if e != "map_dev_phys_heap"])
    assert validate_connection(conn, host=False) == BAD_CONFIG
    # ... but its other entries are not checked (the guest asserts them at call time).
    assert validate_connection(Conn(entries=["map_dev_phys_heap"]), host=False) == OK


def test_server_validate_sees_its_own_heap_configs():
    assert PvzServer(fw_heap=HeapConfig(HOST, 0, 0)).validate() == BAD_CONFIG
    assert PvzServer(fw_heap=HeapConfig(HOST, ADDR, FW_SIZE)).validate() == OK
    assert PvzServer(fw_heap=HeapConfig(A.PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_LAST)).validate() == \
        BAD_CONFIG


# ----------------------------------------------------------------------- VMMConfigure


@pytest.mark.parametrize("n", range(8))
def test_prio_osid_n_sets_the_priority_and_tells_the_system(srv, sysrec, n):
    assert srv.vmm_configure(A.VMM_CONF_PRIO_OSID0 + n, 1000 + n) == OK
    assert srv.priority[n] == 1000 + n
    assert sysrec.calls == [("set_os_priority", n, 1000 + n)]


def test_prio_bounds(srv, sysrec):
    assert srv.vmm_configure(A.VMM_CONF_PRIO_OSID7, A.PRIORITY_MAX) == OK
    assert srv.priority[7] == A.PRIORITY_MAX
    sysrec.calls.clear()
    for value in (A.PRIORITY_MAX + 1, 2**32 - 1, 2**32, -1):
        assert srv.vmm_configure(A.VMM_CONF_PRIO_OSID7, value) == INVALID_PARAMS
    assert srv.priority[7] == A.PRIORITY_MAX and sysrec.calls == []


def test_prio_of_an_osid_beyond_num_os_is_invalid_params():
    rec = Recorder()
    srv = PvzServer(rec, num_os=3)
    assert srv.vmm_configure(A.VMM_CONF_PRIO_OSID0 + 3, 5) == INVALID_PARAMS
    assert srv.vmm_configure(A.VMM_CONF_PRIO_OSID7, 5) == INVALID_PARAMS
    assert rec.calls == []


def test_hcs_deadline_is_recorded(srv, sysrec):
    assert srv.vmm_configure(A.VMM_CONF_HCS_DEADLINE, 1234) == OK
    assert srv.hcs_deadline_ms == 1234
    assert srv.vmm_configure(A.VMM_CONF_HCS_DEADLINE, 0xFFFFFFFF) == OK
    assert srv.vmm_configure(A.VMM_CONF_HCS_DEADLINE, 2**32) == INVALID_PARAMS
    assert srv.hcs_deadline_ms == 0xFFFFFFFF
    assert sysrec.calls == [("set_hcs_deadline", 1234), ("set_hcs_deadline", 0xFFFFFFFF)]


@pytest.mark.parametrize("param", [9, 10, 100, -1, 2**32 - 1])
def test_unknown_param_is_invalid_params(srv, sysrec, param):
    assert srv.vmm_configure(param, 1) == INVALID_PARAMS
    assert sysrec.calls == [] and srv.priority == [0] * 8 and srv.hcs_deadline_ms == 0


# ----------------------------------------------------------------------- Unmap


def test_unmap_sets_the_os_offline_before_unmapping(srv, sysrec):
    online(srv, 4)
    assert srv.map_dev_phys_heap(4, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, FW_SIZE, PA) == OK
    sysrec.calls.clear()
    assert srv.unmap_dev_phys_heap(4, A.PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP, 0) == OK
    assert sysrec.calls == [("set_os_state", 4, False), ("unmap_fw_heap", 4)]
    assert srv.fw_mapped == {} and srv.online[4]
    # and it can be mapped again
    assert srv.map_dev_phys_heap(4, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, FW_SIZE, PA) == OK


def test_unmap_when_not_mapped_is_ok_and_does_nothing(srv, sysrec):
    online(srv, 4)
    sysrec.calls.clear()
    assert srv.unmap_dev_phys_heap(4, A.PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP, 0) == OK
    assert sysrec.calls == []


def test_unmap_of_another_osid_leaves_the_mapping(srv, sysrec):
    online(srv, 1, 2)
    assert srv.map_dev_phys_heap(1, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, FW_SIZE, PA) == OK
    sysrec.calls.clear()
    assert srv.unmap_dev_phys_heap(2, A.PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP, 0) == OK
    assert srv.fw_mapped == {1: (PA, FW_SIZE)} and sysrec.calls == []


# ----------------------------------------------------------------------- serialisation


class SlowSystem(Recorder):
    """map_fw_heap / set_os_state take a while and record entry and exit."""

    def __init__(self):
        super().__init__()
        self.events: list[tuple[str, int]] = []
        self._ev_lock = threading.Lock()
        self.inside = 0
        self.max_inside = 0

    def _enter(self, osid):
        with self._ev_lock:
            self.events.append(("enter", osid))
            self.inside += 1
            self.max_inside = max(self.max_inside, self.inside)

    def _exit(self, osid):
        with self._ev_lock:
            self.inside -= 1
            self.events.append(("exit", osid))

    def map_fw_heap(self, osid, paddr, size):
        self._enter(osid)
        time.sleep(0.05)
        self._exit(osid)
        return OK

    def set_os_state(self, osid, online):
        self._enter(osid)
        time.sleep(0.01)
        self._exit(osid)


def _run_concurrently(*fns, timeout=10.0):
    barrier = threading.Barrier(len(fns))
    results: list = [None] * len(fns)
    errors: list = []

    def run(i, fn):
        try:
            barrier.wait(timeout)
            results[i] = fn()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a server call hung"
    assert errors == []
    return results


def _no_overlap(events):
    """Entries and exits alternate: enter x, exit x, enter y, exit y, ..."""
    for i in range(0, len(events), 2):
        (e1, o1), (e2, o2) = events[i], events[i + 1]
        assert (e1, e2) == ("enter", "exit") and o1 == o2, events


def test_concurrent_maps_from_two_osids_run_one_at_a_time():
    slow = SlowSystem()
    srv = PvzServer(slow, fw_heap_size=FW_SIZE)
    online(srv, 1, 2)
    slow.events.clear()
    results = _run_concurrently(
        lambda: srv.map_dev_phys_heap(1, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, FW_SIZE, PA),
        lambda: srv.map_dev_phys_heap(2, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, FW_SIZE,
                                      PA + FW_SIZE))
    assert results == [OK, OK]
    assert srv.fw_mapped == {1: (PA, FW_SIZE), 2: (PA + FW_SIZE, FW_SIZE)}
    # Each map is followed by its OS state change, inside the same locked call.
    assert len(slow.events) == 8 and slow.max_inside == 1
    _no_overlap(slow.events)
    osids = [o for e, o in slow.events if e == "enter"]
    assert osids in ([1, 1, 2, 2], [2, 2, 1, 1])


def test_vmm_calls_are_serialised_with_guest_calls():
    slow = SlowSystem()
    srv = PvzServer(slow, fw_heap_size=FW_SIZE)
    online(srv, 1, 2)
    slow.events.clear()
    results = _run_concurrently(
        lambda: srv.map_dev_phys_heap(1, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, FW_SIZE, PA),
        lambda: srv.on_vm_offline(2),
        lambda: srv.on_vm_online(3, 1))
    assert results == [OK, OK, OK]
    assert slow.max_inside == 1
    _no_overlap(slow.events)


# ----------------------------------------------------------------------- a property test

OPS = st.lists(st.tuples(st.sampled_from(["online", "offline", "map", "unmap", "stop"]),
                         st.integers(-1, 9), st.sampled_from([0, 0, 0, 1]),
                         st.sampled_from([0, 5, A.PRIORITY_MAX, A.PRIORITY_MAX + 1])),
               max_size=40)


@settings(max_examples=150, deadline=None)
@given(ops=OPS, service_style=st.booleans())
def test_random_lifecycles_follow_the_model_and_never_raise(ops, service_style):
    """A model of the server's state predicts every return code; a firmware
    heap is only ever mapped for an online OSID.  With *service_style* an OSID
    only goes offline as PvzService.domain_stopped does it (Unmap, then
    OnVmOffline), else also by a bare OnVmOffline."""
    rec = Recorder()
    srv = PvzServer(rec, fw_heap_size=FW_SIZE)
    up, mapped, inited = {0}, set(), False

    def gate(osid):
        if not 0 < osid < 8:
            return BAD_OSID
        return OK if osid in up else OFFLINE

    for op, osid, dev, prio in ops:
        if op == "offline" and service_style:
            op = "stop"
        if op == "online":
            got = srv.on_vm_online(osid, prio)
            if not 0 < osid < 8 or osid in up or prio > A.PRIORITY_MAX:
                want = INVALID_PARAMS
            else:
                want, inited = OK, True
                up.add(osid)
        elif op == "offline":
            got = srv.on_vm_offline(osid)
            want = OK if 0 < osid < 8 and osid in up else INVALID_PARAMS
            if want == OK:
                up.discard(osid)
                mapped.discard(osid)        # OnVmOffline unmaps a heap left mapped
        elif op == "map":
            got = srv.map_dev_phys_heap(osid, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, dev, FW_SIZE,
                                        PA + osid * FW_SIZE)
            want = gate(osid)
            if want == OK:
                want = INVALID_PARAMS if dev or osid in mapped else OK
                if want == OK:
                    mapped.add(osid)
        elif op == "unmap":
            got = srv.unmap_dev_phys_heap(osid, A.PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP, dev)
            want = gate(osid)
            if want == OK and dev:
                want = INVALID_PARAMS
            if want == OK:
                mapped.discard(osid)
        else:       # stop, as the service does it
            got = want = OK
            if 0 < osid < 8 and osid in up:
                assert srv.unmap_dev_phys_heap(osid, A.PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP, 0) == OK
                assert srv.on_vm_offline(osid) == OK
                mapped.discard(osid)
                up.discard(osid)
        assert got == want, (op, osid, dev, prio)
        assert {i for i, on in enumerate(srv.online) if on} == up
        assert set(srv.fw_mapped) == mapped
        assert all(v == (PA + k * FW_SIZE, FW_SIZE) for k, v in srv.fw_mapped.items())
        assert srv.device_initialised == inited
        assert rec.names().count("init_device") == (1 if inited else 0)
        assert set(srv.fw_mapped) <= up
    # The system saw exactly the maps and unmaps the server recorded.
    live = set()
    for c in rec.calls:
        if c[0] == "map_fw_heap":
            assert c[1] not in live
            live.add(c[1])
        elif c[0] == "unmap_fw_heap":
            assert c[1] in live
            live.remove(c[1])
    assert live == mapped
