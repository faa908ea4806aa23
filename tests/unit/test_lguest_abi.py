"""The lguest ABI header (guest/include/paravm/lguest_abi.h) and the VMM's structs agree."""

import re
from pathlib import Path

import pytest

from paravm.services.lguest import abi

from c_probe import probe, py_offsets

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "guest/include/paravm/lguest_abi.h"

PROGRAM = r"""
#include <stddef.h>
#include <stdio.h>
#include "paravm/lguest_abi.h"
#define P(x) printf(#x " %lu\n", (unsigned long)(x))
int main(void)
{
    P(sizeof(struct lguest_dma)); P(offsetof(struct lguest_dma, used_len));
    P(offsetof(struct lguest_dma, addr)); P(offsetof(struct lguest_dma, len));
    P(sizeof(struct lguest_device_desc)); P(offsetof(struct lguest_device_desc, type));
    P(offsetof(struct lguest_device_desc, features)); P(offsetof(struct lguest_device_desc, status));
    P(offsetof(struct lguest_device_desc, num_pages)); P(offsetof(struct lguest_device_desc, pfn));
    P(sizeof(struct lguest_block_page)); P(offsetof(struct lguest_block_page, type));
    P(offsetof(struct lguest_block_page, sector)); P(offsetof(struct lguest_block_page, bytes));
    P(offsetof(struct lguest_block_page, result));
    P(offsetof(struct lguest_block_page, num_sectors));
    P(offsetof(struct lguest_block_page, disk_bytes));
    P(sizeof(struct lguest_net));
    return 0;
}
"""


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory):
    return probe(tmp_path_factory.mktemp("lguest_abi"), PROGRAM)


def test_struct_layouts(c_layout):
    c = c_layout
    assert c["sizeof(struct lguest_dma)"] == abi.DMA_SIZE == 168
    assert (c["offsetof(struct lguest_dma, used_len)"], c["offsetof(struct lguest_dma, addr)"],
            c["offsetof(struct lguest_dma, len)"]) == (abi.DMA_USED_LEN, 8, 136)
    assert c["sizeof(struct lguest_device_desc)"] == abi.DESC_SIZE
    assert [c[f"offsetof(struct lguest_device_desc, {f})"]
            for f in ("type", "features", "status", "num_pages", "pfn")] == [0, 2, abi.DESC_STATUS, 6, 8]
    assert c["sizeof(struct lguest_block_page)"] == abi.BLOCK_SIZE
    assert [c[f"offsetof(struct lguest_block_page, {f})"]
            for f in ("type", "sector", "bytes", "result", "num_sectors", "disk_bytes")] == \
        [0, 4, 8, abi.BLOCK_RESULT, 16, 24]
    assert c["sizeof(struct lguest_net)"] == abi.NET_SLOT
    # ... and the Python structs the VMM packs have their fields at the C offsets
    assert [c[f"offsetof(struct lguest_device_desc, {f})"]
            for f in ("type", "features", "status", "num_pages", "pfn")] == py_offsets(abi.DESC)
    block = py_offsets(abi.BLOCK)          # type sector bytes result num_sectors (pad) disk_bytes
    assert [c[f"offsetof(struct lguest_block_page, {f})"]
            for f in ("type", "sector", "bytes", "result", "num_sectors", "disk_bytes")] == \
        block[:5] + block[6:]
    assert c["sizeof(struct lguest_dma)"] == abi.DMA.size


def define(name):
    m = re.search(rf"^#define\s+{name}\s+\(?([^\s)]+)", HEADER.read_text(), re.M)
    assert m, name
    return int(m.group(1), 0)


@pytest.mark.parametrize("name, value", [
    ("LHCALL_BIND_DMA", abi.HC_BIND_DMA), ("LHCALL_SEND_DMA", abi.HC_SEND_DMA),
    ("LGUEST_MAX_DMA", abi.MAX_DMA), ("LGUEST_MAX_DMA_SECTIONS", abi.MAX_SECTIONS),
    ("LGUEST_MAX_DEVICES", abi.MAX_DEVICES), ("LGUEST_IRQS", abi.IRQS),
    ("LGUEST_CONSOLE_DMA_KEY", abi.CONSOLE_KEY), ("LGUEST_VECTOR_BASE", abi.VECTOR_BASE),
    ("LGUEST_DEVICE_T_CONSOLE", abi.T_CONSOLE), ("LGUEST_DEVICE_T_NET", abi.T_NET),
    ("LGUEST_DEVICE_T_BLOCK", abi.T_BLOCK), ("LGUEST_NET_F_NOCSUM", abi.NET_F_NOCSUM),
    ("LGUEST_DEVICE_F_RANDOMNESS", abi.DEVICE_F_RANDOMNESS),
    ("LGUEST_DEVICE_S_ACKNOWLEDGE", abi.S_ACKNOWLEDGE), ("LGUEST_DEVICE_S_DRIVER", abi.S_DRIVER),
    ("LGUEST_DEVICE_S_DRIVER_OK", abi.S_DRIVER_OK), ("LGUEST_DEVICE_S_REMOVED", abi.S_REMOVED),
    ("LGUEST_DEVICE_S_REMOVED_ACK", abi.S_REMOVED_ACK), ("LGUEST_DEVICE_S_FAILED", abi.S_FAILED),
    ("LGUEST_BLOCK_READ", abi.BLOCK_READ), ("LGUEST_BLOCK_WRITE", abi.BLOCK_WRITE),
    ("LGUEST_BLOCK_FLUSH", abi.BLOCK_FLUSH), ("LGUEST_BLOCK_DONE", abi.BLOCK_DONE),
    ("LGUEST_BLOCK_ERROR", abi.BLOCK_ERROR), ("LGUEST_NET_PROMISC", abi.NET_PROMISC),
    ("LGUEST_NET_MAX_FRAME", abi.NET_MAX_FRAME),
])
def test_constants(name, value):
    assert define(name) == value
