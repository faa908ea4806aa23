"""Xen grant tables over KVM: the hypervisor side, the guest grant windows,
and the host's gntdev / gntalloc / dma-buf API (docs/grant.md)."""
