"""The ELF loader refuses bad images with ImageError naming the file and the
reason, before a byte is copied; the SDK-built hello.elf loads.  No KVM."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paravm.arch.x86 import layout as L
from paravm.loader import Image, ImageError, read_image

RAM = 16 << 20
LIMIT = L.stacks_bottom(RAM, 1)        # 16 MiB - 128 KiB: images end below this
BASE = L.RESERVED_END                  # 0x100000

PT_LOAD, PT_NOTE = 1, 4
PF_X, PF_W, PF_R = 1, 2, 4
ET_EXEC, ET_DYN = 2, 3
EM_X86_64, EM_AARCH64, EM_386 = 62, 183, 3

EHDR64 = struct.Struct("<16sHHIQQQIHHHHHH")      # 64 bytes
PHDR64 = struct.Struct("<IIQQQQQQ")              # 56 bytes
EHDR32 = struct.Struct("<16sHHIIIIIHHHHHH")      # 52 bytes


def seg(vaddr, *, data=b"\x90" * 16 + b"\xf4", memsz=None, flags=PF_R | PF_X, paddr=None,
        filesz=None, offset=None, p_type=PT_LOAD):
    return dict(vaddr=vaddr, data=data, memsz=len(data) if memsz is None else memsz,
                flags=flags, paddr=vaddr if paddr is None else paddr,
                filesz=len(data) if filesz is None else filesz, offset=offset, p_type=p_type)


def elf64(segments=None, *, entry=BASE, e_type=ET_EXEC, machine=EM_X86_64, endian="<",
          ident_data=1) -> bytes:
    """A minimal ELF64 file: header, program headers, then each segment's bytes."""
    if segments is None:
        segments = [seg(BASE)]
    phoff = EHDR64.size
    payload_off = phoff + PHDR64.size * len(segments)
    payload = b""
    phdrs = b""
    for s in segments:
        off = payload_off + len(payload) if s["offset"] is None else s["offset"]
        payload += s["data"]
        phdrs += struct.pack(endian + PHDR64.format[1:], s["p_type"], s["flags"], off,
                             s["vaddr"], s["paddr"], s["filesz"], s["memsz"], 0x1000)
    ident = b"\x7fELF" + bytes([2, ident_data, 1]) + bytes(9)
    hdr = struct.pack(endian + EHDR64.format[1:], ident, e_type, machine, 1, entry, phoff, 0,
                      0, EHDR64.size, PHDR64.size, len(segments), 64, 0, 0)
    return hdr + phdrs + payload


def elf32() -> bytes:
    ident = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
    return EHDR32.pack(ident, ET_EXEC, EM_386, 1, BASE, 0, 0, 0, EHDR32.size, 32, 0, 40, 0, 0)


@pytest.fixture
def write(tmp_path):
    def write(data: bytes, name: str = "guest.elf") -> Path:
        p = tmp_path / name
        p.write_bytes(data)
        return p
    return write


def refused(path: Path, *, ram=RAM, vcpus=1) -> ImageError:
    with pytest.raises(ImageError) as info:
        read_image(path, ram, vcpus)
    e = info.value
    assert e.path == str(path)
    assert str(e) == f"{path}: {e.reason}"
    return e


# --- the minimal image is good (so each refusal below is for its one defect) -----

def test_minimal_hand_made_image_loads(write):
    img = read_image(write(elf64()), RAM, 1)
    assert isinstance(img, Image)
    assert img.entry == BASE and img.vectors is None
    assert len(img.segments) == 1
    s = img.segments[0]
    assert (s.gpa, s.memsz, s.executable) == (BASE, 17, True)
    assert s.data == b"\x90" * 16 + b"\xf4"
    assert img.end == BASE + 0x1000


def test_segment_ending_exactly_at_the_stacks_loads(write):
    img = read_image(write(elf64([seg(BASE, memsz=LIMIT - BASE)])), RAM, 1)
    assert img.end == LIMIT


# --- refusals ----------------------------------------------------------------------

def test_not_an_elf(write):
    e = refused(write(b"MZ this is not an ELF file at all" * 8))
    assert "not a valid ELF file" in e.reason


def test_empty_file(write):
    assert "not a valid ELF file" in refused(write(b"")).reason


def test_missing_file(tmp_path):
    e = refused(tmp_path / "nope.elf")
    assert "cannot open" in e.reason and "No such file" in e.reason


def test_directory(tmp_path):
    assert "cannot open" in refused(tmp_path).reason


def test_32_bit_class(write):
    assert refused(write(elf32())).reason == "ELF class 32-bit, need 64-bit"


def test_big_endian(write):
    e = refused(write(elf64(endian=">", ident_data=2)))
    assert e.reason == "big-endian ELF, need little-endian"


def test_wrong_machine(write):
    e = refused(write(elf64(machine=EM_AARCH64)))
    assert e.reason == "machine EM_AARCH64, need EM_X86_64"


