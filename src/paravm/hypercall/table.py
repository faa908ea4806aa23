"""The hypercall dispatch table: a fixed list that services fill at set-up.

As Solo5 hvt's ``hvt_core`` table: one slot per number, ``None`` = ENOSYS.
A handler is ``fn(vcpu, a0, a1, a2, a3, a4, a5) -> int`` where *vcpu* is the
calling :class:`paravm.vm.vcpu.VcpuRunner` (``vcpu.domain``, ``vcpu.index``)
and the arguments are the raw u64 register values the guest chose: the
handler checks every one.  Returning ``None`` means "no result" (the vCPU is
stopping).  Raising :class:`GuestMemoryError` returns ``-EFAULT``; a
:class:`HypercallError` returns its ``-errno``; anything else stops the
calling domain with the traceback as its reason (never the VMM).
"""

from __future__ import annotations

from typing import Callable

from ..arch.x86.layout import RESERVED_END
from ..memory import GuestMemoryError
from .abi import HC_MAX

Handler = Callable[..., "int | None"]


class HypercallError(Exception):
    """Raise ``HypercallError(errno)`` from a handler to return ``-errno``."""

    def __init__(self, errno: int, why: str = "") -> None:
        super().__init__(why or f"errno {errno}")
        self.errno = errno


def guest_buffer(mem, gpa: int, length: int, *, writable: bool = False) -> memoryview:
    """A zero-copy view of a hypercall's buffer ``[gpa, gpa+length)`` in
    guest memory *mem* (use it in a ``with``).  :class:`GuestMemoryError`
    (the dispatcher's ``-EFAULT``) for any byte outside guest memory, in a read-only region
    when *writable*, or below ``RESERVED_END``: the page tables, GDT, IDT
    and stub stacks the VMM built are never read or written on a guest's
    behalf (ring-3 code must not reach its ring 0 through a service).
    Overflow-safe for any Python ints."""
    if gpa < RESERVED_END and length:
        raise GuestMemoryError(gpa, length, "is in the reserved area")
    return mem.writable_view(gpa, length) if writable else mem.view(gpa, length)


class HypercallTable:
    def __init__(self) -> None:
        self.handlers: list[Handler | None] = [None] * HC_MAX
        self.names: list[str | None] = [None] * HC_MAX

    def register(self, nr: int, name: str, fn: Handler) -> None:
        """Claim slot *nr*; ``ValueError`` if it is out of range or taken."""
        if not 0 <= nr < HC_MAX:
            raise ValueError(f"hypercall number {nr} outside 0..{HC_MAX - 1}")
        if self.handlers[nr] is not None:
            raise ValueError(f"hypercall {nr} already registered as {self.names[nr]}")
        self.handlers[nr], self.names[nr] = fn, name

    def name(self, nr: int) -> str:
        if 0 <= nr < HC_MAX and self.names[nr]:
            return self.names[nr]
        return f"#{nr}"
