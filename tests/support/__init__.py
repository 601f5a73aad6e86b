"""Test support code: real-server fixtures and helpers (not part of the library)."""
