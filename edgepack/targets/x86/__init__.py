"""Target `x86`."""
