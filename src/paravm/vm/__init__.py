"""Domains, vCPU run loop, exit dispatch, PIO/MMIO buses, the Hypervisor API."""
