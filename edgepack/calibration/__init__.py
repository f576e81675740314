"""Calibration data readers and calibration methods (installed as `edgepack.calibration`)."""
