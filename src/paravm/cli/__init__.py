"""`paravm ...` command line."""
