"""The PVZ ABI three ways: the guest headers (guest/include/paravm/pvz.h and pvz_gpu.h,
compiled with gcc), the VMM's declarations (paravm.services.pvz.abi, paravm.devices.pvzgpu)
and the numbers of specs/ivc-lguest-pvz.md part C written out here; plus the table-driven
conformance test of struct pvz_msg that §C.4 asks for instead of C interop."""

import re
import struct
from pathlib import Path

import pytest

from paravm.devices import pvzgpu as G
from paravm.services.pvz import abi as A

from c_probe import probe, py_offsets

ROOT = Path(__file__).resolve().parents[2]

MSG_FIELDS = ("func_id", "dev_id", "status", "irq", "regs_size", "heap_type", "regs_pbase",
              "fw_size", "fw_paddr", "gpu_size", "gpu_paddr")
CMD_FIELDS = ("op", "flags", "dst", "src", "len", "value", "status", "result", "tag",
              "reserved")
CTL_FIELDS = ("write_offset", "read_offset", "wrap_mask", "cmd_size")

# struct -> (size, {field: offset}), the layouts the headers document.
LAYOUT = {
    "pvz_msg": (64, dict(zip(MSG_FIELDS, (0, 4, 8, 12, 16, 20, 24, 32, 40, 48, 56)))),
    "pvz_gpu_cmd": (64, dict(zip(CMD_FIELDS, (0, 4, 8, 16, 24, 32, 36, 40, 48, 56)))),
    "pvz_gpu_ccb_ctl": (16, dict(zip(CTL_FIELDS, (0, 4, 8, 12)))),
}
PY_STRUCT = {"pvz_msg": (A.PVZ_MSG, MSG_FIELDS), "pvz_gpu_cmd": (G.CMD, CMD_FIELDS),
             "pvz_gpu_ccb_ctl": (G.CCB_CTL, CTL_FIELDS)}

# The pinned numbers (specs §C.1 / §C.4; PVRSRV_ERROR of TI pvrsrv_errors.h f88784d).
PINNED = {
    "PVRSRV_OK": 0, "PVRSRV_ERROR_OUT_OF_MEMORY": 1, "PVRSRV_ERROR_INVALID_PARAMS": 3,
    "PVRSRV_ERROR_INIT_FAILURE": 4, "PVRSRV_ERROR_INVALID_DEVICE": 6,
    "PVRSRV_ERROR_NOT_IMPLEMENTED": 10, "PVRSRV_ERROR_NOT_SUPPORTED": 20,
    "PVRSRV_ERROR_DEVICEMEM_ALREADY_MAPPED": 86, "PVRSRV_ERROR_NO_DEVICENODE_FOUND": 193,
    "PVRSRV_ERROR_NOT_INITIALISED": 324, "PVRSRV_ERROR_INVALID_PVZ_CONFIG": 344,
    "PVRSRV_ERROR_INVALID_PVZ_OSID": 348, "PVRSRV_ERROR_PVZ_OSID_IS_OFFLINE": 349,
    "PVZ_BRIDGE_DEFAULT": 0, "PVZ_BRIDGE_CREATEDEVICECONFIG": 1,
    "PVZ_BRIDGE_DESTROYDEVICECONFIG": 2, "PVZ_BRIDGE_CREATEDEVICEPHYSHEAPS": 3,
    "PVZ_BRIDGE_DESTROYDEVICEPHYSHEAPS": 4, "PVZ_BRIDGE_MAPDEVICEPHYSHEAP": 5,
    "PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP": 6, "PVZ_BRIDGE_DEBUGDUMPCONFIG": 7, "PVZ_BRIDGE_LAST": 8,
    "PVRSRV_DEVICE_PHYS_HEAP_GPU_LOCAL": 0, "PVRSRV_DEVICE_PHYS_HEAP_CPU_LOCAL": 1,
    "PVRSRV_DEVICE_PHYS_HEAP_FW_LOCAL": 2, "PVRSRV_DEVICE_PHYS_HEAP_LAST": 3,
    "PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_HOST": 0, "PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_GUEST": 1,
    "PVRSRV_DEVICE_PHYS_HEAP_ORIGIN_LAST": 2,
    "PHYS_HEAP_TYPE_UNKNOWN": 0, "PHYS_HEAP_TYPE_UMA": 1, "PHYS_HEAP_TYPE_LMA": 2,
    "PHYS_HEAP_TYPE_DMA": 3,
}
C_ONLY = {"PV_HC_PVZ_CALL": A.HC_PVZ_CALL}

