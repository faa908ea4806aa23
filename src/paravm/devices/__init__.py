"""Device models: the debug console here; lguest console/block/net backends and the
example mediated device come with their services."""
