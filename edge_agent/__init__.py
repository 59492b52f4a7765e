"""The device side: verified over-the-air model updates and local inference serving."""

__version__ = "0.1.0"
