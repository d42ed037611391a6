"""The package version, recorded with every published result."""

__version__ = "0.1.0"