# C name of pvz_gpu.h -> the device's Python value.
GPU = {
    "PVZ_GPU_ID": G.GPU_ID, "PVZ_GPU_REG_ID": G.REG_ID, "PVZ_GPU_REG_OSID": G.REG_OSID,
    "PVZ_GPU_REG_STATUS": G.REG_STATUS, "PVZ_GPU_REG_KICK": G.REG_KICK,
    "PVZ_GPU_REG_IRQ_STATUS": G.REG_IRQ_STATUS, "PVZ_GPU_REG_IRQ_ENABLE": G.REG_IRQ_ENABLE,
    "PVZ_GPU_REG_PRIORITY": G.REG_PRIORITY, "PVZ_GPU_REG_COMPLETED": G.REG_COMPLETED,
    "PVZ_GPU_REG_HEAP_SIZE": G.REG_HEAP_SIZE,
    "PVZ_GPU_REG_HCS_DEADLINE": G.REG_HCS_DEADLINE,
    "PVZ_GPU_STATUS_FW_RUNNING": G.STATUS_FW_RUNNING,
    "PVZ_GPU_STATUS_OS_ONLINE": G.STATUS_OS_ONLINE,
    "PVZ_GPU_STATUS_HEAP_READY": G.STATUS_HEAP_READY,
    "PVZ_GPU_IRQ_DONE": G.IRQ_DONE, "PVZ_GPU_IRQ_ERROR": G.IRQ_ERROR,
    "PVZ_GPU_CCB_OFFSET": G.CCB_OFFSET, "PVZ_GPU_CCB_MAX_SLOTS": G.CCB_MAX_SLOTS,
    "PVZ_GPU_OP_NOP": G.OP_NOP, "PVZ_GPU_OP_FILL": G.OP_FILL, "PVZ_GPU_OP_COPY": G.OP_COPY,
    "PVZ_GPU_OP_CHECKSUM": G.OP_CHECKSUM, "PVZ_GPU_FLAG_IRQ": G.FLAG_IRQ,
    "PVZ_GPU_FLAG_DST_GPU": G.FLAG_DST_GPU, "PVZ_GPU_FLAG_SRC_GPU": G.FLAG_SRC_GPU,
    "PVZ_GPU_ST_DONE": G.ST_DONE, "PVZ_GPU_ST_FAULT": G.ST_FAULT, "PVZ_GPU_ST_BAD": G.ST_BAD,
}
# The register map of pvzgpu.py's docstring, pinned here.
GPU_PINNED = {
    "PVZ_GPU_ID": 0x5A565047, "PVZ_GPU_REG_ID": 0x00, "PVZ_GPU_REG_OSID": 0x04,
    "PVZ_GPU_REG_STATUS": 0x08, "PVZ_GPU_REG_KICK": 0x0C, "PVZ_GPU_REG_IRQ_STATUS": 0x10,
    "PVZ_GPU_REG_IRQ_ENABLE": 0x14, "PVZ_GPU_REG_PRIORITY": 0x18, "PVZ_GPU_REG_COMPLETED": 0x1C,
    "PVZ_GPU_REG_HEAP_SIZE": 0x20, "PVZ_GPU_REG_HCS_DEADLINE": 0x24,
    "PVZ_GPU_CCB_OFFSET": 0x1000, "PVZ_GPU_CCB_MAX_SLOTS": 1024,
    "PVZ_GPU_OP_NOP": 0, "PVZ_GPU_OP_FILL": 1, "PVZ_GPU_OP_COPY": 2, "PVZ_GPU_OP_CHECKSUM": 3,
    "PVZ_GPU_FLAG_IRQ": 1, "PVZ_GPU_FLAG_DST_GPU": 2, "PVZ_GPU_FLAG_SRC_GPU": 4,
    "PVZ_GPU_ST_DONE": 0, "PVZ_GPU_ST_FAULT": 1, "PVZ_GPU_ST_BAD": 2,
}


def _program() -> str:
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "paravm/pvz.h"',
             '#include "paravm/pvz_gpu.h"',
             '#define P(x) printf("%s %lld\\n", #x, (long long)(x))', "int main(void) {"]
    for name, (_, fields) in LAYOUT.items():
        lines.append(f"P(sizeof(struct {name}));")
        for f in fields:
            lines.append(f"P(offsetof(struct {name}, {f}));")
    for name in (*PINNED, *C_ONLY, *GPU):
        lines.append(f"P({name});")
    lines += ["P(sizeof(PVRSRV_ERROR));", "return 0;", "}"]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def c_abi(tmp_path_factory):
    return probe(tmp_path_factory.mktemp("pvz_abi"), _program(),
                 ("-std=c11", "-Wall", "-Wextra", "-Werror"))


