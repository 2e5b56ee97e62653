"""The package version (its own module, so the bottom layer can name it)."""

__version__ = "0.1.0"