def test_et_dyn(write):
    e = refused(write(elf64(e_type=ET_DYN)))
    assert e.reason.startswith("type ET_DYN, need ET_EXEC")


@pytest.mark.parametrize("vaddr", [0, 0x1000, 0x9000, BASE - 0x1000, BASE - 1])
def test_segment_in_the_reserved_area(write, vaddr):
    e = refused(write(elf64([seg(vaddr)], entry=vaddr)))
    assert "overlaps the VMM's reserved area [0, 0x100000)" in e.reason
    assert f"segment 0 [{vaddr:#x}," in e.reason


@pytest.mark.parametrize("vaddr, memsz", [
    (BASE, LIMIT - BASE + 1),                # one byte into the stacks
    (LIMIT, 0x1000),                         # in the stacks
    (RAM, 0x1000),                           # past the end of RAM
    (0xD0000000, 0x1000),                    # in the MMIO hole
    (0xFFFFFFFFFFFFF000, 0x2000),            # p_paddr + p_memsz overflows 2^64
])
def test_segment_beyond_ram(write, vaddr, memsz):
    e = refused(write(elf64([seg(vaddr, memsz=memsz)], entry=vaddr)))
    assert "is outside guest RAM" in e.reason
    assert f"below {LIMIT:#x}" in e.reason


def test_limit_depends_on_the_vcpu_count(write):
    """With 8 vCPUs the stacks take 1 MiB: an image that fits 1 vCPU does not."""
    p = write(elf64([seg(BASE, memsz=LIMIT - BASE)]))
    read_image(p, RAM, 1)
    e = refused(p, vcpus=8)
    assert "is outside guest RAM" in e.reason and "8 x 128 KiB of stacks" in e.reason


def test_vaddr_differs_from_paddr(write):
    e = refused(write(elf64([seg(BASE, paddr=BASE + 0x1000)])))
    assert "p_vaddr 0x100000 != p_paddr" in e.reason


def test_filesz_greater_than_memsz(write):
    e = refused(write(elf64([seg(BASE, memsz=8)])))
    assert "p_filesz 0x11 > p_memsz 0x8" in e.reason


@pytest.mark.parametrize("entry", [BASE - 1, BASE + 17, BASE + 0x1000, 0, 0xFFFFFFFFFFFFFFFF])
def test_entry_outside_the_loaded_segments(write, entry):
    e = refused(write(elf64(entry=entry)))
    assert e.reason == f"entry point {entry:#x} is outside every executable loaded segment"


def test_entry_in_a_non_executable_segment(write):
    segs = [seg(BASE), seg(BASE + 0x1000, data=b"\0" * 32, flags=PF_R | PF_W)]
    e = refused(write(elf64(segs, entry=BASE + 0x1000)))
    assert "entry point 0x101000 is outside every executable loaded segment" in e.reason


def test_entry_in_bss_of_an_executable_segment_loads(write):
    """memsz counts: an entry in the zero-filled tail is inside the segment."""
    img = read_image(write(elf64([seg(BASE, memsz=0x100)], entry=BASE + 0x80)), RAM, 1)
    assert img.entry == BASE + 0x80


def test_overlapping_segments(write):
    segs = [seg(BASE, memsz=0x2000), seg(BASE + 0x1000, flags=PF_R)]
    e = refused(write(elf64(segs)))
    assert "overlap" in e.reason


def test_no_loadable_segment(write):
    e = refused(write(elf64([seg(BASE, p_type=PT_NOTE)])))
    assert e.reason == "no loadable segment"


def test_truncated_segment_data(write):
    data = elf64([seg(BASE, data=b"\x90" * 0x100)])
    e = refused(write(data[:-0x80]))
    assert "file truncated" in e.reason or "not a valid ELF file" in e.reason


def test_segment_offset_beyond_the_file(write):
    e = refused(write(elf64([seg(BASE, offset=0x10000)])))
    assert "file truncated" in e.reason or "not a valid ELF file" in e.reason


@pytest.mark.parametrize("cut", [4, 20, EHDR64.size - 1, EHDR64.size + 10])
def test_truncated_headers(write, cut):
    e = refused(write(elf64()[:cut]))
    assert "not a valid ELF file" in e.reason


# --- the SDK-built image ------------------------------------------------------------

def _section(path: Path, name: str) -> tuple[int, int]:
    from elftools.elf.elffile import ELFFile
    with open(path, "rb") as f:
        sec = ELFFile(f).get_section_by_name(name)
        return sec["sh_offset"], sec["sh_size"]


def test_hello_elf_loads(hello_elf):
    from elftools.elf.elffile import ELFFile
    with open(hello_elf, "rb") as f:
        e_entry = ELFFile(f)["e_entry"]
    img = read_image(hello_elf, RAM, 2)
    assert img.path == str(hello_elf)
    assert img.entry == e_entry and BASE <= img.entry < img.end
    assert img.vectors is not None
    assert any(s.executable and s.gpa <= img.vectors
               and img.vectors + 256 * L.IMAGE_VECTOR_STRIDE <= s.gpa + s.memsz
               for s in img.segments)
    assert img.end % L.PAGE == 0 and BASE < img.end <= LIMIT
    gpas = [s.gpa for s in img.segments]
    assert gpas == sorted(gpas) and gpas[0] >= BASE


