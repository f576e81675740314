"""Target `arm-xnnpack`."""
