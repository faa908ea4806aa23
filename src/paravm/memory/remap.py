"""Replace pages of a VMM mapping in place: ``mmap(MAP_FIXED | MAP_SHARED)``.

A grant mapped into a guest goes into a *grant window*: a region of the
guest's physical address space backed by one VMM mapping and registered as
one memslot when the domain is built.  Mapping a grant replaces one 4 KiB
page of that VMM mapping with the granter's page (its memfd at its offset);
KVM's MMU notifier drops the old translation before ``mmap`` returns, so the
guest sees the new page on its next access and no memslot ioctl is made
(a memslot added at run time costs milliseconds here: bench/memslot; the
host side of a grant map, remap included, is timed by bench/grant).  Unmapping puts the window's own page back.
Python's ``mmap`` module cannot map at a chosen address, so this calls
libc's ``mmap`` through ctypes.
"""

from __future__ import annotations

import ctypes
import mmap
import os

MAP_FIXED = 0x10
PROT_READ = mmap.PROT_READ
PROT_WRITE = mmap.PROT_WRITE

_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                  ctypes.c_int, ctypes.c_long]
_MAP_FAILED = ctypes.c_void_p(-1).value


def map_fixed(hva: int, length: int, fd: int, offset: int, *, writable: bool = True) -> None:
    """Map *length* bytes of *fd* at *offset* over ``[hva, hva+length)``,
    shared, replacing what was there (all page aligned).  ``OSError`` if the
    kernel refuses (the old mapping then stays, as mmap(2) leaves it)."""
    prot = PROT_READ | (PROT_WRITE if writable else 0)
    r = _mmap(hva, length, prot, mmap.MAP_SHARED | MAP_FIXED, fd, offset)
    if r == _MAP_FAILED or r is None:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap(MAP_FIXED) at {hva:#x}: {os.strerror(err)}")
    if r != hva:   # cannot happen with MAP_FIXED; fail closed if it does
        raise OSError(0, f"mmap(MAP_FIXED) returned {r:#x}, not {hva:#x}")


def map_anonymous(hva: int, length: int) -> None:
    """Put fresh private zero pages over ``[hva, hva+length)``: what a host
    view of a grant becomes when it is unmapped (reads see zeros, writes go
    nowhere), so a memoryview still held never touches the granter again
    and never faults."""
    r = _mmap(hva, length, PROT_READ | PROT_WRITE,
              mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED, -1, 0)
    if r == _MAP_FAILED or r is None:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap(MAP_FIXED|MAP_ANONYMOUS) at {hva:#x}: {os.strerror(err)}")
