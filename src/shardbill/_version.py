"""The single place the package version is defined (read by the build backend)."""

__version__ = "0.1.0.dev0"
