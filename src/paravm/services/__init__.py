"""Services: IVC, event channels, grant tables, lguest I/O, PVZ, MPT."""
