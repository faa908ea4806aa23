"""Atomic operations on shared memory (guest pages seen through the VMM's mapping).

A vCPU may write a shared word while the VMM updates it (a grant entry's
flags, an event channel's pending bit), so a read-modify-write from Python
must be one locked instruction, as the guest's own ``lock cmpxchg`` /
``lock or`` are.  Python has no atomics on raw memory; gcc's ``libatomic``
(installed with gcc) exports them as plain C functions that ctypes can call:
for sizes 1, 2, 4 and 8 on x86-64 they are the lock-prefixed instructions,
not a lock table, so they are atomic against the guest too.

Every function takes a host virtual address (an ``hva`` plus an offset:
:attr:`paravm.memory.FrameRange.hva`, :attr:`paravm.memory.Region.hva`).
The caller checks the address lies in a live mapping; a bad address
crashes the process, like any pointer.  Each operation is one ctypes call.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_SEQ_CST = 5


def _load():
    name = ctypes.util.find_library("atomic") or "libatomic.so.1"
    try:
        return ctypes.CDLL(name)
    except OSError as e:
        raise ImportError(f"paravm needs gcc's libatomic ({name}): {e}") from None


_lib = _load()

_cas = {}
for _size, _ctype in ((1, ctypes.c_uint8), (2, ctypes.c_uint16), (4, ctypes.c_uint32),
                      (8, ctypes.c_uint64)):
    _fn = getattr(_lib, f"__atomic_compare_exchange_{_size}")
    _fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, _ctype, ctypes.c_int, ctypes.c_int]
    _fn.restype = ctypes.c_bool
    _cas[_size] = (_fn, _ctype)


def _fetch(op: str, size: int, ctype):
    fn = getattr(_lib, f"__atomic_fetch_{op}_{size}")
    fn.argtypes = [ctypes.c_void_p, ctype, ctypes.c_int]
    fn.restype = ctype
    return fn


_or8 = _fetch("or", 8, ctypes.c_uint64)
_and8 = _fetch("and", 8, ctypes.c_uint64)
_or1 = _fetch("or", 1, ctypes.c_uint8)
_and1 = _fetch("and", 1, ctypes.c_uint8)
_xchg1 = _lib.__atomic_exchange_1
_xchg1.argtypes = [ctypes.c_void_p, ctypes.c_uint8, ctypes.c_int]
_xchg1.restype = ctypes.c_uint8
_load4 = _lib.__atomic_load_4
_load4.argtypes = [ctypes.c_void_p, ctypes.c_int]
_load4.restype = ctypes.c_uint32


def cmpxchg(addr: int, size: int, expected: int, new: int) -> int:
    """Atomically: if the *size*-byte (1, 2, 4, 8) little-endian word at
    *addr* equals *expected*, store *new*.  Returns the value found (equal to
    *expected* on success), as ``lock cmpxchg`` does."""
    fn, ctype = _cas[size]
    exp = ctype(expected)
    fn(addr, ctypes.byref(exp), new, _SEQ_CST, _SEQ_CST)
    return exp.value


def load_u32(addr: int) -> int:
    """One atomic 32-bit load (a grant entry's flags and domid together)."""
    return _load4(addr, _SEQ_CST)


def fetch_or_u8(addr: int, bits: int) -> int:
    """``*addr |= bits`` on one byte, atomically; the old value."""
    return _or1(addr, bits, _SEQ_CST)


def fetch_and_u8(addr: int, bits: int) -> int:
    """``*addr &= bits`` on one byte, atomically; the old value."""
    return _and1(addr, bits, _SEQ_CST)


def xchg_u8(addr: int, value: int) -> int:
    """Store one byte, atomically; the old value."""
    return _xchg1(addr, value, _SEQ_CST)


def test_and_set_bit(addr: int, bit: int) -> bool:
    """Set bit *bit* (any non-negative number) of the bitmap at *addr*
    atomically (as Linux ``test_and_set_bit``, 64-bit words); True if it was
    already set."""
    word = addr + (bit >> 6) * 8
    mask = 1 << (bit & 63)
    return bool(_or8(word, mask, _SEQ_CST) & mask)


def test_and_clear_bit(addr: int, bit: int) -> bool:
    """Clear bit *bit* of the bitmap at *addr* atomically; True if it was set."""
    word = addr + (bit >> 6) * 8
    mask = 1 << (bit & 63)
    return bool(_and8(word, ~mask & 0xFFFFFFFFFFFFFFFF, _SEQ_CST) & mask)
