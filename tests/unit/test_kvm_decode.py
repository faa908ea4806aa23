"""The KVM backend's decoding of kvm_run pages, on fabricated pages (no KVM)."""

import struct

import pytest

from paravm.kvm import abi
from paravm.vm.backend import (EXIT_FAIL_ENTRY, EXIT_INTR, EXIT_HYPERCALL, EXIT_HYPERCALL_BLOCK,
                               EXIT_INTERNAL_ERROR, EXIT_IO_IN, EXIT_IO_OUT, EXIT_MMIO_READ,
                               EXIT_MMIO_WRITE, EXIT_SHUTDOWN, EXIT_UNKNOWN)
from paravm.vm.kvm_backend import KvmVcpu

PAGE = 4096 * 3


def vcpu_over(page: bytearray) -> KvmVcpu:
    """A KvmVcpu whose decoding reads *page* (its KVM ioctls are never made)."""
    v = KvmVcpu.__new__(KvmVcpu)
    mv = memoryview(page)
    v._u8, v._u16, v._u32, v._u64 = mv, mv.cast("H"), mv.cast("I"), mv.cast("Q")
    v._mmio_data = mv[40:48]
    v._mmio_views = [v._mmio_data[:n] for n in range(9)]
    v._io_views = {}
    v.detail = ""
    return v


def io_page(direction, size, port, count=1, data_offset=4096, value=0):
    page = bytearray(PAGE)
    struct.pack_into("<I", page, 8, abi.KVM_EXIT_IO)
    struct.pack_into("<BBHIQ", page, 32, direction, size, port, count, data_offset)
    page[data_offset:data_offset + size] = value.to_bytes(size, "little")
    return page


@pytest.mark.parametrize("direction, kind", [(abi.KVM_EXIT_IO_OUT, EXIT_IO_OUT),
                                             (abi.KVM_EXIT_IO_IN, EXIT_IO_IN)])
def test_port_io_decodes_port_size_and_data(direction, kind):
    v = vcpu_over(io_page(direction, 2, 0x3F8, value=0xBEEF))
    assert v._decode(abi.KVM_EXIT_IO) == kind
    assert (v.port, v.size, bytes(v.data)) == (0x3F8, 2, b"\xef\xbe")


def test_string_port_io_is_refused_with_a_reason():
    v = vcpu_over(io_page(abi.KVM_EXIT_IO_OUT, 1, 0xE9, count=3))
    assert v._decode(abi.KVM_EXIT_IO) == EXIT_UNKNOWN
    assert v.detail == "string port I/O (rep ins/outs) is not supported"


def test_io_data_offset_outside_the_run_page_is_refused():
    page = io_page(abi.KVM_EXIT_IO_OUT, 4, 0x80, data_offset=0)
    struct.pack_into("<Q", page, 40, PAGE - 2)       # data would run past the page
    v = vcpu_over(page)
    assert v._decode(abi.KVM_EXIT_IO) == EXIT_UNKNOWN


@pytest.mark.parametrize("is_write, kind", [(1, EXIT_MMIO_WRITE), (0, EXIT_MMIO_READ)])
def test_mmio_decodes_address_length_and_data(is_write, kind):
    page = bytearray(PAGE)
    struct.pack_into("<Q8sIB", page, 32, 0xD0000010, b"\x11\x22\x33\x44\0\0\0\0", 4, is_write)
    v = vcpu_over(page)
    assert v._decode(abi.KVM_EXIT_MMIO) == kind
    assert (v.addr, v.size, bytes(v.data)) == (0xD0000010, 4, b"\x11\x22\x33\x44")


@pytest.mark.parametrize("length", [0, 9, 1 << 31])
def test_mmio_of_an_odd_length_is_refused(length):
    page = bytearray(PAGE)
    struct.pack_into("<Q8sIB", page, 32, 0xD0000000, bytes(8), length, 0)
    v = vcpu_over(page)
    assert v._decode(abi.KVM_EXIT_MMIO) == EXIT_UNKNOWN
    assert v.detail == f"MMIO access of {length} bytes"


def test_internal_error_detail_names_the_suberror_and_data():
    page = bytearray(PAGE)
    struct.pack_into("<II3Q", page, 32, 1, 3, 0xAB, 0xCD, 0xEF)
    v = vcpu_over(page)
    assert v._decode(abi.KVM_EXIT_INTERNAL_ERROR) == EXIT_INTERNAL_ERROR
    assert v.detail == "KVM internal error 1 (emulation failure), data 0xab 0xcd 0xef"


def test_fail_entry_detail_gives_the_hardware_reason():
    page = bytearray(PAGE)
    struct.pack_into("<Q", page, 32, 0x80000021)
    v = vcpu_over(page)
    assert v._decode(abi.KVM_EXIT_FAIL_ENTRY) == EXIT_FAIL_ENTRY
    assert v.detail == "hardware entry failure reason 0x80000021"


def test_shutdown_and_unknown_reasons():
    v = vcpu_over(bytearray(PAGE))
    assert v._decode(abi.KVM_EXIT_SHUTDOWN) == EXIT_SHUTDOWN
    assert v._decode(999) == EXIT_UNKNOWN and v.detail == "KVM exit reason 999 (unknown)"


@pytest.mark.parametrize("port, size, count, want", [
    (0xE0, 4, 1, EXIT_HYPERCALL), (0xE1, 4, 1, EXIT_HYPERCALL_BLOCK),
    (0xE0, 1, 1, EXIT_IO_OUT), (0xE0, 4, 2, EXIT_UNKNOWN), (0xE2, 4, 1, EXIT_IO_OUT)])
def test_run_recognises_hypercalls_in_one_compare(port, size, count, want):
    page = io_page(abi.KVM_EXIT_IO_OUT, size, port, count=count)
    v = vcpu_over(page)
    v._kvm_run = lambda: abi.KVM_EXIT_IO      # what Vcpu.run returns for this page
    assert v.run() == want


def test_run_passes_a_signal_on_as_exit_intr():
    v = vcpu_over(bytearray(PAGE))
    v._kvm_run = lambda: abi.KVM_EXIT_INTR
    assert v.run() == EXIT_INTR
