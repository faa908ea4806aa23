"""The lguest ABI as the guest sees it: layouts and numbers (docs/lguest.md).

The C side is ``guest/include/paravm/lguest_abi.h``; tests/unit/test_lguest_abi.py
compiles it and checks every size and offset against these structs.  Layouts
are Linux 2.6.23's (``include/linux/lguest_launcher.h``, specs §B.1) with
``unsigned long`` as the guest's: LP64, so ``struct lguest_dma`` is 168 bytes.
"""

from __future__ import annotations

import struct

HC_BIND_DMA = 12            # (key, dmas, num, irq) -> 1 / 0        (LHCALL_BIND_DMA)
HC_SEND_DMA = 13            # (key, dma) -> 0; result in used_len   (LHCALL_SEND_DMA)

MAX_DMA = 32                # bindings per guest
MAX_SECTIONS = 16
MAX_DEVICES = 16
IRQS = 32                   # irqs 1..31; 0 unbinds
CONSOLE_KEY = 0
VECTOR_BASE = 0xC0          # irq n -> vector 0xC0 + n
MAX_BOUND = 256             # entries per binding (the reference allows 65535; see docs)

# struct lguest_dma: used_len u32 @0, pad @4, addr u64[16] @8, len u16[16] @136
DMA = struct.Struct("<II16Q16H")
DMA_SIZE = DMA.size         # 168
DMA_USED_LEN = 0

# struct lguest_device_desc: type u16, features u16, status u16, num_pages u16, pfn u32
DESC = struct.Struct("<HHHHI")
DESC_SIZE = DESC.size       # 12
DESC_STATUS = 4

T_CONSOLE, T_NET, T_BLOCK = 1, 2, 3
NET_F_NOCSUM = 0x4000
DEVICE_F_RANDOMNESS = 0x8000
S_ACKNOWLEDGE, S_DRIVER, S_DRIVER_OK = 1, 2, 4
S_REMOVED, S_REMOVED_ACK, S_FAILED = 8, 16, 128

# struct lguest_block_page: type i32, sector u32, bytes u32, result i32,
# num_sectors u32, pad u32, disk_bytes u64 (paravm extension)
BLOCK = struct.Struct("<iIIiIIQ")
BLOCK_SIZE = BLOCK.size     # 32
BLOCK_RESULT = 12
BLOCK_READ, BLOCK_WRITE, BLOCK_FLUSH = 0, 1, 2
BLOCK_PENDING, BLOCK_DONE, BLOCK_ERROR = 0, 1, 2
SECTOR = 512

NET_SLOT = 6                # struct lguest_net: mac[6]
NET_SLOTS = 4096 // NET_SLOT
NET_PROMISC = 0x01
NET_MAX_FRAME = 1514


def net_mac(domid: int) -> bytes:
    """A guest's MAC: 02:00:<domid low byte>:<domid high byte>:00:00 (as lguest, with the domid)."""
    return bytes((0x02, 0x00, domid & 0xFF, (domid >> 8) & 0xFF, 0, 0))
