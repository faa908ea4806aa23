"""The hypercall ABI and its dispatch table; services register their calls here."""

from .table import HypercallError, HypercallTable

__all__ = ["HypercallError", "HypercallTable"]
