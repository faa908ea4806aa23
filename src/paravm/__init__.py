"""paravm: a hypervisor in Python on Linux KVM.

Lazy exports keep ``import paravm`` (and the CLI's start-up) cheap.
"""

__version__ = "0.1.0"
__all__ = ["Hypervisor", "Domain", "DomainResult", "__version__"]


def __getattr__(name):
    if name == "Hypervisor":
        from .hypervisor import Hypervisor
        return Hypervisor
    if name in ("Domain", "DomainResult"):
        from .vm import domain
        return getattr(domain, name)
    raise AttributeError(f"module 'paravm' has no attribute {name!r}")
