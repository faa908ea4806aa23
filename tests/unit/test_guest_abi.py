"""The C guest SDK and the VMM must agree on every shared number and layout."""

import ctypes
import re
from pathlib import Path

import pytest

from c_probe import probe
from paravm.arch.x86 import layout as L
from paravm.hypercall import abi as hc
from paravm.kvm import abi

ROOT = Path(__file__).resolve().parents[2]
HEADER = (ROOT / "guest/include/paravm/abi.h").read_text()


def c_define(name: str) -> int:
    m = re.search(rf"^#define\s+{name}\s+(\S+)", HEADER, re.M)
    assert m, f"{name} missing from abi.h"
    return int(m.group(1), 0)


@pytest.mark.parametrize("c_name, value", [
    ("PV_HC_PORT", hc.HC_PORT),
    ("PV_HC_BLOCK_PORT", hc.HC_BLOCK_PORT),
    ("PV_HC_CONSOLE_WRITE", hc.HC_CONSOLE_WRITE),
    ("PV_HC_EXIT", hc.HC_EXIT),
    ("PV_HC_CLOCK_NS", hc.HC_CLOCK_NS),
    ("PV_HC_BOOT_MARK", hc.HC_BOOT_MARK),
    ("PV_HC_FAULT", hc.HC_FAULT),
    ("PV_HC_VCPU_OFF", hc.HC_VCPU_OFF),
    ("PV_HC_NOP", hc.HC_NOP),
    ("PV_BOOT_MARK_MAIN", hc.BOOT_MARK_MAIN),
    ("PV_BOOT_INFO", L.BOOT_INFO),
    ("PV_RESERVED_END", L.RESERVED_END),
    ("PV_MAX_VCPUS", L.MAX_VCPUS),
    ("PV_LAPIC_BASE", L.LAPIC_BASE),
    ("PV_BI_MAGIC", L.BI_MAGIC),
    ("PV_IMAGE_MAGIC", L.IMAGE_MAGIC),
    ("PV_IMAGE_VERSION", L.IMAGE_VERSION),
    ("PV_VP_SELF", L.VP_OFF_SELF),
    ("PV_VP_INDEX", L.VP_OFF_INDEX),
    ("PV_VP_APIC_ID", L.VP_OFF_APIC_ID),
    ("PV_VP_PENDING", L.VP_OFF_PENDING),
    ("PV_VEC_TIMER", L.VEC_TIMER),
    ("PV_VEC_SMP", L.VEC_SMP),
    ("PV_VEC_USER_FIRST", L.VEC_USER_FIRST),
    ("PV_VEC_USER_LAST", L.VEC_USER_LAST),
    ("PV_VEC_SPURIOUS", L.VEC_SPURIOUS),
    ("PV_PVZ_FW_CARVEOUT_GPA", L.PVZ_FW_CARVEOUT_GPA),
    ("PV_PVZ_GPU_CARVEOUT_GPA", L.PVZ_GPU_CARVEOUT_GPA),
])
def test_shared_constant_agrees(c_name, value):
    assert c_define(c_name) == value


class BootInfo(ctypes.Structure):
    """struct pv_boot_info as the C header declares it."""
    _fields_ = [("magic", ctypes.c_uint32), ("version", ctypes.c_uint32),
                ("domid", ctypes.c_uint32), ("nr_vcpus", ctypes.c_uint32),
                ("ram_size", ctypes.c_uint64), ("heap_start", ctypes.c_uint64),
                ("heap_end", ctypes.c_uint64), ("tsc_khz", ctypes.c_uint64),
                ("argc", ctypes.c_uint32), ("args_len", ctypes.c_uint32),
                ("name", ctypes.c_char * 40), ("lguest_descs", ctypes.c_uint64),
                ("xen_shared_info", ctypes.c_uint64), ("grant_window", ctypes.c_uint64),
                ("grant_window_ro", ctypes.c_uint64), ("grant_window_pages", ctypes.c_uint32),
                ("evtchn_vector", ctypes.c_uint32),
                ("pvz", ctypes.c_uint32), ("pvz_fw_origin", ctypes.c_uint32),
                ("pvz_fw_heap_size", ctypes.c_uint64),
                ("mgpu", ctypes.c_uint32), ("mgpu_opregion", ctypes.c_uint32),
                ("reserved", ctypes.c_uint8 * (0x100 - 0xA0)),
                ("args", ctypes.c_char * 2048)]


