"""A recording PVZ system layer shared by the PVZ unit tests (test_pvz_server,
test_pvz_service)."""

from __future__ import annotations

from paravm.services.pvz import abi as A
from paravm.services.pvz.server import DevConfig, PvzSystem

OK = A.PVRSRV_OK


class Recorder(PvzSystem):
    """Records every system call in order; *init_err* / *map_err* are returned by
    init_device / map_fw_heap; *config* is the device's; *record_config*: whether
    dev_config calls are recorded too."""

    def __init__(self, *, init_err=OK, map_err=OK, config=DevConfig(0xE1, 0x1000, 0xFC000000),
                 record_config=True):
        self.calls: list[tuple] = []
        self.init_err, self.map_err, self.config = init_err, map_err, config
        self.record_config = record_config

    def dev_config(self):
        if self.record_config:
            self.calls.append(("dev_config",))
        return self.config

    def init_device(self):
        self.calls.append(("init_device",))
        return self.init_err

    def set_os_state(self, osid, online):
        self.calls.append(("set_os_state", osid, online))

    def set_os_priority(self, osid, priority):
        self.calls.append(("set_os_priority", osid, priority))

    def set_hcs_deadline(self, deadline_ms):
        self.calls.append(("set_hcs_deadline", deadline_ms))

    def map_fw_heap(self, osid, paddr, size):
        self.calls.append(("map_fw_heap", osid, paddr, size))
        return self.map_err

    def unmap_fw_heap(self, osid):
        self.calls.append(("unmap_fw_heap", osid))

    def names(self):
        return [c[0] for c in self.calls]
