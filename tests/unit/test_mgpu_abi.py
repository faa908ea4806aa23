"""The example mediated GPU's ABI three ways: the guest header
(guest/include/paravm/mgpu.h, compiled with gcc), the device model's
declarations (paravm.devices.mgpu, the MPT's abi and the x86 layout), and
the numbers the header documents, written out here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from paravm.arch.x86 import layout as L
from paravm.devices import mgpu as M
from paravm.services.mpt import abi as A

from c_probe import probe, py_offsets

HEADER = Path(__file__).resolve().parents[2] / "guest" / "include" / "paravm" / "mgpu.h"

CMD_FIELDS = ("op", "flags", "dst", "dst_pitch", "src", "src_pitch", "x", "y", "w", "h",
              "sx", "sy", "color", "status", "result", "tag", "reserved")
FENCE_FIELDS = ("seqno", "error")

# struct -> (size, {field: offset}), as the header's comments give them.
LAYOUT = {
    "mgpu_cmd": (64, dict(zip(CMD_FIELDS, (0, 4, 8, 12, 16, 20, 24, 26, 28, 30, 32, 34, 36,
                                           40, 44, 48, 56)))),
    "mgpu_fence": (8, dict(zip(FENCE_FIELDS, (0, 4)))),
}
PY_STRUCT = {"mgpu_cmd": (M.CMD, CMD_FIELDS), "mgpu_fence": (M.FENCE, FENCE_FIELDS)}

# C name -> the VMM's value.
VMM = {
    "MGPU_REGS_GPA": L.MGPU_REGS_GPA, "MGPU_REGS_SIZE": M.REGS_SIZE,
    "MGPU_OPREGION_GPA": L.MPT_OPREGION_GPA, "MGPU_OPREGION_SIZE": A.OPREGION_SIZE,
    "MGPU_VECTOR": L.VEC_MGPU,
    "MGPU_ID": M.MGPU_ID, "MGPU_VERSION": M.MGPU_VERSION,
    "MGPU_REG_ID": M.REG_ID, "MGPU_REG_VERSION": M.REG_VERSION,
    "MGPU_REG_STATUS": M.REG_STATUS, "MGPU_REG_ERROR": M.REG_ERROR,
    "MGPU_REG_GTT_BASE_LO": M.REG_GTT_BASE_LO, "MGPU_REG_GTT_BASE_HI": M.REG_GTT_BASE_HI,
    "MGPU_REG_GTT_PAGES": M.REG_GTT_PAGES,
    "MGPU_REG_RING_BASE_LO": M.REG_RING_BASE_LO, "MGPU_REG_RING_BASE_HI": M.REG_RING_BASE_HI,
    "MGPU_REG_RING_SIZE": M.REG_RING_SIZE, "MGPU_REG_RING_HEAD": M.REG_RING_HEAD,
    "MGPU_REG_RING_TAIL": M.REG_RING_TAIL, "MGPU_REG_SEQNO": M.REG_SEQNO,
    "MGPU_REG_IRQ_STATUS": M.REG_IRQ_STATUS, "MGPU_REG_IRQ_ENABLE": M.REG_IRQ_ENABLE,
    "MGPU_REG_MSI_CONTROL": M.REG_MSI_CONTROL, "MGPU_REG_MSI_ADDRESS": M.REG_MSI_ADDRESS,
    "MGPU_REG_MSI_DATA": M.REG_MSI_DATA, "MGPU_REG_FENCE_LO": M.REG_FENCE_LO,
    "MGPU_REG_FENCE_HI": M.REG_FENCE_HI, "MGPU_REG_OPREGION": M.REG_OPREGION,
    "MGPU_STATUS_GTT_VALID": M.STATUS_GTT_VALID, "MGPU_STATUS_RING_VALID": M.STATUS_RING_VALID,
    "MGPU_STATUS_ERROR": M.STATUS_ERROR,
    "MGPU_IRQ_COMPLETE": M.IRQ_COMPLETE, "MGPU_IRQ_ERROR": M.IRQ_ERROR,
    "MGPU_GTT_MAX_PAGES": M.GTT_MAX_PAGES, "MGPU_GTT_ENTRIES_PER_PAGE": M.GTT_ENTRIES_PER_PAGE,
    "MGPU_GTT_PRESENT": M.GTT_PRESENT, "MGPU_GTT_ADDR_MASK": M.GTT_ADDR_MASK,
    "MGPU_OP_NOP": M.OP_NOP, "MGPU_OP_FILL": M.OP_FILL, "MGPU_OP_COPY": M.OP_COPY,
    "MGPU_OP_CHECKSUM": M.OP_CHECKSUM, "MGPU_OP_PRESENT": M.OP_PRESENT,
    "MGPU_E_OK": M.E_OK, "MGPU_E_BAD_OP": M.E_BAD_OP, "MGPU_E_BAD_RECT": M.E_BAD_RECT,
    "MGPU_E_GTT_FAULT": M.E_GTT_FAULT, "MGPU_E_NO_GTT": M.E_NO_GTT,
    "MGPU_E_BAD_RING": M.E_BAD_RING, "MGPU_MAX_DIM": M.MAX_DIM,
}

# The numbers as the header documents them (its comments and docs/mpt.md).
PINNED = {
    "MGPU_REGS_GPA": 0xFD000000, "MGPU_REGS_SIZE": 0x1000, "MGPU_OPREGION_GPA": 0xFCC00000,
    "MGPU_OPREGION_SIZE": 0x2000, "MGPU_VECTOR": 0xE2, "MGPU_ID": 0x5550474D,
    "MGPU_VERSION": 1,
    "MGPU_REG_ID": 0x000, "MGPU_REG_VERSION": 0x004, "MGPU_REG_STATUS": 0x008,
    "MGPU_REG_ERROR": 0x00C, "MGPU_REG_GTT_BASE_LO": 0x010, "MGPU_REG_GTT_BASE_HI": 0x014,
    "MGPU_REG_GTT_PAGES": 0x018, "MGPU_REG_RING_BASE_LO": 0x020,
    "MGPU_REG_RING_BASE_HI": 0x024, "MGPU_REG_RING_SIZE": 0x028, "MGPU_REG_RING_HEAD": 0x02C,
    "MGPU_REG_RING_TAIL": 0x030, "MGPU_REG_SEQNO": 0x034, "MGPU_REG_IRQ_STATUS": 0x038,
    "MGPU_REG_IRQ_ENABLE": 0x03C, "MGPU_REG_MSI_CONTROL": 0x040,
    "MGPU_REG_MSI_ADDRESS": 0x044, "MGPU_REG_MSI_DATA": 0x048, "MGPU_REG_FENCE_LO": 0x050,
    "MGPU_REG_FENCE_HI": 0x054, "MGPU_REG_OPREGION": 0x058,
    "MGPU_STATUS_GTT_VALID": 1, "MGPU_STATUS_RING_VALID": 2, "MGPU_STATUS_ERROR": 4,
    "MGPU_IRQ_COMPLETE": 1, "MGPU_IRQ_ERROR": 2,
    "MGPU_GTT_MAX_PAGES": 16, "MGPU_GTT_ENTRIES_PER_PAGE": 512, "MGPU_GTT_PRESENT": 1,
    "MGPU_GTT_ADDR_MASK": 0x000FFFFFFFFFF000,
    "MGPU_OP_NOP": 0, "MGPU_OP_FILL": 1, "MGPU_OP_COPY": 2, "MGPU_OP_CHECKSUM": 3,
    "MGPU_OP_PRESENT": 4,
    "MGPU_E_OK": 0, "MGPU_E_BAD_OP": 1, "MGPU_E_BAD_RECT": 2, "MGPU_E_GTT_FAULT": 3,
    "MGPU_E_NO_GTT": 4, "MGPU_E_BAD_RING": 5, "MGPU_MAX_DIM": 4096,
}

# Values of mgpu_gtt_entry() the probe computes.
GTT_ENTRY_ARGS = (0, 0x1000, 0x200FFF, 0x000FFFFFFFFFFFFF, 0xFFF0000000001234)
SIGNATURE_LEN = 16


def _program() -> str:
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "paravm/mgpu.h"',
             '#define P(x) printf("%s %lld\\n", #x, (long long)(x))', "int main(void) {"]
    for name, (_, fields) in LAYOUT.items():
        lines.append(f"P(sizeof(struct {name}));")
        for f in fields:
            lines.append(f"P(offsetof(struct {name}, {f}));")
    for name in VMM:
        lines.append(f"P({name});")
    lines.append("P(sizeof(MGPU_OPREGION_SIGNATURE));")
    for i in range(SIGNATURE_LEN):
        lines.append(f"P(MGPU_OPREGION_SIGNATURE[{i}]);")
    for i, gpa in enumerate(GTT_ENTRY_ARGS):
        lines.append(f'printf("gtt_entry{i} %llu\\n", '
                     f"(unsigned long long)mgpu_gtt_entry({gpa:#x}ull));")
    lines += ["return 0;", "}"]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def c_abi(tmp_path_factory):
    return probe(tmp_path_factory.mktemp("mgpu_abi"), _program(),
                 ("-std=c11", "-Wall", "-Wextra", "-Werror"))


@pytest.mark.parametrize("name", LAYOUT)
def test_struct_layout_is_the_same_in_c_and_python(c_abi, name):
    size, fields = LAYOUT[name]
    assert c_abi[f"sizeof(struct {name})"] == size
    assert {f: c_abi[f"offsetof(struct {name}, {f})"] for f in fields} == fields
    s, names = PY_STRUCT[name]
    assert s.size == size
    offsets = py_offsets(s)
    assert len(offsets) == len(names)
    assert dict(zip(names, offsets)) == fields


def test_command_size_and_status_offset():
    assert M.CMD_SIZE == LAYOUT["mgpu_cmd"][0]
    assert M.CMD_STATUS_OFF == LAYOUT["mgpu_cmd"][1]["status"]
    # status and result are written back as one struct mgpu_fence-shaped pair.
    assert LAYOUT["mgpu_cmd"][1]["result"] == M.CMD_STATUS_OFF + M.FENCE.size // 2


@pytest.mark.parametrize("name", VMM)
def test_constant_is_the_same_in_c_and_python_and_as_documented(c_abi, name):
    assert c_abi[name] == VMM[name]
    assert VMM[name] == PINNED[name]


def test_opregion_signature_is_the_mpts(c_abi):
    assert c_abi["sizeof(MGPU_OPREGION_SIGNATURE)"] == SIGNATURE_LEN + 1   # the NUL
    sig = bytes(c_abi[f"MGPU_OPREGION_SIGNATURE[{i}]"] for i in range(SIGNATURE_LEN))
    assert sig == A.OPREGION_SIGNATURE == b"IntelGraphicsMem"
    assert M.OPREGION_TEXT.startswith(sig)
    assert len(M.OPREGION_TEXT) <= A.OPREGION_SIZE


def test_gtt_entry_helper_keeps_the_address_bits_and_sets_present(c_abi):
    for i, gpa in enumerate(GTT_ENTRY_ARGS):
        assert c_abi[f"gtt_entry{i}"] == (gpa & M.GTT_ADDR_MASK) | M.GTT_PRESENT


def test_id_spells_mgpu():
    assert M.MGPU_ID.to_bytes(4, "little") == b"MGPU"


def test_every_constant_of_the_header_is_checked():
    names = set(re.findall(r"^#define\s+(MGPU_\w+)\s", HEADER.read_text(), re.M))
    assert names - {"MGPU_OPREGION_SIGNATURE"} == set(VMM)


def test_the_registers_fit_the_bank_and_the_layout_leaves_room():
    regs = [v for k, v in VMM.items() if k.startswith("MGPU_REG_")]
    assert len(set(regs)) == len(regs)
    assert all(r % 4 == 0 and r + 4 <= M.REGS_SIZE for r in regs)
    # The OpRegion and the registers lie in the 32-bit hole, below the local
    # APIC, apart from each other.
    assert L.MPT_OPREGION_GPA + A.OPREGION_SIZE <= L.MGPU_REGS_GPA
    assert L.MGPU_REGS_GPA + M.REGS_SIZE <= L.LAPIC_BASE
    assert L.MPT_OPREGION_GPA + A.OPREGION_SIZE <= L.LAPIC_BASE - (32 << 20)
    assert 0x20 <= L.VEC_MGPU <= 0xFE