BOOT_INFO_FIELDS = [("magic", L.BI_OFF_MAGIC), ("version", L.BI_OFF_VERSION),
                    ("domid", L.BI_OFF_DOMID), ("nr_vcpus", L.BI_OFF_NR_VCPUS),
                    ("ram_size", L.BI_OFF_RAM_SIZE), ("heap_start", L.BI_OFF_HEAP_START),
                    ("heap_end", L.BI_OFF_HEAP_END), ("tsc_khz", L.BI_OFF_TSC_KHZ),
                    ("argc", L.BI_OFF_ARGC), ("args_len", L.BI_OFF_ARGS_LEN),
                    ("name", L.BI_OFF_NAME), ("lguest_descs", L.BI_OFF_LGUEST_DESCS),
                    ("xen_shared_info", L.BI_OFF_XEN_SHARED_INFO),
                    ("grant_window", L.BI_OFF_GRANT_WINDOW),
                    ("grant_window_ro", L.BI_OFF_GRANT_WINDOW_RO),
                    ("grant_window_pages", L.BI_OFF_GRANT_WINDOW_PAGES),
                    ("evtchn_vector", L.BI_OFF_EVTCHN_VECTOR),
                    ("pvz", L.BI_OFF_PVZ), ("pvz_fw_origin", L.BI_OFF_PVZ_FW_ORIGIN),
                    ("pvz_fw_heap_size", L.BI_OFF_PVZ_FW_HEAP_SIZE),
                    ("mgpu", L.BI_OFF_MGPU), ("mgpu_opregion", L.BI_OFF_MGPU_OPREGION),
                    ("args", L.BI_OFF_ARGS)]


def test_boot_info_offsets_match_the_c_struct():
    assert "uint64_t lguest_descs;" in HEADER and "uint8_t reserved[0x100 - 0xA0];" in HEADER
    for field, off in BOOT_INFO_FIELDS:
        assert getattr(BootInfo, field).offset == off, field
    assert BootInfo.args.size == L.BI_ARGS_MAX
    assert ctypes.sizeof(BootInfo) <= L.PAGE


def test_boot_info_offsets_are_the_compilers(tmp_path):
    """The C compiler's offsetof, not only the ctypes copy above."""
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "paravm/abi.h"',
             "int main(void) {"]
    lines += [f'printf("{f} %zu\\n", offsetof(struct pv_boot_info, {f}));'
              for f, _ in BOOT_INFO_FIELDS]
    lines += ['printf("sizeof %zu\\n", sizeof(struct pv_boot_info));', "return 0; }"]
    got = probe(tmp_path, "\n".join(lines), ("-std=c11", "-Wall", "-Werror"))
    assert {f: got[f] for f, _ in BOOT_INFO_FIELDS} == dict(BOOT_INFO_FIELDS)
    assert got["sizeof"] == L.BI_OFF_ARGS + L.BI_ARGS_MAX