def _patched_hello(hello_elf, write, off_in_section: int, fmt: str, value: int) -> Path:
    data = bytearray(hello_elf.read_bytes())
    off, size = _section(hello_elf, L.IMAGE_SECTION)
    assert size >= 16
    struct.pack_into(fmt, data, off + off_in_section, value)
    return write(bytes(data), "patched.elf")


def test_image_header_bad_magic(hello_elf, write):
    e = refused(_patched_hello(hello_elf, write, 0, "<I", 0x12345678))
    assert e.reason == f"{L.IMAGE_SECTION}: bad magic 0x12345678"


def test_image_header_bad_version(hello_elf, write):
    e = refused(_patched_hello(hello_elf, write, 4, "<I", 2))
    assert e.reason.startswith(f"{L.IMAGE_SECTION}: version 2")


@pytest.mark.parametrize("vectors", [0, 0x9000, LIMIT, 0xFFFFFFFFFFFFFFF0])
def test_image_header_vectors_outside(hello_elf, write, vectors):
    e = refused(_patched_hello(hello_elf, write, 8, "<Q", vectors))
    assert e.reason == (f"{L.IMAGE_SECTION}: vector table {vectors:#x} is outside every "
                        "executable loaded segment")


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 1 << 20))
def test_any_truncation_of_hello_is_refused(hello_elf, tmp_path, cut):
    data = hello_elf.read_bytes()
    cut %= len(data)
    p = tmp_path / "cut.elf"
    p.write_bytes(data[:cut])
    with pytest.raises(ImageError):
        read_image(p, RAM, 1)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 0x3FF), st.integers(0, 255)), min_size=1,
                      max_size=8))
def test_corrupt_headers_give_image_or_image_error(hello_elf, tmp_path, edits):
    """Random bytes in the ELF header and program headers (the first KiB):
    the loader returns a checked Image or raises ImageError, nothing else.
    (The section headers are covered by test_huge_or_compressed_image_section:
    corrupting them finds that bug.)"""
    data = bytearray(hello_elf.read_bytes())
    for off, byte in edits:
        data[off] = byte
    p = tmp_path / "fuzz.elf"
    p.write_bytes(bytes(data))
    try:
        img = read_image(p, RAM, 1)
    except ImageError:
        return
    for s in img.segments:
        assert BASE <= s.gpa and s.gpa + s.memsz <= LIMIT and len(s.data) <= s.memsz
    assert any(s.executable and s.gpa <= img.entry < s.gpa + s.memsz for s in img.segments)


SHF_COMPRESSED = 0x800


def image_section_patched(hello_elf: Path, out: Path, *, sh_size: int | None = None,
                          compressed: bool = False) -> Path:
    """hello.elf with the section header of .paravm_image changed."""
    from elftools.elf.elffile import ELFFile
    with open(hello_elf, "rb") as f:
        elf = ELFFile(f)
        shoff, shentsize = elf["e_shoff"], elf["e_shentsize"]
        idx = next(i for i, sec in enumerate(elf.iter_sections())
                   if sec.name == L.IMAGE_SECTION)
        sec = elf.get_section(idx)
        sh_flags, sh_offset = sec["sh_flags"], sec["sh_offset"]
    data = bytearray(hello_elf.read_bytes())
    hdr = shoff + idx * shentsize            # Elf64_Shdr: flags at +8, size at +32
    if sh_size is not None:
        struct.pack_into("<Q", data, hdr + 32, sh_size)
    if compressed:
        struct.pack_into("<Q", data, hdr + 8, sh_flags | SHF_COMPRESSED)
        # an Elf64_Chdr saying zlib, then bytes that are not a zlib stream
        struct.pack_into("<IIQQ", data, sh_offset, 1, 0, 64, 8)
    out.write_bytes(bytes(data))
    return out


def test_image_section_header_patch_is_sound(hello_elf, tmp_path):
    """The helper below changes only what it says: same size loads."""
    _, size = _section(hello_elf, L.IMAGE_SECTION)
    p = image_section_patched(hello_elf, tmp_path / "same.elf", sh_size=size)
    assert read_image(p, RAM, 1).vectors == read_image(hello_elf, RAM, 1).vectors


@pytest.mark.parametrize("kind", ["size-2^48", "size-2^63", "compressed"])
def test_huge_or_compressed_image_section(hello_elf, tmp_path, kind):
    out = tmp_path / f"{kind}.elf"
    if kind == "compressed":
        p = image_section_patched(hello_elf, out, compressed=True)
    else:
        p = image_section_patched(hello_elf, out, sh_size=1 << int(kind[-2:]))
    e = refused(p)
    assert L.IMAGE_SECTION in e.reason or "not a valid ELF file" in e.reason
