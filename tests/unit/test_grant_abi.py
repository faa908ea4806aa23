"""The Xen grant ABI three ways: the guest header (guest/include/paravm/xen/grant_table.h,
compiled with gcc), the VMM's declarations (paravm.services.grant.abi) and the numbers of
specs/grant-mpt.md §D1.1 written out here."""

import struct
from pathlib import Path

import pytest

from paravm.services.grant import abi as A
from paravm.services.grant import service

from c_probe import probe, py_offsets

ROOT = Path(__file__).resolve().parents[2]

# struct -> (size, {field: offset}) as specs §D1.1 gives them (x86_64).
SPEC = {
    "grant_entry_v1": (8, {"flags": 0, "domid": 2, "frame": 4}),
    "gnttab_map_grant_ref": (32, {"host_addr": 0, "flags": 8, "ref": 12, "dom": 16,
                                  "status": 18, "handle": 20, "dev_bus_addr": 24}),
    "gnttab_unmap_grant_ref": (24, {"host_addr": 0, "dev_bus_addr": 8, "handle": 16,
                                    "status": 20}),
    "gnttab_unmap_and_replace": (24, {"host_addr": 0, "new_addr": 8, "handle": 16,
                                      "status": 20}),
    "gnttab_copy": (40, {"source.u.ref": 0, "source.u.gmfn": 0, "source.domid": 8,
                         "source.offset": 10, "dest.u.ref": 16, "dest.u.gmfn": 16,
                         "dest.domid": 24, "dest.offset": 26, "len": 32, "flags": 34,
                         "status": 36}),
    "gnttab_setup_table": (24, {"dom": 0, "nr_frames": 4, "status": 8, "frame_list": 16}),
    "gnttab_query_size": (16, {"dom": 0, "nr_frames": 4, "max_nr_frames": 8, "status": 12}),
    "gnttab_set_version": (4, {"version": 0}),
    "gnttab_get_version": (8, {"dom": 0, "pad": 2, "version": 4}),
}

# The VMM's struct.Struct for each, with the spec field named by each non-pad item.
PY = {
    "grant_entry_v1": (A.GRANT_ENTRY_V1, ["flags", "domid", "frame"]),
    "gnttab_map_grant_ref": (A.MAP_GRANT_REF, ["host_addr", "flags", "ref", "dom", "status",
                                               "handle", "dev_bus_addr"]),
    "gnttab_unmap_grant_ref": (A.UNMAP_GRANT_REF, ["host_addr", "dev_bus_addr", "handle",
                                                   "status"]),
    "gnttab_unmap_and_replace": (A.UNMAP_AND_REPLACE, ["host_addr", "new_addr", "handle",
                                                       "status"]),
    "gnttab_copy": (A.COPY, ["source.u.gmfn", "source.domid", "source.offset", "dest.u.gmfn",
                             "dest.domid", "dest.offset", "len", "flags", "status"]),
    "gnttab_setup_table": (A.SETUP_TABLE, ["dom", "nr_frames", "status", "frame_list"]),
    "gnttab_query_size": (A.QUERY_SIZE, ["dom", "nr_frames", "max_nr_frames", "status"]),
    "gnttab_set_version": (A.SET_VERSION, ["version"]),
    "gnttab_get_version": (A.GET_VERSION, ["dom", "pad", "version"]),
}

