"""edgepack: verified edge deployment bundles from PyTorch models."""

__version__ = "0.1.0"
