"""lguest-style I/O (Linux 2.6.23): DMA buffers bound to keys, and a launcher
serving console, block and net devices.  docs/lguest.md; specs part B."""
