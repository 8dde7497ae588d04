"""Benchmarks of avatar-bridge against the local stand-ins (``python -m bench``; see issue 9)."""
