"""Target `cuda`."""
