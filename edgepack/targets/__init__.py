"""Deployment targets, one module each (installed as `edgepack.targets`)."""
