"""Tegra IVC: inter-VM frame queues over shared memory (specs/ivc-lguest-pvz.md §A).

:mod:`.protocol` is the protocol on plain memory (one endpoint: an rx and a tx
channel); docs/ivc.md describes it.
"""

from .protocol import (HEADER_SIZE, IVC_ALIGN, R_COUNT, STATE, ST_ACK, ST_ESTABLISHED,
                       ST_SYNC, VARIANTS, W_COUNT, Channel, Header, IvcError, align,
                       check_params, read_header, total_queue_size)

__all__ = ["HEADER_SIZE", "IVC_ALIGN", "R_COUNT", "STATE", "ST_ACK", "ST_ESTABLISHED",
           "ST_SYNC", "VARIANTS", "W_COUNT", "Channel", "Header", "IvcError", "align",
           "check_params", "read_header", "total_queue_size"]
