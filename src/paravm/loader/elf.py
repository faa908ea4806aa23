"""Guest images: static ELF64 x86-64 executables, read with pyelftools.

An image is checked against the domain's layout before one byte is copied:
64-bit class, little endian, x86-64 machine, ``ET_EXEC``; every ``PT_LOAD``
segment identity mapped (``p_vaddr == p_paddr``), ``filesz <= memsz``, inside
``[RESERVED_END, stacks_bottom)``; the entry point inside an executable loaded
segment.  Refusals raise :class:`ImageError` naming the file and the reason.

SDK-built images carry a ``.paravm_image`` section (``struct pv_image_header``)
giving the ring-0 stub's vector table; images without it get no IDT.
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

from ..arch.x86 import layout as L

PT_LOAD = "PT_LOAD"
SHF_COMPRESSED = 0x800
PF_X = 1


class ImageError(Exception):
    """An image the loader refuses; ``str()`` is ``"<file>: <reason>"``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


class Segment(NamedTuple):
    gpa: int
    data: bytes       # filesz bytes
    memsz: int        # bytes; the rest after data is zeroed
    executable: bool


class Image(NamedTuple):
    path: str
    entry: int
    segments: tuple[Segment, ...]
    vectors: int | None   # GPA of the stub's 256 entry points, or None
    end: int              # first byte after the highest segment, page aligned

    def load(self, mem) -> None:
        """Copy the segments into guest memory *mem* (checked by :func:`read_image`)."""
        for seg in self.segments:
            mem.write(seg.gpa, seg.data)
            if seg.memsz > len(seg.data):
                mem.fill(seg.gpa + len(seg.data), seg.memsz - len(seg.data))


def read_image(path: str | os.PathLike, ram_size: int, nr_vcpus: int) -> Image:
    """Read and check the ELF at *path* for a domain of *ram_size* bytes with
    *nr_vcpus* vCPUs (their stacks sit at the top of RAM)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ImageError(path, f"cannot open: {e.strerror}") from None
    with f:
        try:
            elf = ELFFile(f)
            return _check(path, elf, ram_size, nr_vcpus)
        except ImageError:
            raise
        except (ELFError, struct.error, ValueError, OSError, KeyError, IndexError,
                AttributeError, TypeError, OverflowError, MemoryError, EOFError,
                ArithmeticError) as e:
            raise ImageError(path, f"not a valid ELF file ({e})") from None


def _check(path: str, elf, ram_size: int, nr_vcpus: int) -> Image:
    if elf.elfclass != 64:
        raise ImageError(path, f"ELF class {elf.elfclass}-bit, need 64-bit")
    if not elf.little_endian:
        raise ImageError(path, "big-endian ELF, need little-endian")
    machine = elf["e_machine"]
    if machine != "EM_X86_64":
        raise ImageError(path, f"machine {machine}, need EM_X86_64")
    if elf["e_type"] != "ET_EXEC":
        raise ImageError(path, f"type {elf['e_type']}, need ET_EXEC "
                               "(a static, non-PIE executable)")
    limit = L.stacks_bottom(ram_size, nr_vcpus)
    segments = []
    for i, ph in enumerate(elf.iter_segments()):
        if ph["p_type"] != PT_LOAD or ph["p_memsz"] == 0:
            continue
        vaddr, paddr, filesz, memsz = ph["p_vaddr"], ph["p_paddr"], ph["p_filesz"], ph["p_memsz"]
        where = f"segment {i} [{paddr:#x}, {paddr + memsz:#x})"
        if vaddr != paddr:
            raise ImageError(path, f"{where}: p_vaddr {vaddr:#x} != p_paddr (guests are "
                                   "identity mapped)")
        if filesz > memsz:
            raise ImageError(path, f"{where}: p_filesz {filesz:#x} > p_memsz {memsz:#x}")
        if paddr < L.RESERVED_END:
            raise ImageError(path, f"{where} overlaps the VMM's reserved area "
                                   f"[0, {L.RESERVED_END:#x})")
        if paddr + memsz > limit:
            raise ImageError(path, f"{where} is outside guest RAM (the image must end "
                                   f"below {limit:#x}: {ram_size >> 20} MiB less "
                                   f"{nr_vcpus} x {L.STACK_SIZE >> 10} KiB of stacks)")
        data = ph.data()
        if len(data) != filesz:
            raise ImageError(path, f"{where}: file truncated ({len(data)} of {filesz} bytes)")
        segments.append(Segment(paddr, data, memsz, bool(ph["p_flags"] & PF_X)))
    if not segments:
        raise ImageError(path, "no loadable segment")
    ordered = sorted(segments, key=lambda s: s.gpa)
    for a, b in zip(ordered, ordered[1:]):
        if a.gpa + a.memsz > b.gpa:
            raise ImageError(path, f"segments at {a.gpa:#x} and {b.gpa:#x} overlap")
    entry = elf["e_entry"]
    if not any(s.executable and s.gpa <= entry < s.gpa + s.memsz for s in segments):
        raise ImageError(path, f"entry point {entry:#x} is outside every executable "
                               "loaded segment")
    vectors = _image_vectors(path, elf, segments)
    end = max(s.gpa + s.memsz for s in segments)
    return Image(path, entry, tuple(ordered), vectors, (end + L.PAGE - 1) & ~(L.PAGE - 1))


def _image_vectors(path: str, elf, segments) -> int | None:
    sec = elf.get_section_by_name(L.IMAGE_SECTION)
    if sec is None:
        return None
    # Check the header's claims, then read the 16 bytes we need from the loaded
    # segment that holds the section, never sec.data() (a hostile header could
    # claim any size, or compression).
    if sec["sh_flags"] & SHF_COMPRESSED:
        raise ImageError(path, f"{L.IMAGE_SECTION}: compressed, must be plain")
    if not 16 <= sec["sh_size"] <= 4096:
        raise ImageError(path, f"{L.IMAGE_SECTION}: size {sec['sh_size']:#x}, expected "
                               "16..4096 bytes (struct pv_image_header)")
    addr = sec["sh_addr"]
    data = None
    for s in segments:
        if s.gpa <= addr and addr + 16 <= s.gpa + len(s.data):
            data = s.data[addr - s.gpa:addr - s.gpa + 16]
            break
    if data is None:
        raise ImageError(path, f"{L.IMAGE_SECTION}: address {addr:#x} is not inside the "
                               "file part of a loaded segment")
    magic, version, vectors = struct.unpack_from("<IIQ", data)
    if magic != L.IMAGE_MAGIC:
        raise ImageError(path, f"{L.IMAGE_SECTION}: bad magic {magic:#x}")
    if version != L.IMAGE_VERSION:
        raise ImageError(path, f"{L.IMAGE_SECTION}: version {version}, this paravm "
                               f"knows {L.IMAGE_VERSION}")
    span = 256 * L.IMAGE_VECTOR_STRIDE
    if not any(s.executable and s.gpa <= vectors and vectors + span <= s.gpa + s.memsz
               for s in segments):
        raise ImageError(path, f"{L.IMAGE_SECTION}: vector table {vectors:#x} is outside "
                               "every executable loaded segment")
    return vectors