# ------------------------------------------------------------------------------ layouts


@pytest.mark.parametrize("name", LAYOUT)
def test_struct_layout_is_the_same_in_c_and_python(c_abi, name):
    size, fields = LAYOUT[name]
    assert c_abi[f"sizeof(struct {name})"] == size
    assert {f: c_abi[f"offsetof(struct {name}, {f})"] for f in fields} == fields
    s, names = PY_STRUCT[name]
    assert s.size == size
    assert dict(zip(names, py_offsets(s))) == fields


def test_msg_offsets_and_size_constants():
    assert A.PVZ_MSG_SIZE == 64
    assert A.MSG_FIELDS == MSG_FIELDS
    assert A.MSG_OFFSETS == LAYOUT["pvz_msg"][1]
    assert G.CMD_SIZE == 64
    assert (G.CMD_STATUS_OFF, G.CMD_RESULT_OFF) == (LAYOUT["pvz_gpu_cmd"][1]["status"],
                                                     LAYOUT["pvz_gpu_cmd"][1]["result"])


def test_pvrsrv_error_is_a_32_bit_enum_in_c(c_abi):
    assert c_abi["sizeof(PVRSRV_ERROR)"] == 4


# ------------------------------------------------------------------------------ numbers


@pytest.mark.parametrize("name", PINNED)
def test_constant_is_pinned_in_c_and_python(c_abi, name):
    assert c_abi[name] == PINNED[name]
    assert getattr(A, name) == PINNED[name]


def test_hypercall_number(c_abi):
    assert c_abi["PV_HC_PVZ_CALL"] == A.HC_PVZ_CALL == 40


@pytest.mark.parametrize("name", GPU)
def test_gpu_constant_is_the_same_in_c_and_python(c_abi, name):
    assert c_abi[name] == GPU[name]
    if name in GPU_PINNED:
        assert GPU[name] == GPU_PINNED[name]


def test_vmm_conf_params_and_limits():
    assert (A.VMM_CONF_PRIO_OSID0, A.VMM_CONF_PRIO_OSID7, A.VMM_CONF_HCS_DEADLINE) == (0, 7, 8)
    assert A.RGXFW_NUM_OS == 8
    assert A.PRIORITY_MAX == 2**30 - 1


def test_function_ids_are_0_to_8_and_named_1_to_6():
    ids = [A.PVZ_BRIDGE_DEFAULT, A.PVZ_BRIDGE_CREATEDEVICECONFIG,
           A.PVZ_BRIDGE_DESTROYDEVICECONFIG, A.PVZ_BRIDGE_CREATEDEVICEPHYSHEAPS,
           A.PVZ_BRIDGE_DESTROYDEVICEPHYSHEAPS, A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP,
           A.PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP, A.PVZ_BRIDGE_DEBUGDUMPCONFIG, A.PVZ_BRIDGE_LAST]
    assert ids == list(range(9))
    # Only the six served calls have names; DEFAULT, the vendor's 7 and LAST do not.
    assert sorted(A.FUNC_NAMES) == [1, 2, 3, 4, 5, 6]


def test_error_names_cover_every_pinned_error_and_name_unknown_ones():
    errors = {k: v for k, v in PINNED.items() if k.startswith("PVRSRV_")
              and not k.startswith("PVRSRV_DEVICE_PHYS_HEAP")}
    assert A.ERROR_NAMES == {v: k for k, v in errors.items()}
    assert A.error_name(3) == "PVRSRV_ERROR_INVALID_PARAMS"
    assert A.error_name(0) == "PVRSRV_OK"
    assert A.error_name(2) == "PVRSRV_ERROR_#2"


def test_c_enum_has_no_value_python_lacks():
    """Every enumerator of PVRSRV_ERROR in pvz.h (but the FORCE_I32 sizer) is in abi.py."""
    text = (ROOT / "guest/include/paravm/pvz.h").read_text()
    body = re.search(r"typedef enum PVRSRV_ERROR_TAG \{(.*?)\} PVRSRV_ERROR;", text, re.S).group(1)
    names = set(re.findall(r"(PVRSRV_\w+)\s*=", body)) - {"PVRSRV_ERROR_FORCE_I32"}
    assert names == {v for v in A.ERROR_NAMES.values()}


