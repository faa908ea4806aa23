"""Limits shared by the manifest schema and the Hypervisor API (no imports:
both the msgspec-based config and the light Python API use them)."""

DOMAIN_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
# RAM sits below the 32-bit MMIO hole (LAPIC at 0xFEE00000), hence 3 GiB at most.
MEMORY_MIB_MIN, MEMORY_MIB_MAX = 2, 3072
VCPUS_MIN, VCPUS_MAX = 1, 32
