"""The PowerVR PVZ connection: host driver server, VMM dispatch, ABI (docs/pvz.md)."""
