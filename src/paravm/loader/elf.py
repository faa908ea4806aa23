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


MAX_IMAGE_BYTES = 1 << 30


class ElfInfo(NamedTuple):
    """What pyelftools found in an image, already checked at the ELF level
    (independent of the domain it goes into).  ``segments`` are
    ``(index, gpa, file offset, filesz, memsz, executable)`` sorted by GPA."""
    entry: int
    segments: tuple[tuple[int, int, int, int, int, bool], ...]
    vectors: int | None


def read_image(path: str | os.PathLike, ram_size: int, nr_vcpus: int) -> Image:
    """Read and check the ELF at *path* for a domain of *ram_size* bytes with
    *nr_vcpus* vCPUs (their stacks sit at the top of RAM).

    The ELF-level facts (:class:`ElfInfo`) are cached on disk by the file's
    SHA-256 (see :mod:`.cache`): pyelftools' import and parse cost ~39-56 ms of a
    ~110 ms start-up without the cache here, and an image rarely changes."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_IMAGE_BYTES + 1)
    except OSError as e:
        raise ImageError(path, f"cannot open: {e.strerror}") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(path, f"larger than {MAX_IMAGE_BYTES >> 20} MiB")
    from . import cache
    digest = cache.digest(data)
    info = cache.load(digest)
    if info is None or not consistent(info, len(data)):
        info = parse_elf(path, data)
        cache.store(digest, info)
    return place(path, info, data, ram_size, nr_vcpus)


def consistent(info: ElfInfo, file_size: int) -> bool:
    """Whether *info* (e.g. from the cache, which is only a file) satisfies
    every invariant :func:`parse_elf` guarantees: segments in the file, above
    the reserved area, sorted and disjoint, filesz <= memsz; the entry point
    and the vector table inside executable segments."""
    prev_end = L.RESERVED_END
    for _, gpa, offset, filesz, memsz, _ in info.segments:
        if gpa < prev_end or not 0 <= filesz <= memsz or memsz <= 0 or offset < 0 \
                or offset + filesz > file_size:
            return False
        prev_end = gpa + memsz
    execs = [(gpa, gpa + memsz) for _, gpa, _, _, memsz, x in info.segments if x]
    if not info.segments or not any(a <= info.entry < b for a, b in execs):
        return False
    span = 256 * L.IMAGE_VECTOR_STRIDE
    return info.vectors is None or any(a <= info.vectors and info.vectors + span <= b
                                       for a, b in execs)


def parse_elf(path: str, data: bytes) -> ElfInfo:
    """Check *data* (the whole file) with pyelftools; :class:`ImageError` if refused."""
    import io

    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    try:
        return _parse(path, ELFFile(io.BytesIO(data)), len(data))
    except ImageError:
        raise
    except (ELFError, struct.error, ValueError, OSError, KeyError, IndexError,
            AttributeError, TypeError, OverflowError, MemoryError, EOFError,
            ArithmeticError) as e:
        raise ImageError(path, f"not a valid ELF file ({e})") from None


def _parse(path: str, elf, file_size: int) -> ElfInfo:
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
    segments = []
    for i, ph in enumerate(elf.iter_segments()):
        if ph["p_type"] != PT_LOAD or ph["p_memsz"] == 0:
            continue
        vaddr, paddr, filesz, memsz = ph["p_vaddr"], ph["p_paddr"], ph["p_filesz"], ph["p_memsz"]
        offset = ph["p_offset"]
        where = f"segment {i} [{paddr:#x}, {paddr + memsz:#x})"
        if vaddr != paddr:
            raise ImageError(path, f"{where}: p_vaddr {vaddr:#x} != p_paddr (guests are "
                                   "identity mapped)")
        if filesz > memsz:
            raise ImageError(path, f"{where}: p_filesz {filesz:#x} > p_memsz {memsz:#x}")
        if paddr < L.RESERVED_END:
            raise ImageError(path, f"{where} overlaps the VMM's reserved area "
                                   f"[0, {L.RESERVED_END:#x})")
        if offset + filesz > file_size:
            raise ImageError(path, f"{where}: file truncated "
                                   f"({max(0, file_size - offset)} of {filesz} bytes)")
        segments.append((i, paddr, offset, filesz, memsz, bool(ph["p_flags"] & PF_X)))
    if not segments:
        raise ImageError(path, "no loadable segment")
    segments.sort(key=lambda s: s[1])
    for a, b in zip(segments, segments[1:]):
        if a[1] + a[4] > b[1]:
            raise ImageError(path, f"segments at {a[1]:#x} and {b[1]:#x} overlap")
    entry = elf["e_entry"]
    if not any(x and gpa <= entry < gpa + memsz for _, gpa, _, _, memsz, x in segments):
        raise ImageError(path, f"entry point {entry:#x} is outside every executable "
                               "loaded segment")
    return ElfInfo(entry, tuple(segments), _image_vectors(path, elf, segments))


def place(path: str, info: ElfInfo, data: bytes, ram_size: int, nr_vcpus: int) -> Image:
    """Check *info* against a domain of *ram_size* bytes and *nr_vcpus* vCPUs
    and cut the segments' bytes out of *data* (the file)."""
    limit = L.stacks_bottom(ram_size, nr_vcpus)
    segments = []
    for i, gpa, offset, filesz, memsz, executable in info.segments:
        if gpa + memsz > limit:
            raise ImageError(path, f"segment {i} [{gpa:#x}, {gpa + memsz:#x}) is outside "
                                   f"guest RAM (the image must end below {limit:#x}: "
                                   f"{ram_size >> 20} MiB less {nr_vcpus} x "
                                   f"{L.STACK_SIZE >> 10} KiB of stacks)")
        segments.append(Segment(gpa, data[offset:offset + filesz], memsz, executable))
    end = max(s.gpa + s.memsz for s in segments)
    return Image(path, info.entry, tuple(segments), info.vectors,
                 (end + L.PAGE - 1) & ~(L.PAGE - 1))


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
    for _, gpa, offset, filesz, _, _ in segments:
        if gpa <= addr and addr + 16 <= gpa + filesz:
            elf.stream.seek(offset + addr - gpa)
            data = elf.stream.read(16)
            break
    if data is None or len(data) != 16:
        raise ImageError(path, f"{L.IMAGE_SECTION}: address {addr:#x} is not inside the "
                               "file part of a loaded segment")
    magic, version, vectors = struct.unpack_from("<IIQ", data)
    if magic != L.IMAGE_MAGIC:
        raise ImageError(path, f"{L.IMAGE_SECTION}: bad magic {magic:#x}")
    if version != L.IMAGE_VERSION:
        raise ImageError(path, f"{L.IMAGE_SECTION}: version {version}, this paravm "
                               f"knows {L.IMAGE_VERSION}")
    span = 256 * L.IMAGE_VECTOR_STRIDE
    if not any(x and gpa <= vectors and vectors + span <= gpa + memsz
               for _, gpa, _, _, memsz, x in segments):
        raise ImageError(path, f"{L.IMAGE_SECTION}: vector table {vectors:#x} is outside "
                               "every executable loaded segment")
    return vectors