def test_boot_info_written_by_the_vmm_reads_back_through_the_c_layout():
    from paravm.arch.x86.boot import write_boot_info

    class Mem:
        buf = bytearray(0x10000)

        def write(self, gpa, data):
            self.buf[gpa:gpa + len(data)] = data

    m = Mem()
    write_boot_info(m, domid=7, name="alice", nr_vcpus=3, ram_size=64 << 20,
                    heap_start=0x105000, tsc_khz=2_500_000, args=("-v", "x y"))
    bi = BootInfo.from_buffer_copy(bytes(m.buf[L.BOOT_INFO:L.BOOT_INFO + ctypes.sizeof(BootInfo)]))
    assert (bi.magic, bi.version, bi.domid, bi.nr_vcpus) == (L.BI_MAGIC, 1, 7, 3)
    assert bi.ram_size == 64 << 20 and bi.heap_start == 0x105000
    assert bi.heap_end == (64 << 20) - 3 * L.STACK_SIZE
    assert bi.tsc_khz == 2_500_000 and bi.argc == 2 and bi.args_len == 7
    assert bi.name == b"alice"
    args_at = L.BOOT_INFO + BootInfo.args.offset
    assert bytes(m.buf[args_at:args_at + 8]) == b"-v\0x y\0\0"


def test_args_larger_than_the_page_area_are_refused():
    from paravm.arch.x86.boot import write_boot_info
    with pytest.raises(ValueError, match="2048"):
        write_boot_info(None, domid=1, name="a", nr_vcpus=1, ram_size=4 << 20,
                        heap_start=0, tsc_khz=0, args=("x" * 2048,))


def test_vcpu_areas_fit_below_the_image():
    assert L.vcpu_page(L.MAX_VCPUS - 1) + L.PAGE <= L.RESERVED_END
    assert L.vcpu_area(0) >= L.BOOT_INFO + L.PAGE


@pytest.mark.parametrize("struct, size", [
    (abi.kvm_regs, 144), (abi.kvm_sregs, 312), (abi.kvm_segment, 24),
    (abi.kvm_userspace_memory_region, 32), (abi.kvm_irqfd, 32), (abi.kvm_ioeventfd, 64),
    (abi.kvm_msi, 32), (abi.kvm_irq_routing_entry, 48), (abi.kvm_enable_cap, 104),
    (abi.kvm_cpuid_entry2, 40), (abi.kvm_sync_regs, 520), (abi.kvm_lapic_state, 1024),
])
def test_kvm_struct_sizes_match_linux(struct, size):
    # Sizes from include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h.
    assert ctypes.sizeof(struct) == size


def test_kvm_run_offsets_the_run_loop_reads():
    assert abi.RUN_EXIT_REASON == 8
    assert abi.RUN_IMMEDIATE_EXIT == 1
    assert abi.RUN_EXIT_U == 32
    assert abi.RUN_VALID_REGS == 288
    assert abi.RUN_DIRTY_REGS == 296
    assert abi.RUN_SYNC_REGS == 304


@pytest.mark.parametrize("name, value", [
    ("KVM_RUN", 0xAE80), ("KVM_CREATE_VM", 0xAE01), ("KVM_CREATE_VCPU", 0xAE41),
    ("KVM_SET_USER_MEMORY_REGION", 0x4020AE46), ("KVM_GET_REGS", 0x8090AE81),
    ("KVM_SET_REGS", 0x4090AE82), ("KVM_GET_SREGS", 0x8138AE83),
    ("KVM_SET_SREGS", 0x4138AE84), ("KVM_IRQFD", 0x4020AE76), ("KVM_IOEVENTFD", 0x4040AE79),
    ("KVM_SIGNAL_MSI", 0x4020AEA5), ("KVM_SET_GSI_ROUTING", 0x4008AE6A),
    ("KVM_GET_SUPPORTED_CPUID", 0xC008AE05), ("KVM_SET_CPUID2", 0x4008AE90),
    ("KVM_CREATE_IRQCHIP", 0xAE60), ("KVM_SET_TSS_ADDR", 0xAE47),
    ("KVM_GET_LAPIC", 0x8400AE8E), ("KVM_SET_LAPIC", 0x4400AE8F),
    ("KVM_SET_MP_STATE", 0x4004AE99),
])
def test_ioctl_numbers_match_linux(name, value):
    assert getattr(abi, name) == value