# name -> value: the spec's constants (GNTST_* are all <= 0).
CONSTANTS = {
    "GTF_invalid": 0, "GTF_permit_access": 1, "GTF_accept_transfer": 2, "GTF_transitive": 3,
    "GTF_type_mask": 3, "GTF_readonly": 0x4, "GTF_reading": 0x8, "GTF_writing": 0x10,
    "GTF_PWT": 0x20, "GTF_PCD": 0x40, "GTF_PAT": 0x80, "GTF_sub_page": 0x100,
    "GNTTABOP_map_grant_ref": 0, "GNTTABOP_unmap_grant_ref": 1, "GNTTABOP_setup_table": 2,
    "GNTTABOP_dump_table": 3, "GNTTABOP_transfer": 4, "GNTTABOP_copy": 5,
    "GNTTABOP_query_size": 6, "GNTTABOP_unmap_and_replace": 7, "GNTTABOP_set_version": 8,
    "GNTTABOP_get_status_frames": 9, "GNTTABOP_get_version": 10,
    "GNTTABOP_swap_grant_ref": 11, "GNTTABOP_cache_flush": 12,
    "GNTMAP_device_map": 1, "GNTMAP_host_map": 2, "GNTMAP_readonly": 4,
    "GNTMAP_application_map": 8, "GNTMAP_contains_pte": 16,
    "GNTCOPY_source_gref": 1, "GNTCOPY_dest_gref": 2,
    "GNTST_okay": 0, "GNTST_general_error": -1, "GNTST_bad_domain": -2, "GNTST_bad_gntref": -3,
    "GNTST_bad_handle": -4, "GNTST_bad_virt_addr": -5, "GNTST_bad_dev_addr": -6,
    "GNTST_no_device_space": -7, "GNTST_permission_denied": -8, "GNTST_bad_page": -9,
    "GNTST_bad_copy_arg": -10, "GNTST_address_too_big": -11, "GNTST_eagain": -12,
    "GNTST_no_space": -13,
    "DOMID_SELF": 0x7FF0, "DOMID_IO": 0x7FF1, "DOMID_INVALID": 0x7FF4,
}


def _program() -> str:
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "paravm/xen/grant_table.h"',
             "int main(void) {"]
    for name, (_, fields) in SPEC.items():
        lines.append(f'printf("sizeof {name} %zu\\n", sizeof(struct {name}));')
        for f in fields:
            lines.append(f'printf("{name}.{f} %zu\\n", offsetof(struct {name}, {f}));')
    for name in CONSTANTS:
        lines.append(f'printf("{name} %ld\\n", (long)({name}));')
    extra = ["GNTTAB_NR_RESERVED_ENTRIES", "GNTTAB_ENTRIES_PER_FRAME", "PV_HC_GRANT_TABLE_OP",
             "sizeof(grant_ref_t)", "sizeof(grant_handle_t)", "sizeof(domid_t)"]
    for name in extra:
        lines.append(f'printf("{name} %ld\\n", (long)({name}));')
    lines += ["return 0;", "}"]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def c_abi(tmp_path_factory):
    # -std=c11: the header must be plain C11 (its _Static_asserts included).
    return probe(tmp_path_factory.mktemp("grant_abi"), _program(),
                 ("-std=c11", "-Wall", "-Wextra", "-Werror"))


@pytest.mark.parametrize("name", SPEC)
def test_struct_layout_is_the_spec_in_c_and_python(c_abi, name):
    size, fields = SPEC[name]
    assert c_abi[f"sizeof {name}"] == size
    assert {f: c_abi[f"{name}.{f}"] for f in fields} == fields
    s, names = PY[name]
    assert s.size == size
    assert dict(zip(names, py_offsets(s))) == {f: fields[f] for f in names}


@pytest.mark.parametrize("name", CONSTANTS)
def test_constant_is_the_spec_in_c_and_python(c_abi, name):
    assert c_abi[name] == CONSTANTS[name]
    assert getattr(A, name) == CONSTANTS[name]


def test_counts_types_and_the_hypercall_number(c_abi):
    assert c_abi["GNTTAB_NR_RESERVED_ENTRIES"] == A.NR_RESERVED_ENTRIES == 8
    assert c_abi["GNTTAB_ENTRIES_PER_FRAME"] == A.ENTRIES_PER_FRAME == 512
    assert c_abi["PV_HC_GRANT_TABLE_OP"] == service.HC_GRANT_TABLE_OP == 20
    assert (c_abi["sizeof(grant_ref_t)"], c_abi["sizeof(grant_handle_t)"],
            c_abi["sizeof(domid_t)"]) == (4, 4, 2)


def test_gnst_names_cover_every_status():
    statuses = {v for k, v in CONSTANTS.items() if k.startswith("GNTST_")}
    assert set(A.GNTST_NAMES) == statuses and all(v <= 0 for v in statuses)


def test_status_fields_are_signed_16_bit():
    # A status is int16_t in C; the VMM must pack -13 and read it back as -13.
    raw = A.MAP_GRANT_REF.pack(0, 0, 0, 0, A.GNTST_no_space, 0, 0)
    assert struct.unpack_from("<h", raw, 18)[0] == -13
    raw = A.COPY.pack(0, 0, 0, 0, 0, 0, 0, 0, A.GNTST_bad_copy_arg)
    assert struct.unpack_from("<h", raw, 36)[0] == -10