def test_gpu_structs_fit_the_smallest_heap():
    # The biggest queue (1024 slots of 64 bytes from 0x1000) must be describable; the
    # control block fits before the queue.
    assert G.CCB_CTL.size <= G.CCB_OFFSET
    assert G.CCB_OFFSET + G.CCB_MAX_SLOTS * G.CMD_SIZE <= 8 << 20


# ------------------------------------------------------------------------------ the message

U32, U64 = 2**32 - 1, 2**64 - 1

# One row per function ID: what the guest stub sends and what the VMM answers.  Each
# row is packed by the "guest" and unpacked by the "VMM" (and back); the values are
# chosen so that any field swapped, truncated or misplaced shows.
ROWS = [
    # func_id, dev_id, status, irq, regs_size, heap_type, regs_pbase, fw_size, fw_paddr,
    # gpu_size, gpu_paddr
    (A.PVZ_BRIDGE_DEFAULT, 0, A.PVRSRV_ERROR_INVALID_PARAMS, 0, 0, 0, 0, 0, 0, 0, 0),
    (A.PVZ_BRIDGE_CREATEDEVICECONFIG, 0, A.PVRSRV_OK, 0xE1, 0x1000, 0, 0xFC000000, 0, 0, 0, 0),
    (A.PVZ_BRIDGE_DESTROYDEVICECONFIG, 1, A.PVRSRV_ERROR_INVALID_PARAMS, 0, 0, 0, 0, 0, 0, 0, 0),
    (A.PVZ_BRIDGE_CREATEDEVICEPHYSHEAPS, 0, A.PVRSRV_OK, 0, 0, A.PHYS_HEAP_TYPE_UMA, 0,
     0x800000, 0xF4800000, 0x400000, 0xF8400000),
    (A.PVZ_BRIDGE_DESTROYDEVICEPHYSHEAPS, 0, A.PVRSRV_OK, 0, 0, 0, 0, 0, 0, 0, 0),
    (A.PVZ_BRIDGE_MAPDEVICEPHYSHEAP, 0, A.PVRSRV_ERROR_DEVICEMEM_ALREADY_MAPPED, 0, 0, 0, 0,
     0x800000, 0x0000123456789000, 0, 0),
    (A.PVZ_BRIDGE_UNMAPDEVICEPHYSHEAP, 0, A.PVRSRV_ERROR_PVZ_OSID_IS_OFFLINE, 0, 0, 0, 0, 0,
     0, 0, 0),
    (A.PVZ_BRIDGE_DEBUGDUMPCONFIG, 0, A.PVRSRV_ERROR_INVALID_PARAMS, 0, 0, 0, 0, 0, 0, 0, 0),
    (A.PVZ_BRIDGE_LAST, U32, A.PVRSRV_ERROR_INVALID_PVZ_OSID, U32, U32, U32, U64, U64, U64,
     U64, U64),
    (U32, 0x01020304, 0x05060708, 0x090A0B0C, 0x0D0E0F10, 0x11121314, 0x1516171819202122,
     0x2324252627282930, 0x3132333435363738, 0x3940414243444546, 0x4748495051525354),
]


def c_pack(row) -> bytes:
    """What a C compiler lays out for the row: each field at its documented offset."""
    out = bytearray(64)
    for (name, off), value in zip(LAYOUT["pvz_msg"][1].items(), row):
        width = 4 if off < 24 else 8
        out[off:off + width] = value.to_bytes(width, "little")
    return bytes(out)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"func{r[0]}")
def test_message_round_trips_and_matches_the_c_layout(row):
    raw = A.PVZ_MSG.pack(*row)
    assert len(raw) == A.PVZ_MSG_SIZE
    assert raw == c_pack(row)
    assert A.PVZ_MSG.unpack(raw) == row
    # Each field sits at MSG_OFFSETS, little-endian.
    for name, value in zip(A.MSG_FIELDS, row):
        off = A.MSG_OFFSETS[name]
        width = 4 if name in MSG_FIELDS[:6] else 8
        assert int.from_bytes(raw[off:off + width], "little") == value, name


def test_message_rejects_values_that_do_not_fit():
    with pytest.raises(struct.error):
        A.PVZ_MSG.pack(2**32, *([0] * 10))
    with pytest.raises(struct.error):
        A.PVZ_MSG.pack(*([0] * 10), 2**64)
    with pytest.raises(struct.error):
        A.PVZ_MSG.pack(-1, *([0] * 10))
