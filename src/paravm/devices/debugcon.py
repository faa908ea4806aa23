"""The debug console: one byte out of port 0xE9 is one byte of console output.

The port QEMU's ``isa-debugcon`` and Bochs use (``outb %al, $0xe9``), for code
that cannot make hypercalls yet.  Reading the port returns 0xE9, as Bochs and
QEMU answer, so a guest can probe for it.  Every byte costs an exit (35-55 us
here, bench/exit_roundtrip): prefer the ``console_write`` hypercall, which moves a whole buffer in one.
"""

from __future__ import annotations

import time

DEBUGCON_PORT = 0xE9


class DebugCon:
    """A PIO bus device writing to a :class:`paravm.vm.console.Console`."""

    def __init__(self, console) -> None:
        self.console = console

    def read(self, offset: int, data: memoryview) -> None:
        data[0] = DEBUGCON_PORT
        for i in range(1, len(data)):
            data[i] = 0

    def write(self, offset: int, data: memoryview) -> None:
        self.console.write(bytes(data[:1]), time.perf_counter_ns())
