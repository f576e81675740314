"""Bundles that verify themselves on the device: golden files written at packing time (golden.py), the
standalone script that re-checks artifacts on the device (verify_on_device.py), and the reader of the
report it writes (report.py)."""
